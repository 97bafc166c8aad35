"""/debug: the event chain, read back. `why` walks every hop to the root.

Not traced itself (`traced=False`): its own replies would otherwise become the "last
thing that happened" that the next /debug why explains.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from assistant.errors import AmbiguousIdError, NotFoundError
from commands.formatting import truncate
from commands.registry import CommandContext, CommandRouter, ParsedCommand, usage_error
from storage import eventlog
from storage.eventlog import ActionRow, EventRow, EventTree, Launch, RowKind, Step, ToolRow
from storage.ids import encode, is_prefix
from storage.timestamps import from_iso

router = CommandRouter()

USAGE = "\n".join(
    [
        "/debug last [n] — the last n actions (default 10, at most 50) and their triggers",
        "/debug why [id] — the whole chain behind the last action (or the action/event id)",
        "/debug event <id> — an event and everything it triggered",
        "/debug report — counts, busiest hours, recent failures",
        "/debug run <id> — a run's chain: what asked for it, launch, engine calls, states",
        "/debug watch <id> — a watched job's chain: what added it, each change, the report",
    ]
)
MIN_PREFIX = 4
CAUSE_HOPS = 3  # of a launch's cause, the hops nearest to it; /debug why shows them all


@router.command("debug", usage=USAGE, summary="trace what happened and why", traced=False)
async def debug_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    spec = ctx.router.commands["debug"]
    if not cmd.args:
        raise usage_error(spec, "Say what to show.")
    sub, rest = cmd.args[0].lower(), cmd.args[1:]
    if sub == "last":
        return await _last(ctx, rest)
    if sub == "why":
        return await why(ctx, rest)
    if sub == "event":
        if len(rest) != 1:
            raise usage_error(spec, "/debug event needs one id.")
        return await event(ctx, rest[0])
    if sub == "report" and not rest:
        return await _report(ctx)
    if sub == "run":
        if len(rest) != 1:
            raise usage_error(spec, "/debug run needs one run id.")
        return await run_story(ctx, rest[0])
    if sub == "watch":
        if len(rest) != 1:
            raise usage_error(spec, "/debug watch needs one watch id.")
        return await watch_story(ctx, rest[0])
    raise usage_error(spec, f"Unknown /debug view {sub!r}.")


# ---- ids -----------------------------------------------------------------------------


def show_id(value: int | None) -> str:
    return "-" if value is None else encode(value)


async def resolve(
    ctx: CommandContext, text: str, *kind_groups: tuple[RowKind, ...]
) -> tuple[RowKind, int]:
    """An unambiguous id prefix -> (kind, id). Groups are tried in order: the first group
    with any match decides, so `/debug event` prefers events over same-moment actions.

    :raises CommandError: for a malformed prefix, none found, or several (listed).
    """
    prefix = text.strip().lower()
    spec = ctx.router.commands["debug"]
    if not is_prefix(prefix) or len(prefix) < MIN_PREFIX:
        raise usage_error(
            spec, f"{text!r} is not an id: give at least {MIN_PREFIX} characters of one."
        )
    found: list[tuple[RowKind, int]] = []
    for kinds in kind_groups:
        found = await ctx.services.db.read_sync(eventlog.find_ids, prefix, kinds)
        if found:
            break
    if not found:
        names = " or ".join(k for kinds in kind_groups for k in kinds)
        raise NotFoundError(f"No {names} id starts with {prefix!r} (it may have been pruned).")
    if len(found) > 1:
        raise AmbiguousIdError(prefix, [f"{kind} {encode(i)}" for kind, i in found])
    return found[0]


# ---- formatting ----------------------------------------------------------------------


def _time(ts: str, zone: ZoneInfo, now: datetime) -> str:
    moment = from_iso(ts).astimezone(zone)
    if now - moment < timedelta(hours=20):
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _ok(ok: bool, error: str | None) -> str:
    return "ok" if ok else f"FAILED: {error or 'no error recorded'}"


def _clip(text: str | None, n: int = 120) -> str:
    return truncate(text, n) if text else ""


def _tool_line(tool: ToolRow, indent: str) -> str:
    return f"{indent}tool {tool.tool_name} · {tool.duration_ms:.1f} ms · {_ok(tool.ok, tool.error)}"


def _action_lines(action: ActionRow, zone: ZoneInfo, now: datetime, indent: str) -> list[str]:
    target = f" → {action.target}" if action.target else ""
    lines = [
        f"{indent}action {action.action_type}{target} · {_time(action.ts, zone, now)}"
        f" · {_ok(action.ok, action.error)} · id {show_id(action.id)}"
    ]
    if action.content:
        lines.append(f"{indent}  {_clip(action.content)}")
    lines.extend(_tool_line(t, indent + "  ") for t in action.tools)
    return lines


def _event_line(event: EventRow, zone: ZoneInfo, now: datetime, indent: str) -> str:
    return (
        f"{indent}event {event.source} · {_time(event.ts, zone, now)} · {_clip(event.summary, 100)}"
        f" · id {show_id(event.id)}"
    )


def _chain_lines(steps: list[Step], zone: ZoneInfo, now: datetime) -> list[str]:
    lines = []
    for depth, step in enumerate(steps, start=1):
        if step.event is not None:
            lines.append(_event_line(step.event, zone, now, f"{depth}. "))
        elif step.missing_event_id is not None:
            lines.append(f"{depth}. (earlier link {show_id(step.missing_event_id)} was pruned)")
        if step.action is not None:
            lines.extend(_action_lines(step.action, zone, now, "   "))
    return lines


# ---- views ---------------------------------------------------------------------------


async def _last(ctx: CommandContext, rest: tuple[str, ...]) -> str:
    spec = ctx.router.commands["debug"]
    if len(rest) > 1 or (rest and not rest[0].isdigit()):
        raise usage_error(spec, "/debug last takes one number, like /debug last 5.")
    n = int(rest[0]) if rest else 10
    if not 1 <= n <= 50:
        raise usage_error(spec, f"/debug last takes 1 to 50, not {n}.")
    rows = await ctx.services.db.read_sync(eventlog.last_actions, n)
    if not rows:
        return "No actions recorded yet."
    zone, now = ctx.services.settings.zone, ctx.services.clock.now()
    lines = [f"Last {len(rows)} action(s), newest first:"]
    for action, trigger in rows:
        lines.extend(_action_lines(action, zone, now, "• "))
        if trigger is not None:
            lines.append(_event_line(trigger, zone, now, "  ← "))
    return "\n".join(lines)


async def why(ctx: CommandContext, rest: tuple[str, ...]) -> str:
    spec = ctx.router.commands["debug"]
    db = ctx.services.db
    if len(rest) > 1:
        raise usage_error(spec, "/debug why takes at most one id.")
    if rest:
        kind, row_id = await resolve(ctx, rest[0], ("action", "event", "tool"))
        if kind == "tool":
            tool_action = await db.scalar(
                "SELECT action_id FROM tool_call_log WHERE id = ?", (row_id,)
            )
            if tool_action is None:
                raise NotFoundError("That tool call belongs to no recorded action.")
            kind, row_id = "action", int(tool_action)
    else:
        latest = await db.read_sync(eventlog.latest_action_id)
        if latest is None:
            return "Nothing has happened yet: no actions are recorded."
        kind, row_id = "action", latest
    if kind == "event":
        steps = await db.read_sync(eventlog.chain_to_event, row_id)
    else:
        steps = await db.read_sync(eventlog.chain_to, row_id)
    if not steps:
        raise NotFoundError(f"{kind} {show_id(row_id)} is no longer stored.")
    zone, now = ctx.services.settings.zone, ctx.services.clock.now()
    target = steps[-1]
    head = (
        f"Why {target.action.action_type} ({_ok(target.action.ok, target.action.error)}):"
        if target.action is not None
        else "Why this event happened:"
    )
    hops = sum(1 for s in steps if s.event is not None)
    lines = [head, f"Chain from the root, {hops} event(s):", *_chain_lines(steps, zone, now)]
    lines.extend(await _earlier_siblings(ctx, target))
    return "\n".join(lines)


async def _earlier_siblings(ctx: CommandContext, target: Step) -> list[str]:
    """What the target's event triggered before it (e.g. the model calls behind a reply)."""
    if target.event is None or target.action is None:
        return []
    tree = await ctx.services.db.read_sync(eventlog.event_tree, target.event.id, 0)
    before = [a for a, _ in tree.actions if a.id < target.action.id] if tree else []
    if not before:
        return []
    zone, now = ctx.services.settings.zone, ctx.services.clock.now()
    lines = [f"Before it, event {show_id(target.event.id)} triggered:"]
    for action in before:
        lines.extend(_action_lines(action, zone, now, "   "))
    return lines


def _tree_lines(tree: EventTree, zone: ZoneInfo, now: datetime, indent: str) -> list[str]:
    lines = [_event_line(tree.event, zone, now, indent)]
    if tree.event.raw_content and indent == "":
        lines.append(f"  content: {_clip(tree.event.raw_content, 300)}")
    for action, children in tree.actions:
        lines.extend(_action_lines(action, zone, now, indent + "  "))
        for child in children:
            lines.extend(_tree_lines(child, zone, now, indent + "    "))
    return lines


async def event(ctx: CommandContext, text: str) -> str:
    db = ctx.services.db
    kind, row_id = await resolve(ctx, text, ("event",), ("action",))
    if kind == "action":
        action = await db.read_sync(eventlog.get_action, row_id)
        if action is None or action.triggered_by is None:
            raise NotFoundError(f"{show_id(row_id)} is an action with no triggering event.")
        row_id = action.triggered_by
    tree = await db.read_sync(eventlog.event_tree, row_id)
    if tree is None:
        raise NotFoundError(f"Event {show_id(row_id)} is no longer stored.")
    zone, now = ctx.services.settings.zone, ctx.services.clock.now()
    lines = _tree_lines(tree, zone, now, "")
    if tree.event.caused_by is not None:
        cause, own = show_id(tree.event.caused_by), show_id(tree.event.id)
        lines.append(f"caused by action {cause} (/debug why {own})")
    if not tree.actions:
        lines.append("  (it triggered no action)")
    return "\n".join(lines)


async def _report(ctx: CommandContext) -> str:
    s = ctx.services
    days = s.settings.event_log_retention_days
    now = s.clock.now()
    since = None
    if days > 0:
        since = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H")
    data = await s.db.read_sync(eventlog.report, since)
    zone = s.settings.zone
    retention = f"{days:g} day(s)" if days > 0 else "forever (EVENT_LOG_RETENTION_DAYS=0)"
    oldest = f", oldest row {_time(data.oldest_ts, zone, now)}" if data.oldest_ts else ""
    lines = [
        "Event log report",
        f"Retention: {retention}{oldest}",
        "Rows: " + ", ".join(f"{n:,} {name}" for name, n in data.totals.items()),
        "Events by source: " + (", ".join(f"{k} {n:,}" for k, n in data.by_source) or "none"),
        "Actions by type: "
        + (
            ", ".join(f"{k} {n:,}" + (f" ({f} failed)" if f else "") for k, n, f in data.by_action)
            or "none"
        ),
        "Tool calls: "
        + (
            ", ".join(f"{k} {n:,}" + (f" ({f} failed)" if f else "") for k, n, f in data.by_tool)
            or "none"
        ),
    ]
    local_hours: dict[str, int] = {}
    for hour, n in data.hours:
        label = from_iso(hour + ":00:00Z").astimezone(zone).strftime("%H:00")
        local_hours[label] = local_hours.get(label, 0) + n
    busiest = sorted(local_hours.items(), key=lambda kv: -kv[1])[:5]
    lines.append(
        f"Busiest hours ({s.settings.tz}): "
        + (", ".join(f"{h} {n:,}" for h, n in busiest) or "none")
    )
    lines.append(f"Recent failed tool calls ({len(data.failed_tools)}):")
    lines.extend(
        f"  {_time(t.ts, zone, now)} {t.tool_name} · {t.duration_ms:.1f} ms · {_clip(t.error, 100)}"
        for t in data.failed_tools
    )
    lines.append(f"Recent failed actions ({len(data.failed_actions)}):")
    for action, trigger in data.failed_actions:
        cause = f" ← {trigger.source}: {_clip(trigger.summary, 60)}" if trigger else ""
        lines.append(
            f"  {_time(action.ts, zone, now)} {action.action_type} · {_clip(action.error, 100)}"
            f"{cause} · id {show_id(action.id)}"
        )
    writer = s.log.stats
    lines.append(
        f"Writer: {writer.written:,} written since start, {s.log.pending:,} pending,"
        f" {writer.failures} failed flushes, "
        + (
            f"{writer.dropped:,} rows dropped, last: {writer.last_drop}"
            if writer.dropped
            else "no row dropped"
        )
    )
    if s.log.tap is not None:  # traces exported (ASSISTANT_OTLP_ENDPOINT)
        lines.append(s.log.tap.describe())
    monitor_note = s.monitor.health_note()
    if monitor_note is not None:
        lines.append(monitor_note)
    return "\n".join(lines)


async def run_story(ctx: CommandContext, text: str) -> str:
    """Each launch with what asked for it, then the run's other events once each."""
    s = ctx.services
    run = await ctx.run_ops.find(text)
    zone, now = s.settings.zone, s.clock.now()
    story = await s.db.read_sync(eventlog.run_story, run.id, run.launch_action)
    lines = [f"Run {run.id} ({run.recipe}, {run.state})"]
    if story.launches:
        lines.append("How it started:")
    for n, launch in enumerate(story.launches):
        if n == 1 and story.launches_left_out:
            lines.append(f"… {story.launches_left_out} more launch(es) left out")
        if n > 0:
            lines.append("Launched again:" if launch.launch.event else "Asked to launch again:")
        lines.extend(_launch_lines(launch, zone, now))
    lines.append(f"Run events ({story.events_total}):")
    for n, tree in enumerate(story.events):
        if n == story.events_left_out_at and story.events_left_out:
            lines.append(f"  … {story.events_left_out} more event(s) left out")
        lines.extend(_run_event_lines(tree, zone, now))
    return "\n".join(lines)


def _launch_lines(launch: Launch, zone: ZoneInfo, now: datetime) -> list[str]:
    """What asked for a launch (its chain), then the launch with its engine calls."""
    cause = launch.cause[-CAUSE_HOPS:]
    steps = cause + ([launch.launch] if launch.launch.event else [])
    if not steps:
        return ["  (what asked for it is no longer stored)"]
    lines = _chain_lines(steps, zone, now)
    first = cause[0].action if cause else None
    if len(launch.cause) > len(cause) and first is not None:
        earlier = len(launch.cause) - len(cause)
        lines.insert(0, f"({earlier} earlier hop(s): /debug why {show_id(first.id)})")
    return lines


def _run_event_lines(tree: EventTree, zone: ZoneInfo, now: datetime) -> list[str]:
    """A run event on one line, each action it triggered on one more (no content: short)."""
    lines = [_event_line(tree.event, zone, now, "  ")]
    for action, _ in tree.actions:
        target = f" → {action.target}" if action.target else ""
        lines.append(
            f"    action {action.action_type}{target} · {_ok(action.ok, action.error)}"
            f" · id {show_id(action.id)}"
        )
    return lines


async def watch_story(ctx: CommandContext, text: str) -> str:
    """What added the watch (its chain), then each event of the watched job."""
    from commands.watch import ops

    s = ctx.services
    watch = await ops(ctx).find(text.lower())
    zone, now = s.settings.zone, s.clock.now()
    story = await s.watches.repo.story(watch) if s.watches is not None else None
    lines = [f"Watch {watch.id} ({watch.kind} {watch.target}, {watch.state})"]
    if story is None:
        return "\n".join(lines)
    lines.append("How it was added:")
    lines.extend(_chain_lines(story.cause[-CAUSE_HOPS:], zone, now) or ["  (no longer stored)"])
    lines.append(f"Its events ({story.events_total}):")
    for n, tree in enumerate(story.events):
        if n == story.left_out_at and story.left_out:
            lines.append(f"  … {story.left_out} more event(s) left out")
        lines.extend(_run_event_lines(tree, zone, now))
    return "\n".join(lines)
