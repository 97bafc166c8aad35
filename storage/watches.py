"""Watches: jobs the assistant did not launch (a container, a pid, a Slurm job) it follows.

A watch is not a run: it has no spec, no queue, no lifecycle of ours. What is kept is
what following it needs after a restart (what it is, where its output is and how far it
was read) and what it said (step, metrics, how it ended). Reading position and what was
learned from those lines are stored in one statement, as for runs, so a restart neither
loses nor repeats a line.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from storage import eventlog
from storage.db import Database
from storage.ids import short_random_id
from storage.rows import from_row, resolve_prefix

KINDS = ("container", "pid", "slurm")
# pending: known, not started yet (a queued Slurm job, a created container); running;
# ended: over, `status` says how; unwatched: /unwatch (kept for /debug watch).
ACTIVE = ("pending", "running")
STATES = (*ACTIVE, "ended", "unwatched")


@dataclass(frozen=True)
class WatchRecord:
    id: str
    kind: str
    target: str  # as given: a container's name or id, a pid, a Slurm job id
    ref: str  # what identifies it for sure: a container's full id, "pid:starttime", a job id
    label: str  # a short description: a container's name and image, a command line
    chat_id: str
    pattern: str | None  # the declared recipe whose progress rules read its output
    rules: dict[str, Any]  # those rules as they were when the watch was added
    log_path: str | None  # the file its output is read from (pid, slurm)
    state: str
    status: str | None  # how it ended, in words
    exit_code: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    out_offset: int  # bytes of the file read; a container: its last log line's time (ns)
    step: int | None
    total: int | None
    metrics: dict[str, Any]
    best: dict[str, Any]
    lines: int  # output lines read
    skipped: int  # output lines left out (too long, unreadable)
    added_action: int | None  # the watch_added action: the watch's events hang off it


@dataclass
class WatchPass:
    """What one poller pass learned of a watch; stored in one statement."""

    out_offset: int
    step: int | None = None
    total: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    lines: int = 0
    skipped: int = 0


def _watch(row: sqlite3.Row) -> WatchRecord:
    return from_row(
        WatchRecord,
        row,
        rules=json.loads(row["rules"]),
        metrics=json.loads(row["metrics"]),
        best=json.loads(row["best"]),
    )


def _as_is(text: str) -> str:
    return text


_COLUMNS = frozenset(WatchRecord.__dataclass_fields__) - {"id"}


class WatchRepo:
    def __init__(self, db: Database, clean: Callable[[str], str] = _as_is) -> None:
        self._db = db
        self._clean = clean  # masks secrets in what a job said (its status, label)

    async def create(
        self,
        *,
        kind: str,
        target: str,
        ref: str,
        label: str,
        chat_id: str,
        pattern: str | None,
        rules: dict[str, Any],
        log_path: str | None,
        state: str,
        now: str,
        out_offset: int = 0,
        added_action: int | None = None,
    ) -> WatchRecord:
        for _ in range(5):
            watch_id = short_random_id(6)
            try:
                await self._db.insert(
                    "INSERT INTO watches (id, kind, target, ref, label, chat_id, pattern, rules,"
                    " log_path, state, created_at, started_at, out_offset, added_action)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        watch_id,
                        kind,
                        target,
                        ref,
                        self._clean(label),
                        chat_id,
                        pattern,
                        json.dumps(rules),
                        log_path,
                        state,
                        now,
                        now if state == "running" else None,
                        out_offset,
                        added_action,
                    ),
                )
            except sqlite3.IntegrityError:
                continue  # id taken: draw another
            watch = await self.get(watch_id)
            assert watch is not None
            return watch
        raise RuntimeError("could not draw a free watch id")

    async def get(self, watch_id: str) -> WatchRecord | None:
        row = await self._db.fetchone("SELECT * FROM watches WHERE id = ?", (watch_id,))
        return None if row is None else _watch(row)

    async def resolve(self, prefix: str) -> WatchRecord:
        """:raises NotFoundError, AmbiguousIdError: no watch, or several, start with it."""
        return _watch(await resolve_prefix(self._db, "watches", prefix, "watch", "/watches"))

    async def active(self) -> list[WatchRecord]:
        rows = await self._db.fetchall(
            "SELECT * FROM watches WHERE state IN ('pending', 'running') ORDER BY created_at, id"
        )
        return [_watch(r) for r in rows]

    async def recent(self, limit: int) -> list[WatchRecord]:
        """Watches that are over (ended or unwatched), newest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM watches WHERE state NOT IN ('pending', 'running')"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [_watch(r) for r in rows]

    async def find_active(self, kind: str, ref: str) -> WatchRecord | None:
        row = await self._db.fetchone(
            "SELECT * FROM watches WHERE kind = ? AND ref = ? AND state IN ('pending', 'running')",
            (kind, ref),
        )
        return None if row is None else _watch(row)

    async def update(self, watch_id: str, **columns: Any) -> None:
        for name in columns:
            if name not in _COLUMNS:
                raise ValueError(f"no watch column {name}")
        values = [
            json.dumps(v) if isinstance(v, dict) else (self._clean(v) if isinstance(v, str) else v)
            for v in columns.values()
        ]
        sets = ", ".join(f"{name} = ?" for name in columns)
        await self._db.write(f"UPDATE watches SET {sets} WHERE id = ?", (*values, watch_id))

    async def move(
        self, watch_id: str, state: str, *, sources: tuple[str, ...], **columns: Any
    ) -> bool:
        """Change the state (and other columns) if the stored one is among `sources`."""
        if state not in STATES:
            raise ValueError(f"no watch state {state}")
        columns = {"state": state, **columns}
        values = [self._clean(v) if isinstance(v, str) else v for v in columns.values()]
        sets = ", ".join(f"{name} = ?" for name in columns)
        marks = ",".join("?" * len(sources))
        changed = await self._db.write(
            f"UPDATE watches SET {sets} WHERE id = ? AND state IN ({marks})",
            (*values, watch_id, *sources),
        )
        return changed > 0

    async def record(self, passes: Iterable[tuple[WatchRecord, WatchPass]]) -> None:
        """Store many watches' passes in one transaction (the poller's one write a pass)."""
        rows = [
            (
                p.out_offset,
                p.step,
                p.total,
                json.dumps({**w.metrics, **p.metrics}),
                json.dumps({**w.best, **p.best}),
                p.lines,
                p.skipped,
                w.id,
            )
            for w, p in passes
        ]
        if rows:
            await self._db.write_many(
                "UPDATE watches SET out_offset = ?, step = coalesce(?, step),"
                " total = coalesce(?, total), metrics = ?, best = ?, lines = lines + ?,"
                " skipped = skipped + ? WHERE id = ?",
                rows,
            )

    async def story(self, watch: WatchRecord) -> WatchStory:
        return await self._db.read_sync(watch_story, watch.id, watch.added_action)


@dataclass(frozen=True)
class WatchStory:
    """A watch's chain for /debug watch: what added it, then its own events."""

    cause: list[eventlog.Step]
    events: list[eventlog.EventTree]
    events_total: int
    left_out_at: int
    left_out: int


def watch_story(
    conn: sqlite3.Connection,
    watch_id: str,
    added_action: int | None,
    *,
    head: int = 4,
    tail: int = 10,
) -> WatchStory:
    """In one hop, bounded for a phone: the chain to the watch_added action, then each
    event of the watch (source 'watch') with what it triggered."""
    cause = eventlog.chain_to(conn, added_action) if added_action is not None else []
    ids = [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM event_log WHERE source = 'watch' AND source_id = ? ORDER BY id",
            (watch_id,),
        )
    ]
    kept, left_out = (
        (ids, 0) if len(ids) <= head + tail else (ids[:head] + ids[-tail:], len(ids) - head - tail)
    )
    trees = [eventlog.event_tree(conn, event_id, 0, [3]) for event_id in kept]
    return WatchStory(
        cause=cause,
        events=[t for t in trees if t is not None],
        events_total=len(ids),
        left_out_at=min(head, len(kept)),
        left_out=left_out,
    )
