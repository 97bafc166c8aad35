"""A channel that records what it is sent, and the handle tests use on a running service."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from assistant.channels.base import (
    Button,
    Channel,
    Claimed,
    Inbox,
    IncomingMessage,
    MenuEntry,
    Press,
    PressResult,
)
from assistant.config import Settings
from assistant.orchestrator import Orchestrator


class RecordingChannel(Channel):
    """A real `Channel` that keeps what it is sent; tests type into it with `say`."""

    name = "telegram"
    prefix = "tg"

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.sent: list[tuple[str, str]] = []
        self.images: list[tuple[str, Path]] = []
        self.edits: list[tuple[str, str, str]] = []
        self.fail_with = fail_with
        self._inbox: Inbox | None = None
        self._ids = 0

    @property
    def is_connected(self) -> bool:
        return self._inbox is not None

    async def start(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def send_text(self, chat_id: str, text: str) -> str | None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((chat_id, text))
        return str(len(self.sent))

    supports_edit = True

    async def edit_text(
        self, chat_id: str, message_id: str, text: str, *, thread: str | None = None
    ) -> str | None:
        self.edits.append((chat_id, message_id, text))
        return message_id

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        self.images.append((chat_id, path))
        return str(len(self.images))

    async def wait_for(self, needle: str, timeout: float = 60) -> str:
        """The first message sent so far or within `timeout` s that contains `needle`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for _, text in self.sent:
                if needle in text:
                    return text
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no message with {needle!r}; sent: {self.sent[-5:]}")
            await asyncio.sleep(0.1)

    async def say(self, chat_id: str, text: str, sender: str = "ann") -> list[str]:
        """Deliver a message, wait until it is handled, return the replies to that chat."""
        assert self._inbox is not None
        before = len(self.sent)
        self._ids += 1
        await self._inbox.deliver(
            IncomingMessage(chat_id, sender, text, platform_id=str(self._ids))
        )
        await self._inbox.settled(chat_id)
        return [t for c, t in self.sent[before:] if c == chat_id]


@dataclass
class RecordingInbox:
    """An inbox that keeps what it is handed and answers presses as told."""

    messages: list[IncomingMessage] = field(default_factory=list)
    presses: list[Press] = field(default_factory=list)
    result: PressResult = field(default_factory=lambda: PressResult(True, "Stop: done"))
    fail: bool = False

    async def deliver(self, message: IncomingMessage) -> None:
        self.messages.append(message)

    async def press(self, press: Press, claimed: Claimed | None = None) -> PressResult:
        self.presses.append(press)
        if self.fail:
            raise RuntimeError("boom")
        if claimed is not None:  # decided at once, as the orchestrator tells it
            await claimed(self.result)
        return self.result

    async def settled(self, chat_id: str) -> None:
        return None

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]


@dataclass(frozen=True)
class Drawn:
    """A message as a channel with buttons and threads was asked to send it."""

    id: str
    chat_id: str
    text: str
    buttons: tuple[Button, ...]
    thread: str | None


class ButtonChannel(RecordingChannel):
    """A recording channel that draws buttons and threads, as Telegram, Slack and
    Discord do; tests press its buttons with `press`."""

    supports_buttons = True
    supports_threads = True

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[Drawn] = []
        self.image_threads: list[str | None] = []
        self.menus: list[tuple[list[str], list[str]]] = []  # (admin chats, command names)

    async def set_menu(self, admin_chats: Sequence[str], commands: Sequence[MenuEntry]) -> None:
        self.menus.append((list(admin_chats), [c.name for c in commands]))

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        message_id = await self.send_text(chat_id, text)
        assert message_id is not None
        self.drawn.append(Drawn(message_id, chat_id, text, tuple(buttons), thread))
        return message_id

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        self.image_threads.append(thread)
        return await super().send_image(chat_id, path, caption)

    def button(self, label: str, *, under: str = "") -> Button:
        """The newest button with `label` under a message containing `under`."""
        for sent in reversed(self.drawn):
            for button in sent.buttons:
                if button.label == label and under in sent.text:
                    return button
        raise AssertionError(f"no {label!r} button under {under!r}: {self.drawn[-3:]}")

    async def press(self, chat_id: str, button: Button, sender: str = "ann") -> PressResult:
        assert self._inbox is not None
        self._ids += 1
        result = await self._inbox.press(
            Press(chat_id, sender, button.token, platform_id=f"press-{self._ids}")
        )
        await self._inbox.settled(chat_id)
        return result


@dataclass
class Running:
    orch: Orchestrator
    channel: RecordingChannel
    settings: Settings
    extra: dict[str, object] = field(default_factory=dict)

    async def flush(self) -> None:
        await self.orch.services.log.flush()
