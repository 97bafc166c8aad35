"""The model's tools: each one is a chat command's typed handler, called with the tool's JSON.

A tool names the command form it stands for (`/run stop`) and the handler that form runs
after parsing (`commands.runs.stop`); its input is validated by the same argument model
the command parses into (`assistant/operations/`), whose JSON Schema is what the model is
shown. No command text is built or parsed again: a value can only ever be that value.
String inputs are masked like a chat's text first. Results go back to the model redacted
like the event log, and cut to `RESULT_LIMIT`.

What the model may run is read from the commands' registry entries (`Guard`), by the form
a tool stands for: no tool runs or schedules a people-only command (/chat), and a
destructive command, run directly or scheduled through add_task, needs `confirmed=true`
(the user's yes) first. Where the chat's platform draws buttons, a direct destructive call
(stop a run, delete a task) also puts a Yes / No choice in the chat: the user's press is
the yes, checked for rights when pressed, and runs the command itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from anthropic.types import ToolParam

from assistant.errors import CommandError, Refused
from assistant.operations.arguments import Arguments, Id, json_schema
from assistant.operations.runs import (
    LaunchTraining,
    RecipeQuery,
    RunLogs,
    RunRef,
)
from assistant.operations.tasks import AddTask, TaskRef
from assistant.operations.watches import AddWatch, WatchRef
from assistant.redaction import Redactor, truncate
from assistant.reply import Action, Reply
from commands import build_router, debug, runs, status, tasks, watch
from commands.registry import Bound, CommandContext, CommandRouter, CommandRules, TypedHandler

RESULT_LIMIT = 8 * 1024

# A handler bound to its validated arguments: what `Invoke` runs with a fresh context.
Call = Callable[[CommandContext], Awaitable[str | Reply]]


# offer(chat_id, reply with actions, caused_by) -> shown as buttons? (False where the
# chat's platform has none: the model then asks in words)
Offer = Callable[[str, Reply, "int | None"], Awaitable[bool]]


class Invoke(Protocol):
    """Runs a typed handler as the command `command` would run (the orchestrator's
    `invoke`): a context for this chat, sender and event, the command's metrics.

    :raises CommandError, Refused: as the handler does.
    """

    def __call__(
        self, chat_id: str, sender: str, event_id: int | None, command: str, call: Call
    ) -> Awaitable[Reply]: ...


class ToolError(Exception):
    """A tool call that did not do its job; the message goes back to the model."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class ToolResult:
    """What a tool sends back to the model, and the command form that produced it."""

    text: str
    command: str | None


class DebugTarget(Arguments):
    id: Id | None = None


class DebugEvent(Arguments):
    id: Id


_CONFIRMED: dict[str, object] = {
    "type": "boolean",
    "description": "true only if the user explicitly asked for this or confirmed it",
}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[Arguments]  # the operation's argument model: validates, gives the schema
    handler: TypedHandler  # the typed handler the command form runs after parsing
    command: tuple[str, str]  # (command, form) it stands for: that entry's Guards apply
    # the argument a guard's confirmation names ("stop run {0} for good")
    subject: str | None = None
    confirmable: bool = False  # takes `confirmed`: what it runs may be destructive
    # the argument that holds a command (or prompt) to schedule: checked like a direct call
    schedules: str | None = None

    @property
    def form(self) -> str:
        """The command form, as the chain records it (`/run stop`)."""
        return f"/{self.command[0]} {self.command[1]}".strip()

    @property
    def properties(self) -> dict[str, object]:
        """The input's properties as the model is shown them (`confirmed` where it asks)."""
        properties: dict[str, object] = dict(json_schema(self.arguments).get("properties", {}))
        if self.confirmable:
            properties["confirmed"] = _CONFIRMED
        return properties

    def param(self) -> ToolParam:
        properties = self.properties
        required = list(json_schema(self.arguments).get("required", []))
        if self.confirmable and self.subject is not None:  # a direct destructive call
            required.append("confirmed")
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        }


def _none(handler: Callable[[CommandContext], Awaitable[str]]) -> TypedHandler:
    return lambda ctx, _: handler(ctx)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "status",
            "The dashboard (/status): uptime, chats, queue, active runs with step, loss, ETA"
            " and GPU memory, GPUs, tasks, model.",
            Arguments,
            _none(status.dashboard),
            ("status", ""),
        ),
        Tool(
            "list_runs",
            "Active runs, then recent ones, with id, recipe, state, step, key metric (/runs).",
            Arguments,
            runs.runs_list,
            ("runs", ""),
        ),
        Tool(
            "show_run",
            "One run in detail: params, resources, metrics, checkpoint, exit code, state history.",
            RunRef,
            runs.show,
            ("run", "show"),
        ),
        Tool(
            "run_logs",
            "The last lines of a run's output (default 20).",
            RunLogs,
            runs.logs,
            ("run", "logs"),
        ),
        Tool(
            "list_recipes",
            "Training recipes, or one recipe's parameters with types, defaults and bounds.",
            RecipeQuery,
            runs.recipes,
            ("run", "recipes"),
        ),
        Tool(
            "launch_training",
            "Start a training run of a recipe (/run train). params: recipe parameters by name"
            " (list_recipes shows them); gpus: GPUs it needs (it queues until they are free)."
            " Uses GPUs and time: launch only what the user asked for.",
            LaunchTraining,
            runs.train,
            ("run", "train"),
        ),
        Tool(
            "stop_run",
            "Stop a run for good (it checkpoints first). Destructive: does nothing unless"
            " confirmed is true.",
            RunRef,
            runs.stop,
            ("run", "stop"),
            subject="run_id",
            confirmable=True,
        ),
        Tool(
            "pause_run",
            "Checkpoint a run and free its GPUs; resume_run continues it.",
            RunRef,
            runs.pause,
            ("run", "pause"),
            subject="run_id",
        ),
        Tool(
            "resume_run",
            "Relaunch a paused run from its checkpoint.",
            RunRef,
            runs.resume,
            ("run", "resume"),
            subject="run_id",
        ),
        Tool(
            "retry_run",
            "Start the same spec as a fresh run (uses GPUs).",
            RunRef,
            runs.retry,
            ("run", "retry"),
            subject="run_id",
        ),
        Tool(
            "list_tasks",
            "Scheduled tasks with schedule, next and last run, and id.",
            Arguments,
            tasks.listing,
            ("task", "list"),
        ),
        Tool(
            "add_task",
            "Schedule a built-in command (like /status) or a prompt for you to answer later."
            " kind cron: schedule is a cron expression like '0 2 * * *'; every: a duration"
            " like 2h or 1h30m (10s..3650d); once: an ISO time or +duration like +30m."
            " Scheduling a destructive command (stopping a run, deleting a task) does"
            " nothing unless confirmed is true. It runs with the rights this chat has then.",
            AddTask,
            tasks.add,
            ("task", "add"),
            confirmable=True,
            schedules="what",
        ),
        Tool(
            "pause_task",
            "Pause a task.",
            TaskRef,
            tasks.pause,
            ("task", "pause"),
            subject="task_id",
        ),
        Tool(
            "resume_task",
            "Resume a paused task.",
            TaskRef,
            tasks.resume,
            ("task", "resume"),
            subject="task_id",
        ),
        Tool(
            "delete_task",
            "Delete a task and its run history. Destructive: does nothing unless confirmed is"
            " true.",
            TaskRef,
            tasks.delete,
            ("task", "delete"),
            subject="task_id",
            confirmable=True,
        ),
        Tool(
            "run_task",
            "Run a task now, outside its schedule; its reply follows in the chat.",
            TaskRef,
            tasks.run_now,
            ("task", "run"),
            subject="task_id",
        ),
        Tool(
            "watch_job",
            "Follow a job launched outside the assistant (/watch): kind container (name or"
            " id), pid (a process on this host; log: the file it writes, when its stdout is"
            " not one) or slurm (job id); pattern: a declared recipe whose progress rules read"
            " its output. The chat gets its start, its end and a report; the job is not"
            " changed.",
            AddWatch,
            watch.add,
            ("watch", ""),
        ),
        Tool(
            "list_watches",
            "Watched jobs (/watches): active, then recent, with id, state, step and a metric.",
            Arguments,
            watch.listing,
            ("watches", ""),
        ),
        Tool(
            "show_watch",
            "One watched job: state, numbers and its last output lines.",
            WatchRef,
            watch.show,
            ("watch", "show"),
            subject="watch_id",
        ),
        Tool(
            "unwatch_job",
            "Stop following a watched job (/unwatch); the job itself goes on.",
            WatchRef,
            watch.unwatch,
            ("unwatch", ""),
            subject="watch_id",
        ),
        Tool(
            "stop_watched_job",
            "Stop a watched job, which the assistant did not launch (a container or process:"
            " SIGTERM, then SIGKILL if it outlives the grace period; a Slurm job: scancel),"
            " where the admin allows it. The result says which it took."
            " Destructive: does nothing unless confirmed is true.",
            WatchRef,
            watch.stop,
            ("watch", "stop"),
            subject="watch_id",
            confirmable=True,
        ),
        Tool(
            "debug_why",
            "The chain of events and actions behind the last action, or behind an id.",
            DebugTarget,
            lambda ctx, a: debug.why(ctx, (a.id,) if a.id else ()),
            ("debug", "why"),
        ),
        Tool(
            "debug_event",
            "An event and everything it triggered.",
            DebugEvent,
            lambda ctx, a: debug.event(ctx, a.id),
            ("debug", "event"),
        ),
        Tool(
            "debug_run",
            "A run's chain: what asked for it, launch, engine calls, state changes.",
            RunRef,
            lambda ctx, a: debug.run_story(ctx, a.run_id),
            ("debug", "run"),
        ),
    )
}


def tool_params() -> list[ToolParam]:
    """The tools as the Messages API takes them."""
    return [tool.param() for tool in TOOLS.values()]


@dataclass(frozen=True)
class Prepared:
    """A tool call whose input validated: the tool, its typed arguments, the user's yes."""

    tool: Tool
    arguments: Arguments
    confirmed: bool

    @property
    def bound(self) -> Bound:
        """What the call runs: the form's typed handler with these arguments."""
        return Bound(self.tool.handler, self.arguments)


def prepare(name: str, raw_input: object, redact: Redactor | None = None) -> Prepared:
    """A tool call's input, checked by its operation's argument model.

    String values are masked first (`redact`), as a chat's text is before a command runs.

    :raises ToolError: for an unknown tool or an input that does not validate.
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"there is no tool {name!r}")
    if not isinstance(raw_input, dict):
        raise ToolError(f"{name} takes a JSON object, got {type(raw_input).__name__}")
    # a null field is one not given (the model sends both)
    fields = {k: _masked(v, redact) for k, v in raw_input.items() if v is not None}
    confirmed = fields.pop("confirmed", None) if tool.confirmable else None
    if confirmed is not None and not isinstance(confirmed, bool):
        raise ToolError(f"confirmed must be true or false, got {confirmed!r}")
    try:
        arguments = tool.arguments.read(fields, who=name)
    except CommandError as exc:
        raise ToolError(str(exc)) from None
    return Prepared(tool, arguments, bool(confirmed))


def _masked(value: object, redact: Redactor | None) -> object:
    if redact is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _masked(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, redact) for v in value]
    return value


class AgentTools:
    """Runs the model's tool calls through the commands' typed handlers, for one chat."""

    def __init__(
        self,
        invoke: Invoke,
        redactor: Redactor,
        *,
        limit: int = RESULT_LIMIT,
        router: CommandRouter | None = None,
        offer: Offer | None = None,
    ) -> None:
        self._invoke = invoke
        self._offer = offer
        self._redact = redactor
        self._limit = limit
        self._router = router or build_router()  # whose entries say what needs a yes

    def clean(self, text: str) -> str:
        """What may go to the model: redacted, then cut to the limit."""
        return truncate(self._redact(text), self._limit)

    async def run(
        self,
        name: str,
        raw_input: object,
        *,
        chat_id: str,
        sender: str,
        event_id: int | None,
        unattended: bool = False,
    ) -> ToolResult:
        """The result of one tool call.

        `unattended` is a scheduled prompt's call: no user is there to confirm, and the
        model's own `confirmed=true` is not a user's yes, so what needs one is not done.
        A destructive command on a schedule is scheduled as that command, confirmed when
        it is added.

        :raises ToolError: the input was refused or the command failed (message cleaned).
        """
        try:
            call = prepare(name, raw_input, self._redact)
        except ToolError as exc:
            raise ToolError(self.clean(str(exc))) from None
        tool = call.tool
        unconfirmed = self._needs_yes(call, unattended=unattended)
        if unconfirmed is not None and unattended:
            return ToolResult(
                f"Not done: this would {unconfirmed}, and a scheduled prompt has nobody to"
                " confirm it. Say so in your reply; a person can do it, or schedule the"
                " command itself with /task add.",
                None,
            )
        if unconfirmed is not None:
            if await self._offer_choice(call, unconfirmed, chat_id, event_id):
                return ToolResult(
                    f"Not done yet: this would {unconfirmed}. The user was shown a button to"
                    " confirm it, and pressing it does it: tell them so, and do not call"
                    f" {name} again unless they confirm in words instead.",
                    None,
                )
            return ToolResult(
                f"Not done: this would {unconfirmed}. Ask the user to confirm, then call"
                f" {name} again with confirmed=true.",
                None,
            )
        try:
            reply = await self._invoke(chat_id, sender, event_id, tool.command[0], call.bound)
        except (CommandError, Refused) as exc:
            raise ToolError(self.clean(str(exc)), tool.form) from None
        text = reply.text
        if reply.images:
            text += f"\n({len(reply.images)} image(s) sent to the chat, not shown here)"
        return ToolResult(self.clean(text), tool.form)

    async def _offer_choice(
        self, call: Prepared, unconfirmed: str, chat_id: str, event_id: int | None
    ) -> bool:
        """Put a Yes / No choice for a direct destructive call in the chat, where its
        platform draws buttons; whether it was shown. Yes runs the command as typed."""
        tool = call.tool
        if self._offer is None or tool.subject is None or tool.schedules is not None:
            return False
        subject = str(getattr(call.arguments, tool.subject))
        yes = Action(f"Yes, {unconfirmed}", f"{tool.form} {subject}", "danger")
        choice = Reply(f"Confirm: {unconfirmed}?", actions=(yes, Action("No", "")), choice=True)
        return await self._offer(chat_id, choice, event_id)

    def rules(self, tool: Tool, arguments: Arguments) -> CommandRules:
        """The registry's rules for the command form `tool` stands for, with its subject."""
        name, form = tool.command
        spec = self._router.find(name)
        if spec is None:  # a tool and the registry disagree: refuse, never run
            raise ToolError(f"{tool.name} stands for /{name}, which is not a command")
        subject = getattr(arguments, tool.subject) if tool.subject else ""
        return spec.rules(form, str(subject))

    def _needs_yes(self, call: Prepared, *, unattended: bool = False) -> str | None:
        """What the call would destroy, if the user has not confirmed it; None to go on.

        :raises ToolError: for a command the model may never run or schedule.
        """
        tool = call.tool
        rules = self.rules(tool, call.arguments)
        if rules.people_only is not None:
            raise ToolError(rules.people_only, tool.form)
        confirm = rules.confirm
        if tool.schedules is not None:
            what = str(getattr(call.arguments, tool.schedules))
            scheduled = self._router.rules(what)
            refused = scheduled.people_only or scheduled.unscheduled
            if refused is not None:
                raise ToolError(self.clean(refused), tool.form)
            if scheduled.confirm is not None:
                confirm = f"schedule {what}, which would {scheduled.confirm}"
        if confirm is None or (call.confirmed and not unattended):
            return None
        if not tool.confirmable:  # a registry entry and a tool disagree: refuse, never run
            raise ToolError(f"{tool.name} cannot ask for the confirmation that {tool.form} needs")
        return confirm
