"""The channel interface: how chat platforms plug in.

A channel delivers incoming messages to an `Inbox` and sends what it is given. Only
`send_text` is required; images, edits, buttons and threads have fallbacks that degrade
to text. A button press goes to `Inbox.press`, which decides everything about it (rights
at the moment of the press, whether the button was used already, the chain): the channel
only draws buttons, acknowledges the platform and shows the one-line result.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from assistant.jobs.text import valid_text
from storage.timestamps import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingMessage:
    """A message as a channel received it.

    Every channel builds one of these, so this is where outside text is made valid, once:
    lone surrogates and NUL in the text, sender, chat title and ids become U+FFFD, and
    nothing downstream (storage, the event log, the model, replies) meets them.
    """

    chat_id: str  # namespaced: local:console, tg:123
    sender: str
    text: str
    platform_id: str | None = None  # the platform's message id, for de-duplication
    chat_title: str = ""
    reply_to: str | None = None
    # The thread it was typed in, as the channel's `thread=` takes it (the root: Discord's
    # thread channel, Slack's thread_ts, the message a Telegram reply answers); None at the
    # chat's top level. The answer goes there. The chat stays `chat_id`: a thread of an
    # admin chat is that chat, with its rights, never a chat of its own.
    thread: str | None = None
    # addressed to the assistant: a direct message, a mention, a reply to it, its name.
    # In a group, free text that is not addressed is stored but not answered.
    addressed: bool = True
    received_at: str = field(default_factory=lambda: utc_now().isoformat())

    def __post_init__(self) -> None:
        for name in ("chat_id", "sender", "text", "chat_title"):
            value = getattr(self, name)
            object.__setattr__(self, name, valid_text("" if value is None else str(value)))
        for name in ("platform_id", "reply_to", "thread"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, valid_text(str(value)))


@dataclass(frozen=True)
class Button:
    """A button under a message: its label and the opaque token a press sends back.

    The token is `[A-Za-z0-9_-]{1,32}`, so Telegram's callback_data (64 bytes), Slack's
    action value and Discord's custom_id all carry it as it is.
    """

    label: str
    token: str
    style: Literal["", "primary", "danger"] = ""


@dataclass(frozen=True)
class Press:
    """A button pressed in a chat, as the channel received it; outside text made valid."""

    chat_id: str  # namespaced, as IncomingMessage.chat_id
    sender: str
    token: str
    platform_id: str | None = None  # the press's own id (callback query, action, interaction)
    message_id: str | None = None  # the platform id of the message the button was under
    chat_title: str = ""

    def __post_init__(self) -> None:
        for name in ("chat_id", "sender", "token", "chat_title"):
            object.__setattr__(self, name, valid_text(str(getattr(self, name) or "")))
        for name in ("platform_id", "message_id"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, valid_text(str(value)))


@dataclass(frozen=True)
class PressResult:
    """What came of a press: whether its command ran, and one line for the platform's
    toast or ephemeral answer. The command's own reply follows in the chat."""

    acted: bool
    note: str
    # the press used every button under its message (a choice's Yes / No), so the
    # channel takes them all off; otherwise only the pressed one went
    spent_all: bool = False


# Called once a press is decided, before its command runs: acted ("Stop: on it") or
# refused (the reason). A platform that wants its answer soon (Telegram rejects an
# answerCallbackQuery after about 15 s) answers here, not after a slow command.
Claimed = Callable[[PressResult], Awaitable[None]]


class Inbox(Protocol):
    """What a channel hands messages to (the orchestrator)."""

    async def deliver(self, message: IncomingMessage) -> None: ...

    async def press(self, press: Press, claimed: Claimed | None = None) -> PressResult:
        """A button was pressed: run its command if the chat may, once; never raises.

        `claimed`, where given, is awaited once the press is decided and before the
        command runs (not at all if deciding failed); the result returned comes after
        the command, its note naming the reply's first line."""
        ...

    async def settled(self, chat_id: str) -> None:
        """Return once everything received so far for the chat has been handled."""
        ...


@dataclass(frozen=True)
class MenuEntry:
    """One command as a platform's command menu lists it: `/name` and a line of summary."""

    name: str
    summary: str


class Channel(ABC):
    """Base class: subclasses implement `start` and `send_text`."""

    name: str = "channel"
    prefix: str = ""  # chat id namespace, e.g. "tg"
    # True where edit_text changes a message in place (live run progress uses it)
    supports_edit: bool = False
    # True where send_message draws buttons (else the orchestrator lists the commands)
    supports_buttons: bool = False
    # True where send_message and send_image honour `thread=` (a root message id)
    supports_threads: bool = False
    # True where a message inside a thread can root a thread of its own (Telegram's reply
    # chains); on Slack and Discord a thread opened from inside one is that same thread
    nested_threads: bool = False
    # Incoming items that could not be read and were skipped (see note_skipped)
    skipped: int = 0

    @property
    def is_connected(self) -> bool:
        return False

    @abstractmethod
    async def start(self, inbox: Inbox) -> None:
        """Connect and begin delivering messages; returns once connected."""

    @abstractmethod
    async def send_text(self, chat_id: str, text: str) -> str | None:
        """Send text; returns the platform's message id where there is one."""

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        """Send text with buttons under it, in the thread rooted at message id `thread`.

        Returns the platform id of the (first) message sent. Default: plain `send_text`;
        the orchestrator passes buttons only where `supports_buttons`, and a thread only
        where `supports_threads`.
        """
        return await self.send_text(chat_id, text)

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        return await self.send_text(chat_id, f"{caption}\n[image: {path}]".strip())

    async def edit_text(
        self, chat_id: str, message_id: str, text: str, *, thread: str | None = None
    ) -> str | None:
        """Edit in place where the platform allows; otherwise send anew."""
        return await self.send_text(chat_id, text)

    def note_skipped(self, what: str, reason: str) -> None:
        """Count and log an incoming item that cannot be read; the channel carries on.

        One malformed update, event or frame must never stop the loop that reads the
        ones after it.
        """
        self.skipped += 1
        log.warning("%s: %s could not be read and was skipped (%s)", self.name, what, reason)

    async def set_menu(self, admin_chats: Sequence[str], commands: Sequence[MenuEntry]) -> None:
        """Fill the platform's command menu from the registry, where it has one.

        Admin chats get every command; other chats only what anyone may ask. Rights are
        still checked when a command acts: the menu only saves typing. Default: no menu.
        """
        return None

    def owns(self, chat_id: str) -> bool:
        return chat_id.startswith(self.prefix + ":")

    async def aclose(self) -> None:
        return None
