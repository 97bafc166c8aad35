"""Event-log ingest through the public API: sustained rate, and event-loop time per call.

    python bench/ingest.py [--events 1000000]

Producers call `log_event` (and, in the chain mix, `log_action` + a tool call) as fast as
the loop allows, yielding every 1,000 calls like real coroutines would; the single writer
commits in the background. The rate counts rows until the last one is committed.
Targets (2-core machine): >= 100,000 events/s, < 10 us of event-loop time per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.observability import EventLog
from assistant.redaction import Redactor
from storage.db import Database

SAMPLE = 100  # calls per timing sample: perf_counter's own cost stays out of the figure


async def events_only(log: EventLog, n: int) -> list[float]:
    per_call: list[float] = []
    i = 0
    while i < n:
        started = time.perf_counter_ns()
        for j in range(i, min(i + SAMPLE, n)):
            log.log_event("telegram", str(j), summary="Message from ann: how is run 42 doing?")
        per_call.append((time.perf_counter_ns() - started) / SAMPLE / 1000)
        i += SAMPLE
        if i % 1000 == 0:
            await asyncio.sleep(0)
    return per_call


async def chains(log: EventLog, n: int) -> list[float]:
    """n/3 chains of event -> action -> tool call: n rows."""
    per_call: list[float] = []
    for i in range(n // 3):
        started = time.perf_counter_ns()
        event_id = log.log_event("telegram", str(i), summary="Message from ann: /status")
        action_id = log.log_action(event_id, "message_sent", target="tg:1", content="ok")
        log.log_tool_call(action_id, "telegram.send", input={"chat": 1}, duration_ms=3.2)
        per_call.append((time.perf_counter_ns() - started) / 3 / 1000)
        if i % 333 == 0:
            await asyncio.sleep(0)
    return per_call


async def run(kind: str, n: int, directory: Path) -> None:
    db = await Database.open(directory / f"{kind}.db")
    log = EventLog(db, Redactor(["not-a-real-secret-value"]))
    await log.start()
    started = time.perf_counter()
    producer = events_only if kind == "events" else chains
    per_call = await producer(log, n)
    produced = time.perf_counter() - started
    await log.aclose()
    total = time.perf_counter() - started
    rows = await db.scalar(
        "SELECT (SELECT count(*) FROM event_log) + (SELECT count(*) FROM action_log)"
        " + (SELECT count(*) FROM tool_call_log)"
    )
    await db.aclose()
    per_call.sort()
    p99 = per_call[int(len(per_call) * 0.99)]
    print(
        f"{kind:7s} rows={rows:>9,}  sustained={rows / total:>9,.0f} rows/s"
        f"  (produced in {produced:.2f}s, committed by {total:.2f}s)"
        f"  loop time/call: mean={statistics.fmean(per_call):.2f}us p99={p99:.2f}us"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await run("events", args.events, Path(tmp))
        await run("chains", args.events, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
