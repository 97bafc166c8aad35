"""The model's tools: typed inputs turned into the chat command that does the same thing.

Every tool builds the text of a built-in command and runs it through the orchestrator's
`execute_command`, so a tool and a command share one implementation, one validation and
one reply. Inputs are checked here first (ids, keys, types, bounds) and every value is
shell-quoted, so no input can add words to the command it builds. Results go back to the
model redacted like the event log, and cut to `RESULT_LIMIT`.

What the model may run is read from the commands' registry entries (`Guard`): no tool
runs or schedules a people-only command (/chat), and a destructive command, run directly
or scheduled through add_task, needs `confirmed=true` (the user's yes) first.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from anthropic.types import ToolParam

from assistant.errors import CommandError
from assistant.jobs.recipes import RECIPES
from assistant.recipes.rules import RECIPE_NAME
from assistant.redaction import Redactor, truncate
from assistant.reply import Reply
from commands import build_router
from commands.registry import CommandRouter

# run_command(chat_id, sender, text, event_id) -> (reply, error or None)
RunCommand = Callable[[str, str, str, int | None], Awaitable[tuple[Reply, str | None]]]

RESULT_LIMIT = 8 * 1024
ID_RE = re.compile(r"^[0-9a-z]{1,13}$")
KEY_RE = re.compile(r"^[a-z_]{1,40}$")
MAX_TEXT = 2000
# parse_command turns typographic quotes into plain ones before splitting; doing it to a
# value first keeps a quoted value one word after that translation.
_TYPOGRAPHIC = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})


class ToolError(Exception):
    """A tool call that did not do its job; the message goes back to the model."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class ToolResult:
    """What a tool sends back to the model, and the command that produced it."""

    text: str
    command: str | None


def quote(value: str) -> str:
    """One shell word that `parse_command` reads back as `value`."""
    return shlex.quote(value.translate(_TYPOGRAPHIC))


class Args:
    """A tool's input, read with typed getters that raise `ToolError` naming the problem."""

    def __init__(self, tool: str, raw: object, accepted: Mapping[str, object]) -> None:
        if not isinstance(raw, dict):
            raise ToolError(f"{tool} takes a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(accepted))
        if unknown:
            names = ", ".join(accepted) or "no arguments"
            raise ToolError(f"{tool} does not take {', '.join(unknown)} (it takes {names})")
        self._tool = tool
        self._raw: dict[str, object] = raw

    def _get(self, name: str, required: bool) -> object:
        value = self._raw.get(name)
        if value is None and required:
            raise ToolError(f"{self._tool} needs {name}")
        return value

    def id(self, name: str, *, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or not ID_RE.match(value):
            raise ToolError(
                f"{name}={value!r} is not an id: 1 to 13 lower-case letters and digits"
                " (as /runs, /task list or /debug show them)"
            )
        return value

    def need_id(self, name: str) -> str:
        value = self.id(name)
        assert value is not None
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ToolError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        return value

    def text(self, name: str, *, limit: int = MAX_TEXT) -> str:
        value = self._get(name, True)
        if not isinstance(value, str) or not value.strip():
            raise ToolError(f"{name} must be non-empty text")
        if len(value) > limit:
            raise ToolError(f"{name} is longer than {limit} characters")
        return value.strip()

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if value not in choices:
            raise ToolError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def recipe(self, name: str, *, required: bool = True) -> str | None:
        """A recipe name; whether it exists is for the command to say, with the list."""
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or not RECIPE_NAME.fullmatch(value):
            raise ToolError(f"{name} must be a recipe name like gpt, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ToolError(f"{name} must be true or false, got {value!r}")
        return value

    def assignments(self, name: str) -> list[str]:
        """`key=value` words of an object of parameters, keys checked, values quoted."""
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, dict):
            raise ToolError(f"{name} must be an object of parameter names to values")
        words = []
        for key, raw in value.items():
            if not isinstance(key, str) or not KEY_RE.match(key):
                raise ToolError(f"{key!r} is not a parameter name (lower-case letters and _)")
            words.append(f"{key}={quote(_scalar(key, raw))}")
        return words


def _scalar(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and value and len(value) <= 200:
        return value
    raise ToolError(f"{key}: a value is a number, true/false, or short text; got {value!r}")


# ---- the tools ---------------------------------------------------------------------------

Build = Callable[[Args], str]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    properties: Mapping[str, object]
    required: tuple[str, ...]
    build: Build  # typed input -> the chat command's text
    # the input that holds a command (or prompt) to schedule: checked like a direct call
    schedules: str | None = None

    @property
    def confirmable(self) -> bool:
        """Takes `confirmed`: what it runs (or schedules) may be destructive."""
        return "confirmed" in self.properties

    def param(self) -> ToolParam:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": {
                "type": "object",
                "properties": dict(self.properties),
                "required": list(self.required),
                "additionalProperties": False,
            },
        }


_ID: dict[str, object] = {
    "type": "string",
    "pattern": ID_RE.pattern,
    "description": "an id as listed (a unique prefix is enough)",
}
_CONFIRMED: dict[str, object] = {
    "type": "boolean",
    "description": "true only if the user explicitly asked for this or confirmed it",
}
_RECIPE: dict[str, object] = {
    "type": "string",
    "pattern": f"^{RECIPE_NAME.pattern}$",
    "description": f"a recipe: built-in {', '.join(sorted(RECIPES))}, or one the admin"
    " declared (list_recipes shows them all)",
}


def _run_sub(sub: str) -> Build:
    return lambda a: f"/run {sub} {quote(a.need_id('run_id'))}"


def _task_sub(sub: str) -> Build:
    return lambda a: f"/task {sub} {quote(a.need_id('task_id'))}"


def _logs(a: Args) -> str:
    lines = a.integer("lines", 1, 200)
    tail = f" {lines}" if lines is not None else ""
    return f"/run logs {quote(a.need_id('run_id'))}{tail}"


def _train(a: Args) -> str:
    recipe = a.recipe("recipe")
    assert recipe is not None
    words = [quote(recipe), *a.assignments("params")]
    gpus = a.integer("gpus", 0, 64)
    if gpus is not None:
        if any(w.startswith("gpus=") for w in words):
            raise ToolError("give gpus once: as the gpus argument or in params, not both")
        words.append(f"gpus={gpus}")
    return "/run train " + " ".join(words)


def _recipes(a: Args) -> str:
    recipe = a.recipe("recipe", required=False)
    return "/run recipes" + (f" {quote(recipe)}" if recipe else "")


def _add_task(a: Args) -> str:
    kind = a.choice("kind", ("cron", "every", "once"))
    assert kind is not None
    schedule, what = a.text("schedule", limit=100), a.text("what")
    return f"/task add {kind} {quote(schedule)} {quote(what)}"


def _why(a: Args) -> str:
    target = a.id("id", required=False)
    return "/debug why" + (f" {quote(target)}" if target else "")


_RUN_ID: dict[str, object] = {"run_id": _ID}
_TASK_ID: dict[str, object] = {"task_id": _ID}

TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "status",
            "The dashboard (/status): uptime, chats, queue, active runs with step, loss, ETA"
            " and GPU memory, GPUs, tasks, model.",
            {},
            (),
            lambda a: "/status",
        ),
        Tool(
            "list_runs",
            "Active runs, then recent ones, with id, recipe, state, step, key metric (/runs).",
            {},
            (),
            lambda a: "/runs",
        ),
        Tool(
            "show_run",
            "One run in detail: params, resources, metrics, checkpoint, exit code, state history.",
            _RUN_ID,
            ("run_id",),
            _run_sub("show"),
        ),
        Tool(
            "run_logs",
            "The last lines of a run's output (default 20).",
            {**_RUN_ID, "lines": {"type": "integer", "minimum": 1, "maximum": 200}},
            ("run_id",),
            _logs,
        ),
        Tool(
            "list_recipes",
            "Training recipes, or one recipe's parameters with types, defaults and bounds.",
            {"recipe": _RECIPE},
            (),
            _recipes,
        ),
        Tool(
            "launch_training",
            "Start a training run of a recipe (/run train). params: recipe parameters by name"
            " (list_recipes shows them); gpus: GPUs it needs (it queues until they are free)."
            " Uses GPUs and time: launch only what the user asked for.",
            {
                "recipe": _RECIPE,
                "params": {
                    "type": "object",
                    "propertyNames": {"pattern": KEY_RE.pattern},
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
                "gpus": {"type": "integer", "minimum": 0, "maximum": 64},
            },
            ("recipe",),
            _train,
        ),
        Tool(
            "stop_run",
            "Stop a run for good (it checkpoints first). Destructive: does nothing unless"
            " confirmed is true.",
            {**_RUN_ID, "confirmed": _CONFIRMED},
            ("run_id", "confirmed"),
            _run_sub("stop"),
        ),
        Tool(
            "pause_run",
            "Checkpoint a run and free its GPUs; resume_run continues it.",
            _RUN_ID,
            ("run_id",),
            _run_sub("pause"),
        ),
        Tool(
            "resume_run",
            "Relaunch a paused run from its checkpoint.",
            _RUN_ID,
            ("run_id",),
            _run_sub("resume"),
        ),
        Tool(
            "retry_run",
            "Start the same spec as a fresh run (uses GPUs).",
            _RUN_ID,
            ("run_id",),
            _run_sub("retry"),
        ),
        Tool(
            "list_tasks",
            "Scheduled tasks with schedule, next and last run, and id.",
            {},
            (),
            lambda a: "/task list",
        ),
        Tool(
            "add_task",
            "Schedule a built-in command (like /status) or a prompt for you to answer later."
            " kind cron: schedule is a cron expression like '0 2 * * *'; every: a duration"
            " like 2h or 1h30m (10s..3650d); once: an ISO time or +duration like +30m."
            " Scheduling a destructive command (stopping a run, deleting a task) does"
            " nothing unless confirmed is true. It runs with the rights this chat has then.",
            {
                "kind": {"type": "string", "enum": ["cron", "every", "once"]},
                "schedule": {"type": "string", "maxLength": 100},
                "what": {"type": "string", "maxLength": MAX_TEXT},
                "confirmed": _CONFIRMED,
            },
            ("kind", "schedule", "what"),
            _add_task,
            schedules="what",
        ),
        Tool("pause_task", "Pause a task.", _TASK_ID, ("task_id",), _task_sub("pause")),
        Tool("resume_task", "Resume a paused task.", _TASK_ID, ("task_id",), _task_sub("resume")),
        Tool(
            "delete_task",
            "Delete a task and its run history. Destructive: does nothing unless confirmed is"
            " true.",
            {**_TASK_ID, "confirmed": _CONFIRMED},
            ("task_id", "confirmed"),
            _task_sub("delete"),
        ),
        Tool(
            "run_task",
            "Run a task now, outside its schedule; its reply follows in the chat.",
            _TASK_ID,
            ("task_id",),
            _task_sub("run"),
        ),
        Tool(
            "debug_why",
            "The chain of events and actions behind the last action, or behind an id.",
            {"id": _ID},
            (),
            _why,
        ),
        Tool(
            "debug_event",
            "An event and everything it triggered.",
            {"id": _ID},
            ("id",),
            lambda a: f"/debug event {quote(a.need_id('id'))}",
        ),
        Tool(
            "debug_run",
            "A run's chain: what asked for it, launch, engine calls, state changes.",
            _RUN_ID,
            ("run_id",),
            lambda a: f"/debug run {quote(a.need_id('run_id'))}",
        ),
    )
}


def tool_params() -> list[ToolParam]:
    """The tools as the Messages API takes them."""
    return [tool.param() for tool in TOOLS.values()]


def command_for(name: str, raw_input: object) -> str:
    """The command text a tool call stands for.

    :raises ToolError: for an unknown tool or an input that does not validate.
    """
    return _prepare(name, raw_input)[2]


def _prepare(name: str, raw_input: object) -> tuple[Tool, Args, str]:
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"there is no tool {name!r}")
    args = Args(name, raw_input, tool.properties)
    command = tool.build(args)
    if tool.confirmable:
        args.flag("confirmed")  # checked now, read in AgentTools.run
    return tool, args, command


class AgentTools:
    """Runs the model's tool calls as chat commands, for one chat and sender."""

    def __init__(
        self,
        run_command: RunCommand,
        redactor: Redactor,
        *,
        limit: int = RESULT_LIMIT,
        router: CommandRouter | None = None,
    ) -> None:
        self._run = run_command
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
            tool, args, command = _prepare(name, raw_input)
        except ToolError as exc:
            raise ToolError(self.clean(str(exc))) from None
        unconfirmed = self._needs_yes(tool, args, command, unattended=unattended)
        if unconfirmed is not None and unattended:
            return ToolResult(
                f"Not done: this would {unconfirmed}, and a scheduled prompt has nobody to"
                " confirm it. Say so in your reply; a person can do it, or schedule the"
                " command itself with /task add.",
                None,
            )
        if unconfirmed is not None:
            return ToolResult(
                f"Not done: this would {unconfirmed}. Ask the user to confirm, then call"
                f" {name} again with confirmed=true.",
                None,
            )
        try:
            reply, error = await self._run(chat_id, sender, command, event_id)
        except CommandError as exc:
            raise ToolError(self.clean(str(exc)), command) from None
        text = reply.text
        if reply.images:
            text += f"\n({len(reply.images)} image(s) sent to the chat, not shown here)"
        if error is not None:
            raise ToolError(self.clean(text), command)
        return ToolResult(self.clean(text), command)

    def _needs_yes(
        self, tool: Tool, args: Args, command: str, *, unattended: bool = False
    ) -> str | None:
        """What the call would destroy, if the user has not confirmed it; None to go on.

        :raises ToolError: for a command the model may never run or schedule.
        """
        rules = self._router.rules(command)
        if rules.people_only is not None:
            raise ToolError(rules.people_only, command)
        confirm = rules.confirm
        if tool.schedules is not None:
            what = args.text(tool.schedules)
            scheduled = self._router.rules(what)
            refused = scheduled.people_only or scheduled.unscheduled
            if refused is not None:
                raise ToolError(self.clean(refused), command)
            if scheduled.confirm is not None:
                confirm = f"schedule {what}, which would {scheduled.confirm}"
        if confirm is None or (args.flag("confirmed") and not unattended):
            return None
        if not tool.confirmable:  # a registry entry and a tool disagree: refuse, never run
            raise ToolError(f"{tool.name} cannot ask for the confirmation that {command} needs")
        return confirm
