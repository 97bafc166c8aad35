"""Runs and their state history.

States are plain text here: `assistant/runs/lifecycle.py` names them, holds the moves
between them and is the only caller of `set_state` (and of `apply` with a state).

The monitor's reading position in a run's events.jsonl (`events_offset`) is stored in the
same transaction as what it learned from those lines, so a restart neither loses nor
repeats an event.

Every write of a run raises its `rev` above every other run's (triggers of migration 13,
whoever writes: this process or another), so the monitor keeps its live runs in memory
and asks only for the rows written since it last looked (`changes`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from storage.db import Database
from storage.ids import short_random_id
from storage.rows import from_row, resolve_prefix


@dataclass(frozen=True)
class RunRecord:
    id: str
    kind: str
    recipe: str
    params: dict[str, Any]
    image: str
    gpus_wanted: int
    gpus: list[int]
    nproc: int
    memory_mb: int | None
    cpus: float | None
    chat_id: str
    state: str
    runner: str | None
    handle: str | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    step: int
    total: int | None
    metrics: dict[str, Any]
    best: dict[str, Any]
    checkpoint: str | None
    exit_code: int | None
    error: str | None
    events_offset: int
    last_beat_at: str | None
    stalled: bool
    retry_of: str | None
    launch_action: int | None
    definition: dict[str, Any] | None = None  # a declared recipe's snapshot (recipes.toml)
    server: dict[str, Any] | None = None  # a benchmark's serving container
    # a stop/pause/kill asked and not yet delivered (the engine did not answer), and when
    wanted: str | None = None
    wanted_at: str | None = None
    signalled_at: str | None = None  # when the stop/pause signal reached the run
    blocked: str | None = None  # why a request or a launch waits (the engine's silence)
    host: str = ""  # the pool host it runs or ran on (runs/pool.py); "" on one engine
    host_asked: str = ""  # the host or label `host=` asked for; "" = any host
    rev: int = 0  # raised by every write of the row (a trigger): what the monitor compares


@dataclass
class Progress:
    """What one monitor pass learned; applied in one transaction with the new offset."""

    offset: int
    step: int | None = None
    total: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    beat_at: str | None = None


def _assignments(columns: dict[str, Any]) -> tuple[str, list[Any]]:
    """`a = ?, b = ?` and its values; lists and dicts stored as JSON.

    :raises ValueError: for a name that is not a run column (never from user input).
    """
    for name in columns:
        if name not in RunRecord.__dataclass_fields__:
            raise ValueError(f"no run column {name}")
    values = [json.dumps(v) if isinstance(v, list | dict) else v for v in columns.values()]
    return ", ".join(f"{name} = ?" for name in columns), values


def _as_is(text: str) -> str:
    return text


def _run(row: sqlite3.Row) -> RunRecord:
    return from_row(
        RunRecord,
        row,
        params=json.loads(row["params"]),
        gpus=json.loads(row["gpus"]),
        metrics=json.loads(row["metrics"]),
        best=json.loads(row["best"]),
        stalled=bool(row["stalled"]),
        definition=_json_or_none(row["definition"]),
        server=_json_or_none(row["server"]),
    )


def _json_or_none(text: str | None) -> dict[str, Any] | None:
    return None if text is None else dict(json.loads(text))


class RunRepo:
    def __init__(self, db: Database, clean: Callable[[str], str] = _as_is) -> None:
        self._db = db
        self._clean = clean  # masks secrets in what a run said (its error, a state's note)

    async def create(
        self,
        *,
        kind: str,
        recipe: str,
        params: dict[str, Any],
        image: str,
        gpus_wanted: int,
        nproc: int,
        memory_mb: int | None,
        cpus: float | None,
        chat_id: str,
        total: int | None,
        now: str,
        state: str,
        retry_of: str | None = None,
        definition: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        host_asked: str = "",
    ) -> RunRecord:
        for _ in range(5):
            run_id = short_random_id(6)
            try:
                async with self._db.atomic() as conn:
                    await conn.execute(
                        "INSERT INTO runs (id, kind, recipe, params, image, gpus_wanted, nproc,"
                        " memory_mb, cpus, chat_id, state, created_at, total, retry_of,"
                        " definition, server, host_asked)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run_id,
                            kind,
                            recipe,
                            json.dumps(params),
                            image,
                            gpus_wanted,
                            nproc,
                            memory_mb,
                            cpus,
                            chat_id,
                            state,
                            now,
                            total,
                            retry_of,
                            None if definition is None else json.dumps(definition),
                            None if server is None else json.dumps(server),
                            host_asked,
                        ),
                    )
                    await conn.execute(
                        "INSERT INTO run_states (run_id, ts, state, note) VALUES (?, ?, ?, ?)",
                        (run_id, now, state, "asked"),
                    )
            except sqlite3.IntegrityError:
                continue  # id taken: draw another
            run = await self.get(run_id)
            assert run is not None
            return run
        raise RuntimeError("could not draw a free run id")

    def _cleaned(self, columns: dict[str, Any]) -> dict[str, Any]:
        return {k: self._clean(v) if isinstance(v, str) else v for k, v in columns.items()}

    async def get(self, run_id: str) -> RunRecord | None:
        row = await self._db.fetchone("SELECT * FROM runs WHERE id = ?", (run_id,))
        return None if row is None else _run(row)

    async def resolve(self, prefix: str) -> RunRecord:
        """An unambiguous id prefix -> the run.

        :raises NotFoundError, AmbiguousIdError: with the candidates.
        """
        return _run(await resolve_prefix(self._db, "runs", prefix, "run", "/runs"))

    async def in_states(self, states: tuple[str, ...]) -> list[RunRecord]:
        marks = ",".join("?" * len(states))
        rows = await self._db.fetchall(
            f"SELECT * FROM runs WHERE state IN ({marks}) ORDER BY created_at, id", states
        )
        return [_run(r) for r in rows]

    async def max_rev(self) -> int:
        """The highest `rev` of any run: rows written after this read have a higher one."""
        row = await self._db.fetchone("SELECT coalesce(max(rev), 0) AS rev FROM runs")
        return 0 if row is None else int(row["rev"])

    async def changes(self, after: int) -> list[tuple[str, int, str]]:
        """(id, rev, state) of every run written since `rev` was `after` (an index range)."""
        rows = await self._db.fetchall(
            "SELECT id, rev, state FROM runs WHERE rev > ? ORDER BY rev", (after,)
        )
        return [(r["id"], int(r["rev"]), r["state"]) for r in rows]

    async def some(self, ids: list[str]) -> list[RunRecord]:
        """The runs of these ids (those that exist), in one query."""
        found: list[RunRecord] = []
        for start in range(0, len(ids), 500):  # SQLite's bound on parameters, with room
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = await self._db.fetchall(f"SELECT * FROM runs WHERE id IN ({marks})", part)
            found.extend(_run(r) for r in rows)
        return found

    async def recent(self, limit: int) -> list[RunRecord]:
        rows = await self._db.fetchall(
            "SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
        )
        return [_run(r) for r in rows]

    async def bench_history(self, model: str, before: str, limit: int = 20) -> list[RunRecord]:
        """Ended benchmark runs of `model` created before `before`, newest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM runs WHERE kind = 'bench' AND state = 'succeeded'"
            " AND json_extract(params, '$.model') = ? AND created_at < ?"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (model, before, limit),
        )
        return [_run(r) for r in rows]

    async def history(self, run_id: str) -> list[tuple[str, str, str | None]]:
        rows = await self._db.fetchall(
            "SELECT ts, state, note FROM run_states WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [(r["ts"], r["state"], r["note"]) for r in rows]

    async def set_state(
        self,
        run_id: str,
        state: str,
        now: str,
        note: str | None = None,
        *,
        sources: tuple[str, ...],
        **columns: Any,
    ) -> bool:
        """Change state (recorded in the history) and other columns, atomically, if the
        stored state is one of `sources`; whether it changed."""
        note = None if note is None else self._clean(note)
        sets, values = _assignments({"state": state, **self._cleaned(columns)})
        marks = ",".join("?" * len(sources))
        async with self._db.atomic() as conn:
            cursor = await conn.execute(
                f"UPDATE runs SET {sets} WHERE id = ? AND state IN ({marks})",
                (*values, run_id, *sources),
            )
            if cursor.rowcount == 0:
                return False
            await conn.execute(
                "INSERT INTO run_states (run_id, ts, state, note) VALUES (?, ?, ?, ?)",
                (run_id, now, state, note),
            )
        return True

    async def update(self, run_id: str, **columns: Any) -> None:
        """Change columns other than the state."""
        if "state" in columns:
            raise ValueError("use set_state to change a run's state")
        sets, values = _assignments(self._cleaned(columns))
        await self._db.write(f"UPDATE runs SET {sets} WHERE id = ?", (*values, run_id))

    async def apply(
        self,
        run: RunRecord,
        progress: Progress,
        now: str,
        *,
        state: str | None = None,
        note: str | None = None,
        sources: tuple[str, ...] = (),
    ) -> bool:
        """Store a monitor pass: new offset, progress, metrics, atomically; with `state`
        also the state, if the stored one is among `sources`. Whether the state changed."""
        async with self._db.atomic() as conn:
            await conn.execute(_APPLY, _apply_values(run, progress))
            if state is None:
                return False
            return await self._move(conn, run.id, now, state, note, sources)

    async def apply_many(self, passes: list[Applied], now: str) -> None:
        """Store a monitor pass over many runs in one transaction (one commit, not one a run).

        The same writes as `apply` for each: progress first, then each move whose stored
        state is still among its sources.
        """
        async with self._db.atomic() as conn:
            await conn.executemany(_APPLY, [_apply_values(a.run, a.progress) for a in passes])
            for a in passes:
                if a.state is not None:
                    await self._move(conn, a.run.id, now, a.state, a.note, a.sources)

    async def _move(
        self,
        conn: aiosqlite.Connection,
        run_id: str,
        now: str,
        state: str,
        note: str | None,
        sources: tuple[str, ...],
    ) -> bool:
        marks = ",".join("?" * len(sources))
        cursor = await conn.execute(
            f"UPDATE runs SET state = ? WHERE id = ? AND state IN ({marks})",
            (state, run_id, *sources),
        )
        if cursor.rowcount == 0:
            return False
        await conn.execute(
            "INSERT INTO run_states (run_id, ts, state, note) VALUES (?, ?, ?, ?)",
            (run_id, now, state, note and self._clean(note)),
        )
        return True


@dataclass(frozen=True)
class Applied:
    """One run's part of `apply_many`: its pass, and the move stored with it, if any."""

    run: RunRecord
    progress: Progress
    state: str | None = None
    note: str | None = None
    sources: tuple[str, ...] = ()


_APPLY = (
    "UPDATE runs SET events_offset = ?, step = coalesce(?, step),"
    " total = coalesce(?, total), metrics = ?, best = ?,"
    " checkpoint = coalesce(?, checkpoint), last_beat_at = coalesce(?, last_beat_at),"
    " stalled = CASE WHEN ? IS NULL THEN stalled ELSE 0 END"
    " WHERE id = ?"
)


def _apply_values(run: RunRecord, progress: Progress) -> tuple[Any, ...]:
    return (
        progress.offset,
        progress.step,
        progress.total,
        json.dumps({**run.metrics, **progress.metrics}),
        json.dumps({**run.best, **progress.best}),
        progress.checkpoint,
        progress.beat_at,
        progress.beat_at,
        run.id,
    )
