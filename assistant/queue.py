"""The group queue: one chat's messages are handled one batch at a time, and at most
`max_concurrent` chats are handled at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

ChatState = Literal["idle", "processing", "queued"]


@dataclass
class _Chat:
    pending: bool = False
    active: bool = False
    worker: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class QueueChat:
    chat_id: str
    state: ChatState


@dataclass(frozen=True)
class QueueStatus:
    active: int
    max_concurrent: int
    waiting: int
    chats: tuple[QueueChat, ...]


class GroupQueue:
    """Calls `process(chat_id)` until the chat has nothing pending."""

    def __init__(self, process: Callable[[str], Awaitable[None]], max_concurrent: int) -> None:
        self._process = process
        self._max = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._chats: dict[str, _Chat] = {}
        self._active = 0

    def enqueue(self, chat_id: str) -> None:
        chat = self._chats.setdefault(chat_id, _Chat())
        chat.pending = True
        chat.idle.clear()
        if chat.worker is None or chat.worker.done():
            chat.worker = asyncio.create_task(self._work(chat_id, chat), name=f"queue:{chat_id}")

    async def _work(self, chat_id: str, chat: _Chat) -> None:
        try:
            while chat.pending:
                async with self._slots:
                    chat.pending = False
                    chat.active = True
                    self._active += 1
                    try:
                        await self._process(chat_id)
                    except Exception:
                        log.exception("processing chat %s failed", chat_id)
                    finally:
                        chat.active = False
                        self._active -= 1
        finally:
            chat.idle.set()

    async def settled(self, chat_id: str) -> None:
        chat = self._chats.get(chat_id)
        if chat is not None and (chat.pending or chat.active):
            await chat.idle.wait()

    def status(self) -> QueueStatus:
        chats = []
        waiting = 0
        for chat_id, chat in self._chats.items():
            if chat.active:
                chats.append(QueueChat(chat_id, "processing"))
            elif chat.pending:
                chats.append(QueueChat(chat_id, "queued"))
                waiting += 1
            else:
                chats.append(QueueChat(chat_id, "idle"))
        return QueueStatus(self._active, self._max, waiting, tuple(chats))

    async def aclose(self) -> None:
        """Let batches in progress finish; drop what is only queued (it stays stored)."""
        for chat in self._chats.values():
            chat.pending = False
        workers = [c.worker for c in self._chats.values() if c.worker and not c.worker.done()]
        if workers:
            await asyncio.wait(workers, timeout=10)
