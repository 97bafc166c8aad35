"""What every chat adapter needs to deliver: splitting at a platform's limit, and one send
queue per channel that waits out rate limits and retries transient errors.

Nothing queued is lost while waiting: a message leaves the queue only once it is sent, or
once it failed for a reason that retrying cannot fix (the caller hears which).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from assistant.background import cancel
from assistant.errors import ChannelError

log = logging.getLogger(__name__)

T = TypeVar("T")
FENCE = "```"


class RetryAfter(ChannelError):
    """The platform said to wait (HTTP 429 / retry_after) before sending again."""

    def __init__(self, seconds: float, message: str = "rate limited") -> None:
        self.seconds = max(0.0, seconds)
        super().__init__(f"{message}; retry after {self.seconds:g}s")


class TransientError(ChannelError):
    """A failure worth retrying (a 5xx, a dropped connection)."""


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut at line ends, never inside a code block.

    A code block longer than a piece is closed at the cut and reopened in the next piece,
    so each piece renders on its own. A single line longer than a piece is cut hard.
    """
    if limit < 16:
        raise ValueError("limit too small to split sensibly")
    if len(text) <= limit:
        return [text]
    budget = limit - len(FENCE) - 1  # room to close an open code block at a cut
    lines: list[str] = []
    for line in text.split("\n"):
        lines.extend(line[i : i + budget] for i in range(0, len(line), budget) or [0])
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    in_code = False
    for line in lines:
        if current and size + 1 + len(line) > budget:
            pieces.append("\n".join(current + ([FENCE] if in_code else [])))
            current = [FENCE] if in_code else []
            size = len(FENCE) if in_code else 0
        size += (1 if current else 0) + len(line)
        current.append(line)
        if line.strip().startswith(FENCE):
            in_code = not in_code
    if current:
        pieces.append("\n".join(current))
    return pieces


@dataclass
class SendStats:
    """What one send queue went through since start, for /metrics (counts only grow).

    failures: messages that finally failed (retries used up, or an error retrying cannot
    fix); retries: sends tried again after a transient error; rate_limited: waits the
    platform asked for.
    """

    sent: int = 0
    failures: int = 0
    retries: int = 0
    rate_limited: int = 0


def send_stats(channel: object) -> SendStats | None:
    """The send counters of a channel's queue, or None for a channel without one.

    The platform channels keep their queue to themselves; this finds it without each of
    them growing an accessor.
    """
    for value in getattr(channel, "__dict__", {}).values():
        if isinstance(value, SendQueue):
            return value.stats
    return None


@dataclass
class _Job:
    send: Callable[[], Awaitable[object]]
    done: asyncio.Future[object]


class SendQueue:
    """One per channel: sends in order, one at a time, honouring rate limits.

    `await queue.submit(fn)` returns fn's result once it went through. A `RetryAfter`
    pauses the whole queue for the time asked (later messages keep their place); a
    `TransientError` is retried with backoff up to `attempts` times; anything else fails
    that one message at once.
    """

    def __init__(self, name: str, *, attempts: int = 5, backoff_s: float = 0.5) -> None:
        self.name = name
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.waiting_until: float | None = None  # loop time a rate limit ends, for /status
        self.stats = SendStats()

    async def submit(self, send: Callable[[], Awaitable[T]]) -> T:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"send-queue:{self.name}")
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        await self._jobs.put(_Job(send, done))
        return await done  # type: ignore[return-value]

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            failures = 0
            while not job.done.done():  # done already: its caller gave up (cancelled)
                try:
                    result = await job.send()
                    self.stats.sent += 1
                    if not job.done.done():
                        job.done.set_result(result)
                except RetryAfter as exc:
                    self.stats.rate_limited += 1
                    self.waiting_until = loop.time() + exc.seconds
                    log.info("%s: rate limited, waiting %.1fs", self.name, exc.seconds)
                    await asyncio.sleep(exc.seconds)
                    self.waiting_until = None
                except TransientError as exc:
                    failures += 1
                    if failures >= self._attempts:
                        self.stats.failures += 1
                        if not job.done.done():
                            job.done.set_exception(exc)
                    else:
                        self.stats.retries += 1
                        await asyncio.sleep(self._backoff_s * 2 ** (failures - 1))
                except Exception as exc:
                    self.stats.failures += 1
                    if not job.done.done():
                        job.done.set_exception(exc)

    async def aclose(self) -> None:
        """Stop the worker; what is still queued fails with ChannelError (never silently)."""
        await cancel(self._worker)
        self._worker = None
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if not job.done.done():
                job.done.set_exception(ChannelError(f"{self.name} closed before sending"))
