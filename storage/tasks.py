"""Scheduled tasks and their runs: the scheduler's source of truth.

A firing is claimed by inserting its `task_runs` row: UNIQUE(task_id, scheduled_for) lets
exactly one insert win, so a double trigger, a second scheduler on the same file or a
restart can never run one firing twice. All times are stored as UTC ISO text
(storage.timestamps), which compares correctly in SQL.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from storage.db import Database
from storage.rows import from_row, resolve_prefix
from storage.timestamps import from_iso

_COLUMNS = (
    "id, chat_id, kind, schedule, what, status, created_at, next_run_at, last_run_at,"
    " last_outcome, last_error"
)


@dataclass(frozen=True)
class Task:
    """One row of `tasks`; times are stored ISO text, see the properties for datetimes.

    kind: cron | every | once; `schedule` holds the cron expression, the interval in whole
    seconds, or the UTC ISO time. status: active | paused | done. last_outcome: ok |
    failed | missed | interrupted | refused (its chat lacked the rights when it fired).
    """

    id: str
    chat_id: str
    kind: str
    schedule: str
    what: str
    status: str
    created_at: str
    next_run_at: str | None = None
    last_run_at: str | None = None
    last_outcome: str | None = None
    last_error: str | None = None

    @property
    def created(self) -> datetime:
        return from_iso(self.created_at)

    @property
    def next_run(self) -> datetime | None:
        return None if self.next_run_at is None else from_iso(self.next_run_at)

    @property
    def last_run(self) -> datetime | None:
        return None if self.last_run_at is None else from_iso(self.last_run_at)


@dataclass(frozen=True)
class TaskRun:
    """One firing of a task (one row of `task_runs`).

    trigger: schedule | manual | catch-up; state: running | succeeded | failed | missed |
    interrupted.
    """

    id: int
    task_id: str
    scheduled_for: str
    trigger: str
    state: str
    started_at: str
    finished_at: str | None
    error: str | None
    event_id: int | None


class TaskRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ---- tasks -------------------------------------------------------------------------

    async def create(self, task: Task) -> None:
        """Insert a new task.

        :raises sqlite3.IntegrityError: if the id is taken (the caller draws another).
        """
        await self._db.write(
            f"INSERT INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task.id,
                task.chat_id,
                task.kind,
                task.schedule,
                task.what,
                task.status,
                task.created_at,
                task.next_run_at,
                task.last_run_at,
                task.last_outcome,
                task.last_error,
            ),
        )

    async def get(self, task_id: str) -> Task | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        return None if row is None else _task(row)

    async def resolve(self, prefix: str) -> Task:
        """The one task whose id starts with `prefix` (an exact id always wins), like git.

        :raises NotFoundError: if no id starts with it.
        :raises AmbiguousIdError: if several do; it carries the candidate ids.
        """
        return _task(await resolve_prefix(self._db, "tasks", prefix, "task", "/task list"))

    async def list_all(self) -> list[Task]:
        """Active first (soonest due first), then paused, then done; newest first within."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM tasks ORDER BY"
            " CASE status WHEN 'active' THEN 0 WHEN 'paused' THEN 1 ELSE 2 END,"
            " next_run_at IS NULL, next_run_at, created_at DESC"
        )
        return [_task(row) for row in rows]

    async def due(self, now_iso: str) -> list[Task]:
        """Active tasks whose next firing is at or before `now_iso`, oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'active' AND next_run_at <= ?"
            " ORDER BY next_run_at",
            (now_iso,),
        )
        return [_task(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._db.fetchall("SELECT status, count(*) FROM tasks GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    async def next_due(self) -> Task | None:
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'active' AND next_run_at IS NOT NULL"
            " ORDER BY next_run_at LIMIT 1"
        )
        return None if row is None else _task(row)

    async def set_status(self, task_id: str, status: str, next_run_at: str | None) -> bool:
        """Change status and next firing together; False if the task is gone."""
        changed = await self._db.write(
            "UPDATE tasks SET status = ?, next_run_at = ? WHERE id = ?",
            (status, next_run_at, task_id),
        )
        return changed == 1

    async def set_next_run(
        self,
        task_id: str,
        next_run_at: str | None,
        *,
        expected: str | None,
        status: str | None = None,
    ) -> bool:
        """Move an active task's next firing from `expected` to `next_run_at` (compare-and-set).

        False if someone already moved it, or the task was paused or deleted meanwhile:
        then their state stands. `status` (e.g. 'done' after a one-off) changes with it.
        """
        changed = await self._db.write(
            "UPDATE tasks SET next_run_at = ?, status = coalesce(?, status)"
            " WHERE id = ? AND status = 'active' AND next_run_at IS ?",
            (next_run_at, status, task_id, expected),
        )
        return changed == 1

    async def record_outcome(
        self, task_id: str, last_run_at: str, outcome: str, error: str | None = None
    ) -> None:
        await self._db.write(
            "UPDATE tasks SET last_run_at = ?, last_outcome = ?, last_error = ? WHERE id = ?",
            (last_run_at, outcome, error, task_id),
        )

    async def delete(self, task_id: str) -> bool:
        """Delete a task and (ON DELETE CASCADE) its runs; False if it was already gone."""
        return await self._db.write("DELETE FROM tasks WHERE id = ?", (task_id,)) == 1

    # ---- runs --------------------------------------------------------------------------

    async def claim(
        self, task_id: str, scheduled_for_iso: str, trigger: str, *, started_at: str
    ) -> int | None:
        """Claim one firing: a 'running' row; None if this firing was claimed before."""
        async with self._db.atomic() as conn:
            cursor = await conn.execute(
                "INSERT INTO task_runs (task_id, scheduled_for, trigger, state, started_at)"
                " SELECT ?, ?, ?, 'running', ? WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?)"
                " ON CONFLICT (task_id, scheduled_for) DO NOTHING",
                (task_id, scheduled_for_iso, trigger, started_at, task_id),
            )
            if cursor.rowcount != 1 or not cursor.lastrowid:
                return None
            return int(cursor.lastrowid)

    async def attach_event(self, run_id: int, event_id: int) -> None:
        """Link a run to its `scheduled_task` event, so /debug can walk from one to the other."""
        await self._db.write("UPDATE task_runs SET event_id = ? WHERE id = ?", (event_id, run_id))

    async def finish(
        self, run_id: int, state: str, error: str | None = None, *, finished_at: str
    ) -> None:
        """End a running firing as succeeded or failed (a no-op if the task was deleted)."""
        await self._db.write(
            "UPDATE task_runs SET state = ?, error = ?, finished_at = ?"
            " WHERE id = ? AND state = 'running'",
            (state, error, finished_at, run_id),
        )

    async def record_missed(
        self, task_id: str, scheduled_for_iso: str, *, at: str, error: str | None = None
    ) -> bool:
        """Record a firing that will not run; it becomes the task's last run ("3h ago, missed").

        False if that firing already has a row (it ran, or was recorded missed before).
        """
        async with self._db.atomic() as conn:
            cursor = await conn.execute(
                "INSERT INTO task_runs"
                " (task_id, scheduled_for, trigger, state, started_at, finished_at, error)"
                " VALUES (?, ?, 'schedule', 'missed', ?, ?, ?)"
                " ON CONFLICT (task_id, scheduled_for) DO NOTHING",
                (task_id, scheduled_for_iso, at, at, error),
            )
            if cursor.rowcount != 1:
                return False
            await conn.execute(
                "UPDATE tasks SET last_run_at = ?, last_outcome = 'missed', last_error = ?"
                " WHERE id = ?",
                (scheduled_for_iso, error, task_id),
            )
            return True

    async def interrupted_runs(self) -> list[TaskRun]:
        """Runs still 'running': at start-up, those the previous process died in."""
        rows = await self._db.fetchall(
            "SELECT * FROM task_runs WHERE state = 'running' ORDER BY id"
        )
        return [_run(row) for row in rows]

    async def mark_interrupted(self, *, at: str, error: str) -> list[TaskRun]:
        """Turn every 'running' row into 'interrupted' (and the tasks' last outcome), at once.

        Returns the rows changed, so each is reported exactly once.
        """
        async with self._db.atomic() as conn:
            cursor = await conn.execute(
                "UPDATE task_runs SET state = 'interrupted', finished_at = ?, error = ?"
                " WHERE state = 'running' RETURNING *",
                (at, error),
            )
            rows = list(await cursor.fetchall())
            await cursor.close()
            runs = sorted((_run(row) for row in rows), key=lambda run: run.id)
            for run in runs:
                await conn.execute(
                    "UPDATE tasks SET last_run_at = ?, last_outcome = 'interrupted',"
                    " last_error = ? WHERE id = ?",
                    (run.started_at, error, run.task_id),
                )
            return runs

    async def runs(self, task_id: str, limit: int = 20) -> list[TaskRun]:
        """A task's most recent runs, newest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM task_runs WHERE task_id = ? ORDER BY id DESC LIMIT ?",
            (task_id, limit),
        )
        return [_run(row) for row in rows]

    async def last_runs(self) -> dict[str, TaskRun]:
        """The newest run of each task that has one."""
        rows = await self._db.fetchall(
            "SELECT r.* FROM task_runs r"
            " JOIN (SELECT task_id, max(id) AS id FROM task_runs GROUP BY task_id) last"
            " ON last.id = r.id"
        )
        return {row["task_id"]: _run(row) for row in rows}

    async def prune_runs(self, older_than_iso: str, batch: int) -> int:
        """Delete at most `batch` finished runs that ended before `older_than_iso`.

        Bounded so a large backlog never holds the write lock for long; call until it
        returns less than `batch`.
        """
        return await self._db.write(
            "DELETE FROM task_runs WHERE id IN (SELECT id FROM task_runs"
            " WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?)",
            (older_than_iso, batch),
        )


def _task(row: sqlite3.Row) -> Task:
    return from_row(Task, row)


def _run(row: sqlite3.Row) -> TaskRun:
    return from_row(TaskRun, row)
