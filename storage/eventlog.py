"""Reading the event chain back: /debug's queries.

Each public function takes a `sqlite3.Connection` and runs on the database thread (through
`Database.read_sync`), so a chain walk of many point look-ups costs one thread hop, not one
per row. Every query is an index look-up or a scan of the small `log_stats` table: nothing
here grows with the size of the log.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Literal

from storage.ids import prefix_range
from storage.rows import from_row

RowKind = Literal["event", "action", "tool"]
MAX_HOPS = 100
_TABLES: dict[RowKind, str] = {
    "event": "event_log",
    "action": "action_log",
    "tool": "tool_call_log",
}


@dataclass(frozen=True)
class EventRow:
    id: int
    ts: str
    source: str
    source_id: str | None
    caused_by: int | None
    summary: str
    raw_content: str | None


@dataclass(frozen=True)
class ToolRow:
    id: int
    ts: str
    action_id: int | None
    tool_name: str
    input: str | None
    output: str | None
    duration_ms: float
    ok: bool
    error: str | None


@dataclass(frozen=True)
class ActionRow:
    id: int
    ts: str
    triggered_by: int | None
    action_type: str
    target: str | None
    content: str | None
    ok: bool
    error: str | None
    tools: tuple[ToolRow, ...] = ()


@dataclass(frozen=True)
class Step:
    """One link of a chain: an event and the action on the path that it triggered."""

    event: EventRow | None  # None: the link was pruned or the action had no trigger
    missing_event_id: int | None
    action: ActionRow | None


@dataclass(frozen=True)
class EventTree:
    event: EventRow
    actions: tuple[tuple[ActionRow, tuple[EventTree, ...]], ...]


@dataclass
class Report:
    oldest_ts: str | None
    totals: dict[str, int]
    by_source: list[tuple[str, int]]
    by_action: list[tuple[str, int, int]]
    by_tool: list[tuple[str, int, int]]
    hours: list[tuple[str, int]]  # (UTC hour 'YYYY-MM-DDTHH', events)
    failed_tools: list[ToolRow] = field(default_factory=list)
    failed_actions: list[tuple[ActionRow, EventRow | None]] = field(default_factory=list)


def _event(row: sqlite3.Row | None) -> EventRow | None:
    return None if row is None else from_row(EventRow, row)


def _tool(row: sqlite3.Row) -> ToolRow:
    return from_row(ToolRow, row, ok=bool(row["ok"]))


def _action(conn: sqlite3.Connection, row: sqlite3.Row | None) -> ActionRow | None:
    if row is None:
        return None
    tools = tuple(
        _tool(t)
        for t in conn.execute(
            "SELECT * FROM tool_call_log WHERE action_id = ? ORDER BY id", (row["id"],)
        )
    )
    return from_row(ActionRow, row, ok=bool(row["ok"]), tools=tools)


def get_event(conn: sqlite3.Connection, event_id: int) -> EventRow | None:
    return _event(conn.execute("SELECT * FROM event_log WHERE id = ?", (event_id,)).fetchone())


def get_action(conn: sqlite3.Connection, action_id: int) -> ActionRow | None:
    row = conn.execute("SELECT * FROM action_log WHERE id = ?", (action_id,)).fetchone()
    return _action(conn, row)


def find_ids(
    conn: sqlite3.Connection, prefix: str, kinds: tuple[RowKind, ...], limit: int = 11
) -> list[tuple[RowKind, int]]:
    """Rows of the given kinds whose printed id starts with `prefix` (a range scan)."""
    low, high = prefix_range(prefix)
    found: list[tuple[RowKind, int]] = []
    if low > high:
        return found
    for kind in kinds:
        rows = conn.execute(
            f"SELECT id FROM {_TABLES[kind]} WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (low, high, limit),
        )
        found.extend((kind, row[0]) for row in rows)
    return found[:limit]


def latest_action_id(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT max(id) FROM action_log").fetchone()
    return None if row[0] is None else int(row[0])


def last_actions(conn: sqlite3.Connection, n: int) -> list[tuple[ActionRow, EventRow | None]]:
    """The last `n` actions, newest first, each with the event that triggered it."""
    rows = conn.execute("SELECT * FROM action_log ORDER BY id DESC LIMIT ?", (n,)).fetchall()
    out = []
    for row in rows:
        action = _action(conn, row)
        assert action is not None
        trigger = get_event(conn, action.triggered_by) if action.triggered_by else None
        out.append((action, trigger))
    return out


def chain_to(conn: sqlite3.Connection, action_id: int) -> list[Step]:
    """Walk from an action back to the root event, every hop; returned root first."""
    steps: list[Step] = []
    action = get_action(conn, action_id)
    seen: set[int] = set()
    while action is not None and action.id not in seen and len(steps) < MAX_HOPS:
        seen.add(action.id)
        event = get_event(conn, action.triggered_by) if action.triggered_by else None
        missing = action.triggered_by if event is None else None
        steps.append(Step(event, missing, action))
        if event is None or event.caused_by is None:
            break
        parent = get_action(conn, event.caused_by)
        if parent is None:  # the cause was pruned: show the event, say the rest is gone
            steps.append(Step(None, event.caused_by, None))
            break
        action = parent
    steps.reverse()
    return steps


def chain_to_event(conn: sqlite3.Connection, event_id: int) -> list[Step]:
    """The chain that led to an event, ending with the event itself."""
    event = get_event(conn, event_id)
    if event is None:
        return []
    steps = chain_to(conn, event.caused_by) if event.caused_by else []
    return [*steps, Step(event, None, None)]


def event_tree(
    conn: sqlite3.Connection, event_id: int, depth: int = 4, budget: list[int] | None = None
) -> EventTree | None:
    """An event, the actions it triggered and the events those caused, bounded in size."""
    budget = budget if budget is not None else [60]
    event = get_event(conn, event_id)
    if event is None:
        return None
    branches = []
    for row in conn.execute(
        "SELECT * FROM action_log WHERE triggered_by = ? ORDER BY id LIMIT 50", (event_id,)
    ).fetchall():
        if budget[0] <= 0:
            break
        budget[0] -= 1
        action = _action(conn, row)
        assert action is not None
        children: list[EventTree] = []
        if depth > 0:
            for child in conn.execute(
                "SELECT id FROM event_log WHERE caused_by = ? ORDER BY id LIMIT 20", (action.id,)
            ).fetchall():
                sub = event_tree(conn, child[0], depth - 1, budget)
                if sub is not None:
                    children.append(sub)
        branches.append((action, tuple(children)))
    return EventTree(event, tuple(branches))


def report(conn: sqlite3.Connection, since_hour: str | None) -> Report:
    """The /debug report: counts from `log_stats`, failures from partial indexes."""
    where = "WHERE hour >= ?" if since_hour else ""
    params: tuple[str, ...] = (since_hour,) if since_hour else ()

    def grouped(kind: str) -> list[sqlite3.Row]:
        clause = f"{where} AND kind = ?" if where else "WHERE kind = ?"
        return conn.execute(
            f"SELECT key, sum(n) AS n, sum(failed) AS failed FROM log_stats {clause}"
            " GROUP BY key ORDER BY n DESC",
            (*params, kind),
        ).fetchall()

    sources = grouped("event")
    actions = grouped("action")
    tools = grouped("tool")
    hour_clause = f"{where} AND kind = 'event'" if where else "WHERE kind = 'event'"
    hours = conn.execute(
        f"SELECT hour, sum(n) FROM log_stats {hour_clause} GROUP BY hour", params
    ).fetchall()
    oldest = conn.execute("SELECT ts FROM event_log ORDER BY id LIMIT 1").fetchone()
    failed_tools = [
        _tool(r)
        for r in conn.execute("SELECT * FROM tool_call_log WHERE ok = 0 ORDER BY id DESC LIMIT 10")
    ]
    failed_actions = []
    for row in conn.execute(
        "SELECT * FROM action_log WHERE ok = 0 ORDER BY id DESC LIMIT 10"
    ).fetchall():
        action = _action(conn, row)
        assert action is not None
        trigger = get_event(conn, action.triggered_by) if action.triggered_by else None
        failed_actions.append((action, trigger))
    return Report(
        oldest_ts=oldest[0] if oldest else None,
        totals={
            "events": sum(r["n"] for r in sources),
            "actions": sum(r["n"] for r in actions),
            "tool calls": sum(r["n"] for r in tools),
        },
        by_source=[(r["key"], r["n"]) for r in sources],
        by_action=[(r["key"], r["n"], r["failed"]) for r in actions],
        by_tool=[(r["key"], r["n"], r["failed"]) for r in tools],
        hours=[(r[0], r[1]) for r in hours],
        failed_tools=failed_tools,
        failed_actions=failed_actions,
    )


@dataclass(frozen=True)
class Launch:
    """One launch of a run (a resume launches again): what asked for it, then the run's
    event and its `run_launched` action, engine tool calls included."""

    cause: list[Step]
    launch: Step


@dataclass(frozen=True)
class RunStory:
    launches: list[Launch]  # the first, then the latest; a waiting one last, not launched
    launches_left_out: int  # later launches between those shown
    events: list[EventTree]  # the run's other events, oldest first; without their launches
    events_total: int
    events_left_out_at: int  # where in `events` the left-out ones were
    events_left_out: int


def _launch_events(conn: sqlite3.Connection, run_id: str) -> list[tuple[int, sqlite3.Row]]:
    """The run's events that triggered a `run_launched` action, with that action's row."""
    rows = conn.execute(
        "SELECT e.id AS event_id, e.caused_by, a.* FROM event_log e"
        " JOIN action_log a ON a.triggered_by = e.id AND a.action_type = 'run_launched'"
        " WHERE e.source = 'run' AND e.source_id = ? ORDER BY a.id",
        (run_id,),
    ).fetchall()
    return [(int(r["event_id"]), r) for r in rows]


def _launch(conn: sqlite3.Connection, event_id: int, row: sqlite3.Row) -> Launch | None:
    event = get_event(conn, event_id)
    if event is None:
        return None
    cause = chain_to(conn, event.caused_by) if event.caused_by is not None else []
    return Launch(cause, Step(event, None, _action(conn, row)))


def _ends(items: list[int], head: int, tail: int) -> tuple[list[int], int]:
    """The first `head` and last `tail` items, and how many were left out between."""
    if len(items) <= head + tail:
        return items, 0
    return items[:head] + items[len(items) - tail :], len(items) - head - tail


def run_story(
    conn: sqlite3.Connection,
    run_id: str,
    launch_action: int | None,
    *,
    launches: int = 3,
    head: int = 4,
    tail: int = 10,
    actions_per_event: int = 3,
) -> RunStory:
    """A run's chain in one hop, bounded for a phone: each launch with what asked for it,
    then the run's other events once each, with what each triggered (not what those
    caused: a resume's launch caused the later events, which are listed on their own).

    `launch_action` is the run's column: while it names no launch (the run waits, queued
    or resumed), what asked for the next launch is shown as a launch not yet made."""
    found = _launch_events(conn, run_id)
    launch_ids = {event_id for event_id, _ in found}
    picked, launches_left_out = _ends(list(range(len(found))), 1, launches - 1)
    shown = [_launch(conn, *found[i]) for i in picked]
    story = [launch for launch in shown if launch is not None]
    known = {int(row["id"]) for _, row in found} | {row["caused_by"] for _, row in found}
    if launch_action is not None and launch_action not in known:
        story.append(Launch(chain_to(conn, launch_action), Step(None, None, None)))
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM event_log WHERE source = 'run' AND source_id = ? ORDER BY id",
            (run_id,),
        )
        if row[0] not in launch_ids
    ]
    kept, left_out = _ends(ids, head, tail)
    trees = [event_tree(conn, event_id, 0, [actions_per_event]) for event_id in kept]
    return RunStory(
        launches=story,
        launches_left_out=launches_left_out,
        events=[t for t in trees if t is not None],
        events_total=len(ids),
        events_left_out_at=min(head, len(kept)),
        events_left_out=left_out,
    )
