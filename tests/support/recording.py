"""A channel that records what it is sent, and the handle tests use on a running service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from assistant.channels.base import Channel, Inbox, IncomingMessage
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

    async def edit_text(self, chat_id: str, message_id: str, text: str) -> str | None:
        self.edits.append((chat_id, message_id, text))
        return message_id

    async def send_image(self, chat_id: str, path: Path, caption: str = "") -> str | None:
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
class Running:
    orch: Orchestrator
    channel: RecordingChannel
    settings: Settings
    extra: dict[str, object] = field(default_factory=dict)

    async def flush(self) -> None:
        await self.orch.services.log.flush()
