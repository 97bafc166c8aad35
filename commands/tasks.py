"""/task: schedule a built-in command or a prompt (cron, every, once), and manage tasks.

Replies confirm what happened with the id and the next run, relative and local. Every
wrong input gets a one-line problem plus the usage, a refusal (no such task, the wrong
state) one line; neither changes anything. The forms parse into the typed arguments of a
task operation (`assistant/operations/tasks.py`); the model's tools call the same typed
handlers (`add`, `pause`, ...) with their JSON fields.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from assistant.errors import CommandError
from assistant.operations.arguments import Arguments
from assistant.operations.tasks import AddTask, TaskRef
from assistant.reply import Reply
from assistant.scheduler import SCHEDULE_HINTS, describe_schedule
from commands.formatting import format_local, time_ago, time_until, truncate
from commands.registry import (
    Bound,
    CommandContext,
    CommandRouter,
    Guard,
    ParsedCommand,
    TypedHandler,
    usage_error,
)
from storage.tasks import Task

router = CommandRouter()

USAGE = "\n".join(
    [
        '/task add cron "<expr>" <what> — e.g. /task add cron "0 2 * * *" /status',
        "/task add every <duration> <what> — e.g. /task add every 2h /status (10s..3650d, 1h30m)",
        "/task add once <ISO time or +duration> <what> — e.g. /task add once +30m check the run",
        "/task list — tasks with schedule, next and last run, id",
        "/task pause <id> — stop a task from running until resumed",
        "/task resume <id> — start a paused task again, from now",
        "/task delete <id> — delete a task and its run history",
        "/task run <id> — run a task now, outside its schedule",
    ]
)
WHAT_WIDTH = 50
_GROUPS = (("active", "Active"), ("paused", "Paused"), ("done", "Done"))


GUARDS = (
    # A task that adds tasks, or two that start each other, would multiply without end.
    Guard("add", scheduled=False, why="a task may not add tasks (they could multiply)"),
    Guard("run", scheduled=False, why="a task may not start tasks (two could loop)"),
    Guard("delete", confirm="delete task {0} and its run history"),
)


@router.command(
    "task",
    usage=USAGE,
    summary="schedule commands or prompts: cron, every, once",
    quiet=frozenset({"list"}),
    guards=GUARDS,
)
async def task_command(ctx: CommandContext, cmd: ParsedCommand) -> str | Reply:
    try:
        return await parse(cmd)(ctx)
    except CommandError as exc:
        raise usage_error(router.commands["task"], str(exc)) from None


def parse(cmd: ParsedCommand) -> Bound:
    """`/task <form> <words>` -> the typed handler of that form and its arguments.

    :raises CommandError: the words do not make a request (the reply adds the usage).
    """
    if not cmd.args:
        raise CommandError("say what to do with tasks")
    sub, rest = cmd.args[0].lower(), cmd.args[1:]
    if sub == "add":
        return Bound(add, _parse_add(cmd.raw_args))
    if sub == "list":
        if rest:
            raise CommandError("/task list takes no arguments")
        return Bound(listing, Arguments())
    if sub in _BY_ID:
        if not rest:
            raise CommandError(f"missing the task id: /task {sub} <id>; /task list shows ids")
        if len(rest) > 1:
            raise CommandError(f"/task {sub} takes one id, got {len(rest)} words")
        return Bound(_BY_ID[sub], TaskRef.read({"task_id": rest[0].lower()}))
    raise CommandError(f"unknown subcommand {cmd.args[0]!r}")


def _parse_add(raw_args: str) -> AddTask:
    words, what = _split_head(raw_args, 3)
    if len(words) < 2:
        raise CommandError("missing the kind: cron, every or once")
    kind = words[1].lower()
    if kind not in ("cron", "every", "once"):
        raise CommandError(f"unknown kind {words[1]!r}; use cron, every or once")
    if len(words) < 3:
        raise CommandError(f"missing {SCHEDULE_HINTS[kind]}")
    if kind == "cron" and len(words[2].split()) == 1:
        raise CommandError(
            'put the cron expression in quotes, e.g. /task add cron "0 2 * * *" /status'
        )
    if not what:
        raise CommandError("missing what the task should do: a command like /status, or text")
    return AddTask.read({"kind": kind, "schedule": words[2], "what": what})


# ---- the typed handlers: commands and the model's tools call these -------------------------


async def add(ctx: CommandContext, args: AddTask) -> str:
    s = ctx.services
    task = await ctx.task_ops.add(ctx.caller, args)
    zone = s.settings.zone
    return (
        f"Task {task.id} scheduled: {truncate(task.what, WHAT_WIDTH)} —"
        f" {describe_schedule(task, zone)}. {_next_run(task, s.clock.now(), zone)}"
    )


async def listing(ctx: CommandContext, _: Arguments) -> str:
    s = ctx.services
    return format_task_list(await ctx.task_ops.listing(), s.clock.now(), s.settings.zone)


async def pause(ctx: CommandContext, ref: TaskRef) -> str:
    task = await ctx.task_ops.pause(ctx.caller, ref)
    return (
        f"Task {task.id} paused ({truncate(task.what, WHAT_WIDTH)})."
        f" /task resume {task.id} starts it again."
    )


async def resume(ctx: CommandContext, ref: TaskRef) -> str:
    s = ctx.services
    task = await ctx.task_ops.resume(ctx.caller, ref)
    return (
        f"Task {task.id} resumed ({truncate(task.what, WHAT_WIDTH)})."
        f" {_next_run(task, s.clock.now(), s.settings.zone)}"
    )


async def delete(ctx: CommandContext, ref: TaskRef) -> str:
    task = await ctx.task_ops.delete(ctx.caller, ref)
    return f"Task {task.id} deleted ({truncate(task.what, WHAT_WIDTH)}), with its run history."


async def run_now(ctx: CommandContext, ref: TaskRef) -> str:
    task = await ctx.task_ops.run_now(ctx.caller, ref)
    return f"Running task {task.id} now ({truncate(task.what, WHAT_WIDTH)}); its reply follows."


# the forms that take one task id
_BY_ID: dict[str, TypedHandler] = {
    "pause": pause,
    "resume": resume,
    "delete": delete,
    "run": run_now,
}


def _next_run(task: Task, now: datetime, zone: ZoneInfo) -> str:
    moment = task.next_run
    if moment is None:
        return "It has no next run."
    return f"Next run {time_until(moment, now)} ({format_local(moment, zone)})."


def _split_head(raw: str, count: int) -> tuple[list[str], str]:
    """The first `count` shell-like words, and the rest of the text as typed.

    The rest is the task's `what`: kept verbatim (its own quotes included), unless it is
    one quoted string, which is unwrapped.
    """
    stream = io.StringIO(raw)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    try:
        while len(words) < count:
            word = lexer.get_token()
            if word is None or word == lexer.eof:
                return words, ""
            words.append(word)
    except ValueError as exc:
        raise CommandError(f"could not read the arguments: {exc} (close every quote)") from None
    rest = stream.read().strip()
    try:
        parts = shlex.split(rest)
    except ValueError:
        return words, rest
    return words, parts[0] if len(parts) == 1 else rest


def format_task_list(tasks: Sequence[Task], now: datetime, zone: ZoneInfo) -> str:
    """Tasks grouped Active, Paused, Done: what, schedule, next or last run, id."""
    if not tasks:
        return "No tasks. Add one: /task add every 1h /status"
    lines: list[str] = []
    for status, title in _GROUPS:
        group = [task for task in tasks if task.status == status]
        if not group:
            continue
        lines.append(f"{title} ({len(group)})")
        for task in group:
            lines.append(f"• {truncate(task.what, WHAT_WIDTH)} — {describe_schedule(task, zone)}")
            lines.append("  " + " | ".join(_task_facts(task, now, zone)))
    return "\n".join(lines)


def _task_facts(task: Task, now: datetime, zone: ZoneInfo) -> list[str]:
    facts = []
    if task.status == "active" and task.next_run is not None:
        facts.append(
            f"Next: {time_until(task.next_run, now)} ({format_local(task.next_run, zone)})"
        )
    last = task.last_run
    if last is None and task.last_outcome is None:
        facts.append("Last: never")
    else:
        outcome = task.last_outcome or "?"
        if task.last_outcome in ("failed", "refused") and task.last_error:
            outcome += f": {truncate(task.last_error, 60)}"
        when = time_ago(last, now) if last is not None else "not run"
        facts.append(f"Last: {when}, {outcome}")
    facts.append(f"ID: {task.id}")
    return facts
