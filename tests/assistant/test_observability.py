"""The event chain writer: never raises, batches, redacts, survives a full disk and kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assistant.observability import EventLog, current_action
from assistant.redaction import Redactor
from storage.db import Database
from storage.ids import IdGenerator, time_of


async def test_ids_return_at_once_and_rows_land_within_the_flush_window(
    db: Database, event_log: EventLog
) -> None:
    event_id = event_log.log_event("local", "m1", summary="hello", content={"text": "hello"})
    action_id = event_log.log_action(event_id, "message_sent", target="local:console", content="hi")
    assert action_id > event_id
    assert await db.scalar("SELECT count(*) FROM event_log") == 0  # not awaited: buffered
    await asyncio.sleep(0.2)
    row = await db.fetchone("SELECT * FROM action_log WHERE id = ?", (action_id,))
    assert row is not None and row["triggered_by"] == event_id and row["ok"] == 1
    event = await db.fetchone("SELECT * FROM event_log WHERE id = ?", (event_id,))
    assert event is not None and event["raw_content"] == '{"text":"hello"}'
    assert event["ts"].endswith("Z") and len(event["ts"]) == 24


async def test_secrets_are_redacted_before_they_are_written(
    db: Database, event_log: EventLog
) -> None:
    telegram = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw9"
    event_log.log_event(
        "telegram",
        summary=f"token {telegram} and hunter2-secret-value",
        content={
            "headers": {"Authorization": "Bearer abc.def.ghi"},
            "api_key": "sk-ant-api03-XYZXYZXYZXYZ",
        },
    )
    event_log.log_action(None, "message_sent", error="password=opensesame failed")
    await event_log.flush()
    event = await db.fetchone("SELECT summary, raw_content FROM event_log")
    action = await db.fetchone("SELECT error FROM action_log")
    assert event is not None and action is not None
    stored = event["summary"] + event["raw_content"] + action["error"]
    for secret in (telegram, "hunter2-secret-value", "abc.def.ghi", "sk-ant-api03", "opensesame"):
        assert secret not in stored
    assert stored.count("[REDACTED]") == 5


async def test_content_is_truncated_at_10_kb(db: Database, event_log: EventLog) -> None:
    event_log.log_event("local", content="é" * 20_000)
    await event_log.flush()
    raw = await db.scalar("SELECT raw_content FROM event_log")
    assert len(raw.encode()) <= 10 * 1024
    assert raw.endswith("bytes]")


async def test_tool_call_context_manager_records_success_and_failure(
    db: Database, event_log: EventLog
) -> None:
    async with (
        event_log.action(None, "run_launched", target="gpt") as act,
        event_log.tool_call("docker.create", {"image": "x"}) as call,
    ):
        call.output = {"container": "abc"}
    with pytest.raises(RuntimeError, match="engine down"):
        async with (
            event_log.action(None, "run_launched") as failed_act,
            event_log.tool_call("docker.start"),
        ):
            raise RuntimeError("engine down")
    await event_log.flush()
    tools = await db.fetchall("SELECT * FROM tool_call_log ORDER BY id")
    assert [(t["action_id"], t["tool_name"], t["ok"]) for t in tools] == [
        (act.id, "docker.create", 1),
        (failed_act.id, "docker.start", 0),
    ]
    assert tools[1]["error"] == "engine down" and tools[1]["duration_ms"] >= 0
    actions = await db.fetchall("SELECT ok, error FROM action_log ORDER BY id")
    assert [(a["ok"], a["error"]) for a in actions] == [(1, None), (0, "engine down")]
    assert current_action.get() is None


async def test_tool_call_decorator_traces_every_call(db: Database, event_log: EventLog) -> None:
    @event_log.tool_call("math.div")
    async def div(a: int, b: int) -> float:
        return a / b

    async with event_log.action(None, "compute") as act:
        assert await div(6, 3) == 2
        with pytest.raises(ZeroDivisionError):
            await div(1, 0)
    await event_log.flush()
    rows = await db.fetchall("SELECT action_id, input, output, ok FROM tool_call_log ORDER BY id")
    assert [(r["action_id"], r["input"], r["output"], r["ok"]) for r in rows] == [
        (act.id, "[6,3]", "2.0", 1),
        (act.id, "[1,0]", None, 0),
    ]


async def test_per_hour_counts_follow_the_rows(db: Database, event_log: EventLog) -> None:
    for _ in range(3):
        event_log.log_event("local")
    event_log.log_action(None, "message_sent", ok=False, error="boom")
    await event_log.flush()
    stats = {
        (r["kind"], r["key"]): (r["n"], r["failed"])
        for r in await db.fetchall("SELECT * FROM log_stats")
    }
    assert stats == {("event", "local"): (3, 0), ("action", "message_sent"): (1, 1)}


async def test_a_full_disk_loses_no_row(db: Database) -> None:
    log = EventLog(db, Redactor(), flush_interval=0.01)
    await log.start()
    try:
        page_count = await db.scalar("PRAGMA page_count")
        await db.fetchall(f"PRAGMA max_page_count = {page_count}")  # SQLite's own 'disk full'
        for i in range(3000):
            log.log_event("local", str(i), summary="x" * 200)
        assert not await log.flush()
        assert log.stats.failures >= 1 and "full" in (log.stats.last_error or "")
        assert log.pending == 3000
        await db.fetchall("PRAGMA max_page_count = 1073741823")
        assert await log.flush()
    finally:
        await log.aclose()
    assert await db.scalar("SELECT count(*) FROM event_log") == 3000
    assert log.stats.dropped == 0


async def test_buffer_is_bounded_while_the_database_is_down(db: Database) -> None:
    log = EventLog(db, Redactor(), flush_interval=10, max_pending=100)
    page_count = await db.scalar("PRAGMA page_count")
    await db.fetchall(f"PRAGMA max_page_count = {page_count}")
    for _ in range(500):
        log.log_event("local", summary="y" * 500)
    assert not await log.flush()
    assert log.pending == 100 and log.stats.dropped == 400
    await db.fetchall("PRAGMA max_page_count = 1073741823")
    assert await log.flush()


async def test_ids_continue_after_restart(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.db")
    future = IdGenerator(1 << 61).next()
    await db.write("INSERT INTO event_log (id, ts, source) VALUES (?, 'x', 'local')", (future,))
    log = EventLog(db, Redactor())
    await log.start()
    assert log.log_event("local") > future
    await log.aclose()
    await db.aclose()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from storage.db import Database
    from assistant.observability import EventLog
    from assistant.redaction import Redactor

    async def main():
        db = await Database.open(Path(sys.argv[1]))
        log = EventLog(db, Redactor(), flush_interval=0.05)
        await log.start()
        i = 0
        while True:
            for _ in range(200):
                log.log_event("local", str(i), summary="chain")
                i += 1
            await asyncio.sleep(0.001)
            if i == 20000:
                print("ready", flush=True)

    asyncio.run(main())
    """
)


def test_kill_9_loses_at_most_the_flush_window_and_never_corrupts(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n, top = conn.execute(
            "SELECT count(*), max(CAST(source_id AS INTEGER)) FROM event_log"
        ).fetchone()
        # Committed rows form an unbroken prefix: nothing in the middle was lost.
        assert n >= 20000 and top == n - 1
    finally:
        conn.close()


async def test_writer_lag_is_the_age_of_the_oldest_event_waiting(db: Database) -> None:
    log = EventLog(db, Redactor(), flush_interval=10)  # not started: nothing is written
    assert log.lag_s(time.time_ns() // 1_000_000) == 0.0
    log.log_action(None, "reply")  # an action alone does not count: it is queued at its end
    assert log.lag_s(time.time_ns() // 1_000_000) == 0.0
    first = log.log_event("system", None, summary="first")
    log.log_event("system", None, summary="second")
    later_ms = time_of(first) + 2_500
    assert log.lag_s(later_ms) == pytest.approx(2.5)
    await log.start()
    assert await log.flush()
    assert log.lag_s(later_ms) == 0.0
    await log.aclose()
