"""The event chain: events, the actions they trigger, and the tool calls inside actions.

`log_event` and `log_action` return an id at once; they never raise and never await. Rows
wait in memory until the single writer task commits them, in one transaction per batch,
at most `flush_interval` later: a kill -9 loses at most that window and never corrupts
the file (SQLite's WAL). Redaction, truncation and the per-hour counts behind
/debug report happen on the database thread, not on the event loop.

Actions and tool calls link up through a context variable: code running inside
`async with log.action(...)` gets its tool calls attached without passing ids around.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

from assistant import log_context
from assistant.jobs.text import valid_text
from assistant.redaction import Redactor, to_json
from storage.db import Database
from storage.ids import IdGenerator, time_of
from storage.timestamps import iso_from_ms

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="HasEventLog")

# The action that tool calls made in this context belong to.
current_action: ContextVar[int | None] = ContextVar("current_action", default=None)

_EVENT_SQL = (
    "INSERT INTO event_log (id, ts, source, source_id, caused_by, summary, raw_content)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ACTION_SQL = (
    "INSERT INTO action_log (id, ts, triggered_by, action_type, target, content, ok, error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_TOOL_SQL = (
    "INSERT INTO tool_call_log (id, ts, action_id, tool_name, input, output, duration_ms, ok,"
    " error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_STATS_SQL = (
    "INSERT INTO log_stats (hour, kind, key, n, failed) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (hour, kind, key) DO UPDATE SET n = n + excluded.n,"
    " failed = failed + excluded.failed"
)

_REASON_CHARS = 200  # of a dropped row's reason, as /status shows it

EventRow = tuple[int, str, str | None, int | None, str, str | None]
ActionRow = tuple[int, int | None, str, str | None, str | None, bool, str | None]
ToolRow = tuple[int, int | None, str, str | None, str | None, float, bool, str | None]
RowKind = Literal["event", "action", "tool"]


class RowTap(Protocol):
    """Sees every row as it is logged (the trace exporter, assistant/tracing.py).

    `take` runs on the event loop for each row: it must only hand the row on, and never
    raise. `at_ns` is when the row was logged (an action's end, a tool call's end).
    """

    def take(self, kind: RowKind, row: EventRow | ActionRow | ToolRow, at_ns: int) -> None: ...

    def describe(self) -> str: ...

    @property
    def dropped(self) -> int:
        """Rows whose span was lost (queue full, collector down): for /debug and metrics."""
        ...


@dataclass
class WriterStats:
    """What the writer has done; shown by /status and /debug report."""

    written: int = 0
    dropped: int = 0
    failures: int = 0
    last_error: str | None = None
    last_drop: str | None = None  # why the latest dropped row was dropped
    last_flush_ms: float = 0.0


def _stored(value: object) -> str | None:
    """Freeze a caller's value now (it may be mutated later); strings pass untouched."""
    if value is None or isinstance(value, str):
        return value
    try:
        return to_json(value)
    except Exception:  # logging never raises
        return repr(value)


class EventLog:
    """Buffered, batched writer of the three log tables."""

    def __init__(
        self,
        db: Database,
        redactor: Redactor,
        *,
        flush_interval: float = 0.1,
        batch_rows: int = 5000,
        max_pending: int = 500_000,
    ) -> None:
        self._db = db
        self._redactor = redactor
        self._flush_interval = flush_interval
        self._batch_rows = batch_rows
        self._max_pending = max_pending
        self._ids = IdGenerator()
        self._events: list[EventRow] = []
        self._actions: list[ActionRow] = []
        self._tools: list[ToolRow] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = WriterStats()
        self.tap: RowTap | None = None  # set by tracing.start_tracing when it is on

    # ---- the public, never-raising API -------------------------------------------------

    def new_id(self) -> int:
        return self._ids.next()

    def log_event(
        self,
        source: str,
        source_id: str | None = None,
        *,
        summary: str = "",
        content: object = None,
        caused_by: int | None = None,
    ) -> int:
        """Record something that happened; returns its id at once."""
        event_id = self._ids.next()
        try:
            row = (event_id, source, source_id, caused_by, summary, _stored(content))
            self._events.append(row)
            self._note_pending()
            if self.tap is not None:
                self.tap.take("event", row, time.time_ns())
        except Exception as exc:  # pragma: no cover - only on memory exhaustion
            log.debug("event not buffered: %s", exc)
        return event_id

    def log_action(
        self,
        triggered_by: int | None,
        action_type: str,
        *,
        target: str | None = None,
        content: object = None,
        ok: bool = True,
        error: str | None = None,
        action_id: int | None = None,
    ) -> int:
        """Record something the assistant did; returns its id at once."""
        if action_id is None:
            action_id = self._ids.next()
        try:
            row = (action_id, triggered_by, action_type, target, _stored(content), ok, error)
            self._actions.append(row)
            self._note_pending()
            if self.tap is not None:
                self.tap.take("action", row, time.time_ns())
        except Exception as exc:  # pragma: no cover
            log.debug("action not buffered: %s", exc)
        return action_id

    def log_tool_call(
        self,
        action_id: int | None,
        tool_name: str,
        *,
        input: object = None,
        output: object = None,
        duration_ms: float = 0.0,
        ok: bool = True,
        error: str | None = None,
    ) -> int:
        call_id = self._ids.next()
        try:
            tool_row = (
                call_id,
                action_id,
                tool_name,
                _stored(input),
                _stored(output),
                duration_ms,
                ok,
                error,
            )
            self._tools.append(tool_row)
            self._note_pending()
            if self.tap is not None:
                self.tap.take("tool", tool_row, time.time_ns())
        except Exception as exc:  # pragma: no cover
            log.debug("tool call not buffered: %s", exc)
        return call_id

    def action(
        self, triggered_by: int | None, action_type: str, *, target: str | None = None
    ) -> ActionScope:
        """Scope an action: its id is known at once, its row (ok or not) is written at exit."""
        return ActionScope(self, triggered_by, action_type, target)

    def tool_call(
        self, tool_name: str, input: object = None, *, action_id: int | None = None
    ) -> ToolCallScope:
        """Trace a tool call as `async with` or as a decorator of an async function."""
        return ToolCallScope(self, tool_name, input, action_id)

    # ---- the writer --------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._actions) + len(self._tools)

    def lag_s(self, now_ms: int) -> float:
        """Age of the oldest event waiting to be written (0 when none waits): writer lag.

        Events are queued as they are logged, under a time-ordered id, so the first one
        waiting tells how far behind the writer is; actions and tool calls are queued when
        they end and would count their own duration.
        """
        if not self._events:
            return 0.0
        return max(0.0, (now_ms - time_of(self._events[0][0])) / 1000)

    def _note_pending(self) -> None:
        if self.pending >= self._batch_rows:
            self._wake.set()

    async def start(self) -> None:
        """Continue ids after the largest stored one, then start the writer task."""
        for table in ("event_log", "action_log", "tool_call_log"):
            largest = await self._db.scalar(f"SELECT max(id) FROM {table}")
            self._ids.bump(int(largest or 0))
        self._task = asyncio.create_task(self._run(), name="event-writer")

    async def _run(self) -> None:
        backoff = self._flush_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see RunMonitor._loop
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            ok = await self.flush()
            backoff = self._flush_interval if ok else min(backoff * 2, 5.0)

    async def flush(self) -> bool:
        """Write everything buffered now; False if the database refused (rows kept)."""
        while self.pending:
            events = self._events[: self._batch_rows]
            room = self._batch_rows - len(events)
            actions = self._actions[:room]
            room -= len(actions)
            tools = self._tools[:room]
            # Slice off before awaiting, so rows logged meanwhile wait for the next batch.
            del self._events[: len(events)]
            del self._actions[: len(actions)]
            del self._tools[: len(tools)]
            started = time.perf_counter()
            try:
                dropped = await self._db.run_sync(
                    _write_batch, events, actions, tools, self._redactor
                )
            except Exception as exc:
                self.stats.failures += 1
                self.stats.last_error = valid_text(f"{type(exc).__name__}: {exc}")
                self._requeue(events, actions, tools)
                log.debug("event writer failed, will retry: %s", exc)
                return False
            for reason in dropped:
                log.warning("event log: a row could not be written and was dropped: %s", reason)
            if dropped:
                self.stats.dropped += len(dropped)
                self.stats.last_drop = dropped[-1]
            self.stats.written += len(events) + len(actions) + len(tools) - len(dropped)
            self.stats.last_flush_ms = (time.perf_counter() - started) * 1000
        return True

    def _requeue(
        self, events: list[EventRow], actions: list[ActionRow], tools: list[ToolRow]
    ) -> None:
        self._events[:0] = events
        self._actions[:0] = actions
        self._tools[:0] = tools
        excess = self.pending - self._max_pending
        if excess > 0:  # the database is down and memory is not endless: drop the oldest
            for rows in (self._tools, self._actions, self._events):
                cut = min(excess, len(rows))
                del rows[:cut]
                excess -= cut
                self.stats.dropped += cut
            self.stats.last_drop = (
                f"the database refused writes ({self.stats.last_error}) and more than"
                f" {self._max_pending:,} rows were waiting: the oldest were dropped"
            )

    async def aclose(self) -> None:
        """Stop the writer and flush what is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for _ in range(3):
            if await self.flush():
                return
            await asyncio.sleep(0.1)
        log.warning("event log: %d rows could not be written at shutdown", self.pending)


def _write_batch(
    conn: sqlite3.Connection,
    events: list[EventRow],
    actions: list[ActionRow],
    tools: list[ToolRow],
    clean: Redactor,
) -> list[str]:
    """Write one batch; returns why each row that could not be written was dropped.

    The whole batch goes in one transaction. If that fails because of a row (text that
    cannot be encoded, a value of the wrong type, a duplicate id) rather than because the
    database refused (full, locked, read-only: `_refused`), the batch is written again
    row by row, each in a savepoint: the bad row alone is dropped and the rest committed,
    so one row can never hold up every row queued after it. Runs on the database thread.
    """
    try:
        prepared = [_prepare(kind, row, clean) for kind, row in _rows(events, actions, tools)]
        _commit(conn, prepared)
        return []
    except Exception as exc:
        if _refused(exc):
            raise
    dropped: list[str] = []
    written: list[_Prepared] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for kind, row in _rows(events, actions, tools):
            try:
                one = _prepare(kind, row, clean)
                conn.execute("SAVEPOINT event_row")
                try:
                    conn.execute(one.sql, one.values)
                except BaseException:
                    conn.execute("ROLLBACK TO event_row")
                    raise
                finally:
                    conn.execute("RELEASE event_row")
            except Exception as exc:
                if _refused(exc):
                    raise
                dropped.append(_drop_reason(kind, row, exc))
                continue
            written.append(one)
        _insert_stats(conn, written)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return dropped


@dataclass(frozen=True)
class _Prepared:
    """One row as stored (redacted, cut), with the per-hour count it adds to."""

    sql: str
    values: tuple[object, ...]
    stats_key: tuple[str, str, str]
    ok: bool


def _rows(
    events: list[EventRow], actions: list[ActionRow], tools: list[ToolRow]
) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        *(("event", row) for row in events),
        *(("action", row) for row in actions),
        *(("tool", row) for row in tools),
    ]


def _prepare(kind: str, row: tuple[Any, ...], clean: Redactor) -> _Prepared:
    if kind == "event":
        event_id, source, source_id, caused_by, summary, raw = row
        ts = iso_from_ms(time_of(event_id))
        values: tuple[object, ...] = (
            event_id,
            ts,
            source,
            source_id,
            caused_by,
            clean.clean(summary) or "",
            clean.clean(raw),
        )
        return _Prepared(_EVENT_SQL, values, (ts[:13], "event", source), True)
    if kind == "action":
        action_id, triggered_by, action_type, target, content, ok, error = row
        ts = iso_from_ms(time_of(action_id))
        values = (
            action_id,
            ts,
            triggered_by,
            action_type,
            clean.clean(target),
            clean.clean(content),
            ok,
            clean.clean(error),
        )
        return _Prepared(_ACTION_SQL, values, (ts[:13], "action", action_type), bool(ok))
    call_id, parent, name, input, output, duration_ms, ok, error = row
    ts = iso_from_ms(time_of(call_id))
    values = (
        call_id,
        ts,
        parent,
        name,
        clean.clean(input),
        clean.clean(output),
        duration_ms,
        ok,
        clean.clean(error),
    )
    return _Prepared(_TOOL_SQL, values, (ts[:13], "tool", name), bool(ok))


def _commit(conn: sqlite3.Connection, prepared: list[_Prepared]) -> None:
    """One transaction: rows, then the per-hour counts."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in (_EVENT_SQL, _ACTION_SQL, _TOOL_SQL):
            conn.executemany(sql, [p.values for p in prepared if p.sql == sql])
        _insert_stats(conn, prepared)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _insert_stats(conn: sqlite3.Connection, written: list[_Prepared]) -> None:
    stats: Counter[tuple[str, str, str]] = Counter(p.stats_key for p in written)
    failed: Counter[tuple[str, str, str]] = Counter(p.stats_key for p in written if not p.ok)
    conn.executemany(_STATS_SQL, [(*key, n, failed[key]) for key, n in stats.items()])


def _refused(exc: BaseException) -> bool:
    """The database itself refused (full, locked, read-only, broken): keep the rows, retry.

    Anything else (an encoding error, a constraint, a wrong type) is the row's own fault.
    """
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or (
        type(exc) is sqlite3.DatabaseError
    )


def _drop_reason(kind: str, row: tuple[Any, ...], exc: Exception) -> str:
    """A short, valid description of a dropped row (the row's own text may be invalid)."""
    what = {
        "event": f"event from {row[1]}",
        "action": f"action {row[2]}",
        "tool": f"tool call {row[2]}",
    }
    reason = f"{what[kind]}: {type(exc).__name__}: {exc}"
    return valid_text(reason)[:_REASON_CHARS]


class ActionScope:
    """`async with log.action(...) as act:`; tool calls inside attach to `act.id`."""

    def __init__(
        self, log_: EventLog, triggered_by: int | None, action_type: str, target: str | None
    ) -> None:
        self._log = log_
        self.id = log_.new_id()
        self.triggered_by = triggered_by
        self.action_type = action_type
        self.target = target
        self.content: object = None
        self.error: str | None = None
        self._token: Any = None
        self._log_token: Any = None

    def fail(self, error: str) -> None:
        """Mark the action failed without raising (e.g. a refused request)."""
        self.error = error

    def __enter__(self) -> ActionScope:
        self._token = current_action.set(self.id)
        self._log_token = log_context.enter(self.triggered_by, self.id)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log_context.leave(self._log_token)
        current_action.reset(self._token)
        if exc is not None and self.error is None:
            self.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        self._log.log_action(
            self.triggered_by,
            self.action_type,
            target=self.target,
            content=self.content,
            ok=self.error is None,
            error=self.error,
            action_id=self.id,
        )

    async def __aenter__(self) -> ActionScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class ToolCallScope:
    """Records input, output, duration and ok/failed of one tool call; never swallows errors."""

    def __init__(
        self, log_: EventLog, tool_name: str, input: object, action_id: int | None
    ) -> None:
        self._log = log_
        self.tool_name = tool_name
        self.input = input
        self.action_id = action_id
        self.output: object = None
        self._started = 0.0
        self._log_token: Any = None

    async def __aenter__(self) -> ToolCallScope:
        if self.action_id is None:
            self.action_id = current_action.get()
        self._log_token = log_context.enter(None, self.action_id)
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration_ms = (time.perf_counter() - self._started) * 1000
        log_context.leave(self._log_token)
        error = None if exc is None else (str(exc) or type(exc).__name__)
        self._log.log_tool_call(
            self.action_id,
            self.tool_name,
            input=self.input,
            output=self.output,
            duration_ms=duration_ms,
            ok=exc is None,
            error=error,
        )

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorator form: each call is traced, its arguments as input, its result as output."""
        log_, name = self._log, self.tool_name

        @functools.wraps(fn)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            call_input = {"args": list(args), "kwargs": kwargs} if kwargs else list(args)
            async with ToolCallScope(log_, name, call_input, None) as scope:
                result = await fn(*args, **kwargs)
                scope.output = result
                return result

        return traced


class HasEventLog(Protocol):
    @property
    def event_log(self) -> EventLog: ...


def traced(
    tool_name: str,
) -> Callable[
    [Callable[Concatenate[S, P], Awaitable[R]]], Callable[Concatenate[S, P], Awaitable[R]]
]:
    """Trace an operation (a method of an object with an `event_log`) as a tool call.

    Operations are what commands and the model's tools share, so tracing them here records
    every call whichever path made it, inside whatever action is current.
    """

    def decorate(
        method: Callable[Concatenate[S, P], Awaitable[R]],
    ) -> Callable[Concatenate[S, P], Awaitable[R]]:
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            call_input = {"args": list(args), **kwargs} if kwargs else list(args)
            async with self.event_log.tool_call(tool_name, call_input) as call:
                result = await method(self, *args, **kwargs)
                call.output = result
                return result

        functools.update_wrapper(wrapper, method)
        return wrapper

    return decorate
