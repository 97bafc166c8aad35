"""The command registry: `/name args` -> an async handler, the first match wins.

Handlers take an explicit `CommandContext` and the parsed arguments, return the reply, and
raise `CommandError` for input they cannot read (`usage_error` adds the usage) or let a
`Refused` through (one line: no such id, the wrong state); either message is the reply.
Decorator and explicit registration share one path, as in aiogram.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from assistant.channels.base import MenuEntry
from assistant.errors import CommandError, Refused
from assistant.operations.arguments import Arguments
from assistant.operations.caller import Caller
from assistant.operations.runs import RunOperations
from assistant.operations.tasks import TaskOperations
from assistant.reply import Reply
from commands.formatting import bound_lines, shorten

if TYPE_CHECKING:
    from assistant.services import Services

_COMMAND_RE = re.compile(r"^/([A-Za-z][A-Za-z0-9_]*)(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.DOTALL)
# Phones turn quotes into typographic ones; the parser wants the plain kind.
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
# No command has a longer name; a longer one is unknown, and is not echoed back whole.
MAX_NAME = 32


@dataclass(frozen=True)
class ParsedCommand:
    """`/task pause ab12` -> name "task", args ("pause", "ab12")."""

    name: str
    args: tuple[str, ...]
    raw_args: str


@dataclass(frozen=True)
class CommandContext:
    """Who asked, from where, what event it was, and the running services."""

    chat_id: str
    sender: str
    services: Services
    router: CommandRouter  # the commands themselves, for /help and the usage of a refusal
    event_id: int | None = None
    pressed: bool = False  # a button press, not typed: a request never escalates

    @property
    def caller(self) -> Caller:
        return Caller(self.chat_id, self.event_id, self.pressed)

    @cached_property
    def run_ops(self) -> RunOperations:
        """The run operations, over this context's services."""
        s = self.services
        return RunOperations(s.runs, s.settings, s.host)

    @cached_property
    def task_ops(self) -> TaskOperations:
        return TaskOperations(self.services.scheduler)


# A typed handler: what a command form runs once its words are parsed, and what the model's
# tool of the same form runs with its JSON (validated by the same `Arguments` model).
TypedHandler = Callable[[CommandContext, Any], Awaitable["str | Reply"]]


@dataclass(frozen=True)
class Bound:
    """A typed handler with its validated arguments: what a command's words parse to."""

    handler: TypedHandler
    arguments: Arguments

    async def __call__(self, ctx: CommandContext) -> str | Reply:
        return await self.handler(ctx, self.arguments)


class Handler(Protocol):
    def __call__(self, ctx: CommandContext, cmd: ParsedCommand, /) -> Awaitable[str | Reply]: ...


@dataclass(frozen=True)
class Guard:
    """A limit on one form of a command (`form` "*": every form), beyond admin rights.

    Kept on the command's registry entry, so the scheduler and the model's tools read one
    rule: nothing else decides what a task or the model may run.
    """

    form: str  # the subcommand ("stop"), or "*"
    people_only: bool = False  # only a person, in an admin chat: never a task or the model
    scheduled: bool = True  # False: a task may not run it (the model may, directly)
    confirm: str = ""  # destructive: what it does ("{0}" = its argument); the model asks first
    why: str = ""  # the one-line reason a refusal gives


@dataclass(frozen=True)
class CommandRules:
    """What `CommandRouter.rules` says about one command text; None where nothing limits."""

    command: str  # "/run stop", for messages
    people_only: str | None = None  # why only a person may run it
    unscheduled: str | None = None  # why a task may not run it
    confirm: str | None = None  # what it destroys: the model needs the user's yes first


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    usage: str  # one line per form, shown by /help and on a usage error
    summary: str
    # False for read-only introspection (/debug) whose own replies would bury the chain
    traced: bool = True
    # subcommands that only read (/run show): untraced like the above
    quiet: frozenset[str] = frozenset()
    # what limits some forms beyond admin rights: who else may run them, and how
    guards: tuple[Guard, ...] = ()

    def is_traced(self, cmd: ParsedCommand) -> bool:
        return self.traced and not (cmd.args and cmd.args[0].lower() in self.quiet)

    def rules(self, form: str, argument: str) -> CommandRules:
        """The rules for `/name form argument ...` (form and argument may be empty)."""
        command = f"/{self.name} {form}".strip()
        people = scheduled = confirm = None
        for guard in self.guards:
            if guard.form not in ("*", form):
                continue
            if guard.people_only:
                people = people or guard.why
                scheduled = scheduled or guard.why
            if not guard.scheduled:
                scheduled = scheduled or guard.why
            if guard.confirm:
                confirm = confirm or guard.confirm.format(argument or "?")
        return CommandRules(command, people, scheduled, confirm)


@dataclass
class CommandRouter:
    """Holds commands by name; routers compose with `include`."""

    commands: dict[str, CommandSpec] = field(default_factory=dict)

    def register(
        self,
        handler: Handler,
        name: str,
        *,
        usage: str,
        summary: str,
        traced: bool = True,
        quiet: frozenset[str] = frozenset(),
        guards: tuple[Guard, ...] = (),
    ) -> Handler:
        if name in self.commands:
            raise ValueError(f"command /{name} registered twice")
        bounded = _bounded_errors(handler)
        self.commands[name] = CommandSpec(name, bounded, usage, summary, traced, quiet, guards)
        return handler

    def command(
        self,
        name: str,
        *,
        usage: str,
        summary: str,
        traced: bool = True,
        quiet: frozenset[str] = frozenset(),
        guards: tuple[Guard, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            return self.register(
                handler,
                name,
                usage=usage,
                summary=summary,
                traced=traced,
                quiet=quiet,
                guards=guards,
            )

        return decorate

    def include(self, other: CommandRouter) -> None:
        for spec in other.commands.values():
            self.commands.setdefault(spec.name, spec)
            if self.commands[spec.name] is not spec:
                raise ValueError(f"command /{spec.name} registered twice")

    def find(self, name: str) -> CommandSpec | None:
        return self.commands.get(name.lower())

    def menu(self) -> list[MenuEntry]:
        """Every command as the platforms' menus list it (Telegram's `/` menu, Discord's
        slash commands): one registry, so a new command is in every menu."""
        return [MenuEntry(spec.name, spec.summary) for spec in self.commands.values()]

    def rules(self, text: str) -> CommandRules:
        """What limits running `text` other than by a person: nothing for free text or an
        unknown command (which fails on its own). Read even when the quotes do not close."""
        match = _COMMAND_RE.match(text.strip())
        if match is None:
            return CommandRules("")
        spec = self.find(match.group(1))
        if spec is None:
            return CommandRules(f"/{match.group(1).lower()}")
        raw = (match.group(2) or "").translate(_QUOTES).strip()
        try:
            words = shlex.split(raw)
        except ValueError:
            words = raw.split()
        form = words[0].lower() if words else ""
        return spec.rules(form, words[1] if len(words) > 1 else "")


def looks_like_command(text: str) -> bool:
    return _COMMAND_RE.match(text.strip()) is not None


def parse_command(text: str) -> ParsedCommand:
    """Split a slash command into name and shell-like words (quotes group words).

    :raises CommandError: if the text is not a command or its quotes do not close.
    """
    match = _COMMAND_RE.match(text.strip())
    if match is None:
        raise CommandError("a command starts with / and a name, like /status")
    if len(match.group(1)) > MAX_NAME:
        name = shorten(match.group(1), MAX_NAME)
        raise CommandError(f"Unknown command /{name}. /help lists the commands.")
    raw = (match.group(2) or "").translate(_QUOTES).strip()
    try:
        args = tuple(shlex.split(raw))
    except ValueError as exc:
        raise CommandError(f"could not read the arguments: {exc} (close every quote)") from None
    return ParsedCommand(match.group(1).lower(), args, raw)


def _bounded_errors(handler: Handler) -> Handler:
    """`handler`, whose refusals never quote more than a few lines of the user's input back.

    Handlers quote the argument they refuse; a 200 KB argument must not become a 200 KB
    reply (or a reply split into dozens of chat messages). One place for every command.
    """

    async def bounded(ctx: CommandContext, cmd: ParsedCommand, /) -> str | Reply:
        try:
            return await handler(ctx, cmd)
        except (CommandError, Refused) as exc:
            exc.args = (bound_lines(str(exc)),)
            raise

    bounded.__doc__ = handler.__doc__
    bounded.__name__ = getattr(handler, "__name__", "handler")
    return bounded


def usage_error(spec: CommandSpec, problem: str) -> CommandError:
    """A short reply: what was wrong, then how the command is used."""
    return CommandError(f"{problem}\nUsage:\n{spec.usage}")
