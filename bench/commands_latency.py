"""Command latency with a big event log: /status, /debug why, /debug report, ...

    python bench/commands_latency.py [--events 1000000] [--repeat 300]

Seeds a real SQLite file with N events within retention, each with one action and one
tool call (1% failed; every 10th event caused by the previous action, so chains have
hops), then starts the real orchestrator on it and times each command's handling
(parse, handler, database reads, formatting). Targets on the 2-core machine: /status and
/debug why under 10 ms, /debug report under 50 ms, at the 99th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from bench.harness import NullChannel
from storage.db import Database
from storage.ids import encode, id_for_time
from storage.timestamps import iso_from_ms

SOURCES = ("telegram", "slack", "scheduled_task", "run", "message_batch")
ACTIONS = ("message_sent", "run_launched", "task_run", "command")
TOOLS = ("telegram.send", "docker.create", "task.add", "slack.send")


def seed(path: Path, n: int) -> None:
    """N chains spread over the last 2.5 days, written straight through sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now_ms = time.time_ns() // 1_000_000
    span = int(2.5 * 86_400_000)
    chunk = 50_000
    previous_action = None
    for start in range(0, n, chunk):
        events, actions, tools = [], [], []
        for i in range(start, min(start + chunk, n)):
            at = now_ms - span + span * i // n
            base = id_for_time(at) + (i % 1000) * 3
            ts = iso_from_ms(at)
            failed = i % 100 == 0
            caused_by = previous_action if i % 10 == 1 else None
            events.append(
                (base, ts, SOURCES[i % 5], str(i), caused_by, f"event {i}", '{"text":"hello"}')
            )
            actions.append(
                (
                    base + 1,
                    ts,
                    base,
                    ACTIONS[i % 4],
                    "tg:1",
                    "reply",
                    int(not failed),
                    "HTTP 429" if failed else None,
                )
            )
            tools.append(
                (
                    base + 2,
                    ts,
                    base + 1,
                    TOOLS[i % 4],
                    "{}",
                    "{}",
                    3.5,
                    int(not failed),
                    "timed out" if failed else None,
                )
            )
            previous_action = base + 1
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO event_log VALUES (?, ?, ?, ?, ?, ?, ?)", events)
        conn.executemany("INSERT INTO action_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", actions)
        conn.executemany("INSERT INTO tool_call_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tools)
        conn.execute("COMMIT")
    # The counts the writer keeps incrementally, computed once for the seeded rows.
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO log_stats SELECT substr(ts, 1, 13), 'event', source, count(*), 0"
        " FROM event_log GROUP BY 1, 3"
    )
    conn.execute(
        "INSERT INTO log_stats SELECT substr(ts, 1, 13), 'action', action_type, count(*),"
        " sum(ok = 0) FROM action_log GROUP BY 1, 3"
    )
    conn.execute(
        "INSERT INTO log_stats SELECT substr(ts, 1, 13), 'tool', tool_name, count(*),"
        " sum(ok = 0) FROM tool_call_log GROUP BY 1, 3"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        db = await Database.open(home / "assistant.db")  # the real schema
        await db.aclose()
        started = time.perf_counter()
        seed(home / "assistant.db", args.events)
        size = (home / "assistant.db").stat().st_size / 1e6
        print(
            f"seeded {args.events:,} events (+ as many actions and tool calls)"
            f" in {time.perf_counter() - started:.1f}s, {size:.0f} MB"
        )
        settings = Settings(
            assistant_home=home,
            admin_chats=("tg:1",),
            http_address="off",  # a running service may hold the default port
            _env_file=None,  # type: ignore[call-arg]
        )
        async with Orchestrator(settings, channels=[NullChannel()]) as orch:
            for what in ("every 1h /status", 'cron "0 2 * * *" /status', "once +3h check run"):
                await orch.execute_command("tg:1", "bench", f"/task add {what}", None)
            some_event = await orch.services.db.scalar(
                "SELECT id FROM event_log WHERE caused_by IS NOT NULL ORDER BY id DESC LIMIT 1"
            )
            commands = [
                "/status",
                "/status tasks",
                "/debug why",
                f"/debug why {encode(some_event)}",
                "/debug last 10",
                f"/debug event {encode(some_event)}",
                "/debug report",
            ]
            print(f"{'command':34s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
            for text in commands:
                samples = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    _, error = await orch.execute_command("tg:1", "bench", text, None)
                    samples.append((time.perf_counter() - t0) * 1000)
                    assert error is None, error
                label = text if len(text) < 34 else text[:31] + "..."
                print(
                    f"{label:34s} {percentile(samples, 0.5):8.2f} {percentile(samples, 0.99):8.2f}"
                    f" {max(samples):8.2f}"
                )


if __name__ == "__main__":
    asyncio.run(main())
