"""/watch, /unwatch and /watches: follow jobs the assistant did not launch.

Each form parses its words into the typed arguments of a watch operation
(`assistant/operations/watches.py`) and renders what it returns; the typed handlers
below (`add`, `unwatch`, `stop`, ...) are what a model's tool would call with its JSON.
"""

from __future__ import annotations

from datetime import datetime

from assistant.errors import CommandError
from assistant.operations.arguments import Arguments
from assistant.operations.watches import AddWatch, WatchOperations, WatchRef
from assistant.runs.report import number
from assistant.watch.report import numbers_lines, what
from commands.formatting import time_ago
from commands.registry import (
    Bound,
    CommandContext,
    CommandRouter,
    Guard,
    ParsedCommand,
    usage_error,
)
from storage.timestamps import from_iso
from storage.watches import WatchRecord

router = CommandRouter()

USAGE = "\n".join(
    [
        "/watch container <name or id> [pattern=<recipe>] — follow a container started elsewhere",
        "/watch pid <pid> [log=<path>] [pattern=<recipe>] — follow a process on this host"
        " (its output: log= or its stdout when that is a file)",
        "/watch slurm <job id> [pattern=<recipe>] — follow a Slurm job (its StdOut file)",
        "/watch show <id> — state, numbers and its last output lines",
        "/watch stop <id> — stop the watched job (only where ASSISTANT_WATCH_ALLOW_STOP=true)",
        "/watch or /watches — the watches; /unwatch <id> stops following (the job goes on)",
        "pattern= names a declared recipe whose progress regexes read the output; report"
        " lines (assistant/jobs/reporting.py) are always read",
    ]
)
KINDS = ("container", "pid", "slurm")


def ops(ctx: CommandContext) -> WatchOperations:
    s = ctx.services
    return WatchOperations(s.watches, s.settings, s.runs.catalog)


@router.command(
    "watch",
    usage=USAGE,
    summary="follow a job launched elsewhere (container, pid, Slurm)",
    quiet=frozenset({"show", "list"}),
    guards=(Guard("stop", confirm="stop watched job {0}, which the assistant did not launch"),),
)
async def watch_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    try:
        return str(await parse(cmd)(ctx))
    except CommandError as exc:
        raise usage_error(router.commands["watch"], str(exc)) from None


@router.command(
    "unwatch",
    usage="/unwatch <id> — stop following a watched job (the job itself goes on)",
    summary="stop following a watched job",
)
async def unwatch_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if len(cmd.args) != 1:
        raise usage_error(router.commands["unwatch"], "name one watch: /unwatch <id>")
    try:
        ref = WatchRef.read({"watch_id": cmd.args[0].lower()})
    except CommandError as exc:
        raise usage_error(router.commands["unwatch"], str(exc)) from None
    return await unwatch(ctx, ref)


@router.command(
    "watches",
    usage="/watches — watched jobs: active, then recent",
    summary="list watched jobs",
    traced=False,
)
async def watches_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if cmd.args:
        raise usage_error(router.commands["watches"], "/watches takes no arguments.")
    return await listing(ctx, Arguments())


def parse(cmd: ParsedCommand) -> Bound:
    """`/watch <form> <words>` -> the typed handler and its validated arguments.

    :raises CommandError: the words do not make a request.
    """
    if not cmd.args or cmd.args[0].lower() == "list":
        if len(cmd.args) > 1:
            raise CommandError("/watch list takes no arguments")
        return Bound(listing, Arguments())
    sub, rest = cmd.args[0].lower(), list(cmd.args[1:])
    if sub in KINDS:
        if not rest:
            raise CommandError(f"say which: /watch {sub} <{_what_target(sub)}>")
        fields: dict[str, object] = {"kind": sub, "target": rest[0]}
        for word in rest[1:]:
            key, sep, value = word.partition("=")
            key = key.lower()
            if not sep or key not in ("pattern", "log"):
                raise CommandError(f"{word[:80]!r}: options are pattern=<recipe> and log=<path>")
            if key in fields:
                raise CommandError(f"{key} is given twice")
            fields[key] = value.lower() if key == "pattern" else value
        return Bound(add, AddWatch.read(fields))
    if sub in ("show", "stop"):
        if len(rest) != 1:
            raise CommandError(f"name one watch: /watch {sub} <id>; /watches shows ids")
        return Bound(show if sub == "show" else stop, WatchRef.read({"watch_id": rest[0].lower()}))
    raise CommandError(f"unknown form {cmd.args[0][:40]!r}: container, pid, slurm, show, stop")


def _what_target(kind: str) -> str:
    return {"container": "name or id", "pid": "pid", "slurm": "job id"}[kind]


# ---- the typed handlers ----------------------------------------------------------------


async def add(ctx: CommandContext, args: AddWatch) -> str:
    added = await ops(ctx).add(ctx.caller, args)
    watch = added.watch
    state = {"pending": "not started yet", "running": "running"}.get(watch.state, watch.state)
    lines = [f"Watch {watch.id}: {what(watch)} · {state}."]
    if watch.log_path:
        lines.append(f"Output: {watch.log_path}")
    if watch.pattern:
        lines.append(f"Progress read with recipe {watch.pattern}'s patterns and report lines.")
    if added.note:
        lines.append(f"Note: {added.note}")
    lines.append(
        f"You get a message when it starts and ends (with a report); /watch show {watch.id}"
        f" shows it now; /unwatch {watch.id} stops following."
    )
    return "\n".join(lines)


async def unwatch(ctx: CommandContext, ref: WatchRef) -> str:
    watch = await ops(ctx).remove(ctx.caller, ref)
    return f"Watch {watch.id}: no longer following {what(watch)}; the job itself goes on."


async def stop(ctx: CommandContext, ref: WatchRef) -> str:
    watch, said = await ops(ctx).stop(ctx.caller, ref)
    return f"Watch {watch.id}: {said}; its end is reported when the watch sees it."


async def listing(ctx: CommandContext, _: Arguments) -> str:
    active, recent = await ops(ctx).listing()
    if not active and not recent:
        return "No watches. Follow a job: /watch container <name>, /watch pid <pid>."
    now = ctx.services.clock.now()
    lines = []
    if active:
        lines.append("Watching:")
        lines.extend(_line(w, now) for w in active)
    if recent:
        lines.append("Recent:")
        lines.extend(_line(w, now) for w in recent)
    return "\n".join(lines)


def _line(watch: WatchRecord, now: datetime) -> str:
    parts = [f"{watch.id} {what(watch)}", watch.state]
    if watch.state == "ended" and watch.status:
        parts[-1] = f"ended: {watch.status}"
    if watch.step is not None:
        parts.append(f"step {watch.step}" + (f"/{watch.total}" if watch.total else ""))
    for name in ("loss", *sorted(watch.metrics)):
        if name in watch.metrics:
            parts.append(f"{name} {number(watch.metrics[name])}")
            break
    parts.append(time_ago(from_iso(watch.created_at), now))
    return "  " + " · ".join(parts)


async def show(ctx: CommandContext, ref: WatchRef) -> str:
    watch, tail = await ops(ctx).show(ref)
    zone = ctx.services.settings.zone

    def local(ts: str | None) -> str:
        return from_iso(ts).astimezone(zone).strftime("%m-%d %H:%M:%S") if ts else "-"

    lines = [
        f"Watch {watch.id} · {what(watch)} · {watch.state}"
        + (f": {watch.status}" if watch.status else ""),
        f"Added {local(watch.created_at)} · started {local(watch.started_at)}"
        f" · ended {local(watch.ended_at)}",
    ]
    if watch.log_path:
        lines.append(f"Output: {watch.log_path}")
    if watch.pattern:
        lines.append(f"Pattern: recipe {watch.pattern}")
    lines.extend(numbers_lines(watch))
    lines.append(
        f"Output lines read: {watch.lines:,}"
        + (f", cut or left out: {watch.skipped}" if watch.skipped else "")
    )
    problem = ctx.services.watches.stats.problems.get(watch.id) if ctx.services.watches else None
    if problem:
        lines.append(f"Problem: {problem}")
    if tail:
        lines.append("Last output lines:")
        lines.extend(f"  {line[:200]}" for line in tail)
    lines.append(f"/debug watch {watch.id} shows its chain.")
    return "\n".join(lines)
