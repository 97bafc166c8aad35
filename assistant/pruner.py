"""Retention: old event-chain rows and task runs are deleted at start and then hourly.

Children go first (tool calls, actions, events), in batches of `prune_batch` rows per
transaction, so a prune of millions of rows never holds the write lock for long. The
per-hour counts behind /debug report are decremented in the same transaction as the rows.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from assistant.background import cancel
from assistant.config import Settings
from assistant.observability import EventLog
from storage.db import Database
from storage.ids import id_for_time
from storage.timestamps import to_iso, utc_now

log = logging.getLogger(__name__)

# (table, stats kind, key column, failed expression); children first
TABLES = (
    ("tool_call_log", "tool", "tool_name", "ok = 0"),
    ("action_log", "action", "action_type", "ok = 0"),
    ("event_log", "event", "source", "0"),
)


@dataclass(frozen=True)
class PruneResult:
    deleted: dict[str, int]
    batches: int
    seconds: float


def prune_batch(
    conn: sqlite3.Connection, table: str, kind: str, key: str, failed: str, below: int, limit: int
) -> int:
    """Delete up to `limit` rows with id < `below` and their counts; runs on the db thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            f"DELETE FROM {table} WHERE id IN"
            f" (SELECT id FROM {table} WHERE id < ? ORDER BY id LIMIT ?)"
            f" RETURNING substr(ts, 1, 13), {key}, {failed}",
            (below, limit),
        ).fetchall()
        counts: Counter[tuple[str, str]] = Counter()
        fails: Counter[tuple[str, str]] = Counter()
        for hour, name, is_failed in rows:
            counts[(hour, name)] += 1
            fails[(hour, name)] += int(is_failed)
        conn.executemany(
            "UPDATE log_stats SET n = n - ?, failed = max(failed - ?, 0)"
            " WHERE hour = ? AND kind = ? AND key = ?",
            [(n, fails[k], k[0], kind, k[1]) for k, n in counts.items()],
        )
        conn.execute("DELETE FROM log_stats WHERE kind = ? AND n <= 0", (kind,))
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return len(rows)


class Pruner:
    def __init__(
        self,
        db: Database,
        event_log: EventLog,
        settings: Settings,
        prune_runs: Callable[[], Awaitable[int]],
        prune_buttons: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._db = db
        self._log = event_log
        self._prune_runs = prune_runs
        # buttons and thread roots weeks old (assistant/actions.py): a press of one says
        # it expired long before it is pruned
        self._prune_buttons = prune_buttons
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self.last: PruneResult | None = None

    async def prune_events(self, now_ms: int | None = None) -> PruneResult:
        """Delete event-chain rows older than the retention period (0 days = keep all)."""
        days = self._settings.event_log_retention_days
        started = time.perf_counter()
        deleted = {table: 0 for table, *_ in TABLES}
        batches = 0
        if days > 0:
            now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
            below = id_for_time(now_ms - int(days * 86_400_000))
            limit = self._settings.prune_batch
            for table, kind, key, failed in TABLES:
                while True:
                    n = await self._db.run_sync(prune_batch, table, kind, key, failed, below, limit)
                    deleted[table] += n
                    batches += 1
                    if n < limit:
                        break
                    await asyncio.sleep(0)  # let other writers take the lock between batches
        result = PruneResult(deleted, batches, time.perf_counter() - started)
        self.last = result
        return result

    async def prune(self) -> None:
        """One pass over everything with a retention; failures are logged, never raised."""
        try:
            result = await self.prune_events()
            runs = await self._prune_runs()
            buttons = await self._prune_buttons() if self._prune_buttons is not None else 0
            total = sum(result.deleted.values())
            if total or runs or buttons:
                self._log.log_event(
                    "system",
                    None,
                    summary=f"pruned {total} log rows, {runs} task runs and {buttons} buttons",
                    content={
                        **result.deleted,
                        "task_runs": runs,
                        "buttons": buttons,
                        "at": to_iso(utc_now()),
                    },
                )
        except Exception:
            log.exception("pruning failed")

    async def start(self) -> None:
        await self.prune()
        self._task = asyncio.create_task(self._loop(), name="pruner")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.prune_interval_s)
            await self.prune()

    async def aclose(self) -> None:
        await cancel(self._task)
        self._task = None
