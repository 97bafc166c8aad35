"""Retention: children first, bounded batches, counts kept in step, 0 keeps everything."""

from __future__ import annotations

import time
from pathlib import Path

from assistant.config import Settings
from assistant.observability import EventLog
from assistant.pruner import Pruner
from storage.db import Database
from storage.ids import id_for_time
from storage.timestamps import iso_from_ms

DAY_MS = 86_400_000


async def no_runs() -> int:
    return 0


async def seed(db: Database, now_ms: int, ages_days: list[float], per_age: int) -> None:
    """Chains (event -> action -> tool call) of the given ages, written directly."""
    events, actions, tools, stats = [], [], [], {}
    for age in ages_days:
        base = id_for_time(now_ms - int(age * DAY_MS))
        ts = iso_from_ms(now_ms - int(age * DAY_MS))
        for i in range(per_age):
            e, a, t = base + 3 * i, base + 3 * i + 1, base + 3 * i + 2
            events.append((e, ts, "local", None, ""))
            actions.append((a, ts, e, "message_sent", 0 if i == 0 else 1))
            tools.append((t, ts, a, "send", 1.0, 1))
        for kind, key, failed in (
            ("event", "local", 0),
            ("action", "message_sent", 1),
            ("tool", "send", 0),
        ):
            stats[(ts[:13], kind, key)] = (per_age, failed)
    await db.write_many(
        "INSERT INTO event_log (id, ts, source, caused_by, summary) VALUES (?, ?, ?, ?, ?)", events
    )
    await db.write_many(
        "INSERT INTO action_log (id, ts, triggered_by, action_type, ok) VALUES (?, ?, ?, ?, ?)",
        actions,
    )
    await db.write_many(
        "INSERT INTO tool_call_log (id, ts, action_id, tool_name, duration_ms, ok) VALUES (?, ?, ?, ?, ?, ?)",
        tools,
    )
    await db.write_many(
        "INSERT INTO log_stats (hour, kind, key, n, failed) VALUES (?, ?, ?, ?, ?)",
        [(*k, n, f) for k, (n, f) in stats.items()],
    )


def settings_for(tmp_path: Path, days: float, batch: int) -> Settings:
    return Settings(
        assistant_home=tmp_path,
        event_log_retention_days=days,
        prune_batch=batch,
        _env_file=None,  # type: ignore[call-arg]
    )


async def test_prunes_old_rows_in_batches_children_first(
    tmp_path: Path, db: Database, event_log: EventLog
) -> None:
    now_ms = time.time_ns() // 1_000_000
    await seed(db, now_ms, [5, 4, 1], per_age=250)
    pruner = Pruner(db, event_log, settings_for(tmp_path, 3, batch=100), no_runs)
    result = await pruner.prune_events(now_ms)
    assert result.deleted == {"tool_call_log": 500, "action_log": 500, "event_log": 500}
    assert result.batches == 3 * 6  # 5 full batches + 1 short one per table
    for table in ("event_log", "action_log", "tool_call_log"):
        assert await db.scalar(f"SELECT count(*) FROM {table}") == 250
    # No surviving child points at a deleted parent.
    orphans = await db.scalar(
        "SELECT count(*) FROM tool_call_log t LEFT JOIN action_log a ON a.id = t.action_id"
        " WHERE a.id IS NULL"
    )
    assert orphans == 0
    counts = {
        (r["kind"]): (r["total"], r["failed"])
        for r in await db.fetchall(
            "SELECT kind, sum(n) AS total, sum(failed) AS failed FROM log_stats GROUP BY kind"
        )
    }
    assert counts == {"event": (250, 0), "action": (250, 1), "tool": (250, 0)}


async def test_zero_days_keeps_everything(
    tmp_path: Path, db: Database, event_log: EventLog
) -> None:
    now_ms = time.time_ns() // 1_000_000
    await seed(db, now_ms, [400, 30], per_age=10)
    pruner = Pruner(db, event_log, settings_for(tmp_path, 0, batch=100), no_runs)
    result = await pruner.prune_events(now_ms)
    assert sum(result.deleted.values()) == 0
    assert await db.scalar("SELECT count(*) FROM event_log") == 20


async def test_a_pass_records_itself_and_runs_task_retention(
    tmp_path: Path, db: Database, event_log: EventLog
) -> None:
    now_ms = time.time_ns() // 1_000_000
    await seed(db, now_ms, [10], per_age=5)
    calls = []

    async def prune_runs() -> int:
        calls.append(1)
        return 2

    pruner = Pruner(db, event_log, settings_for(tmp_path, 3, batch=1000), prune_runs)
    await pruner.start()
    await pruner.aclose()
    await event_log.flush()
    assert calls == [1]
    summary = await db.scalar("SELECT summary FROM event_log WHERE source = 'system'")
    assert summary == "pruned 15 log rows, 2 task runs and 0 buttons"
