"""Client of the local channel: what `assistant send` and `assistant chat` use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from assistant.channels.local_protocol import MAX_LINE
from assistant.errors import ChannelError


@dataclass(frozen=True)
class Incoming:
    kind: str  # "message" | "image" | "settled" | "error" (a line the service refused)
    text: str
    id: str | None = None
    outbox: int | None = None  # its number in the service's outbox: what `ack` confirms
    held: bool = False  # it waited in the outbox for a client (said while none was there)


class LocalClient:
    """`async with LocalClient(endpoint_path) as client:`.

    :raises ChannelError: when no service is running or the token is refused.
    """

    def __init__(self, endpoint_path: Path, mode: str = "send", *, outbox: bool = False) -> None:
        """`outbox`: be handed, first, what the assistant said while no client was there."""
        self._endpoint_path = endpoint_path
        self._mode = mode
        self._outbox = outbox
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.waiting = 0  # held messages that come first (when outbox was asked for)
        self.dropped = 0  # held ones the outbox dropped to stay within its bound
        self.kept = 0  # that bound

    async def __aenter__(self) -> LocalClient:
        try:
            endpoint = json.loads(self._endpoint_path.read_text())
        except FileNotFoundError:
            raise ChannelError(self._not_running()) from None
        except (OSError, ValueError) as exc:
            raise ChannelError(f"cannot read {self._endpoint_path}: {exc}") from None
        if not isinstance(endpoint, dict) or not {"host", "port", "token"} <= endpoint.keys():
            raise ChannelError(
                f"{self._endpoint_path} is not what `assistant up` writes"
                " (host, port and token); restart the assistant"
            )
        try:
            self._reader, self._writer = await asyncio.open_connection(
                endpoint["host"], endpoint["port"], limit=MAX_LINE
            )
        except (OSError, TypeError, ValueError):  # TypeError, ValueError: a bad host or port
            raise ChannelError(self._not_running()) from None
        try:
            hello = {"token": endpoint["token"], "client": self._mode, "ack": True}
            await self._send(hello | ({"outbox": True} if self._outbox else {}))
            reply = await self._read()
            if reply.get("type") != "ready":
                raise ChannelError(f"the assistant refused this client: {reply.get('text')}")
            self.waiting = _count(reply.get("waiting"))
            self.dropped = _count(reply.get("dropped"))
            self.kept = _count(reply.get("kept"))
        except BaseException:
            await self.__aexit__(None, None, None)  # `async with` will not call it now
            raise
        return self

    def _not_running(self) -> str:
        return (
            f"no assistant is running for {self._endpoint_path.parent}"
            " (start one with: assistant up)"
        )

    async def _send(self, payload: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(payload).encode() + b"\n")
        await self._writer.drain()

    async def _read(self) -> dict[str, Any]:
        assert self._reader is not None
        try:
            line = await self._reader.readline()
        except ValueError:  # over MAX_LINE
            raise ChannelError(f"the assistant sent a line over {MAX_LINE:,} bytes") from None
        if not line:
            raise ChannelError("the assistant closed the connection")
        try:
            data = json.loads(line)
        except ValueError:
            raise ChannelError("the assistant sent a line that is not JSON") from None
        if not isinstance(data, dict):
            raise ChannelError("the assistant sent a line that is not a JSON object")
        return data

    async def send(self, text: str, message_id: str | None = None) -> str:
        """Send text; its id comes back in the `settled` notice once it is handled."""
        message_id = message_id or secrets.token_hex(8)
        await self._send({"type": "message", "id": message_id, "text": text})
        return message_id

    async def ack(self, item: Incoming) -> None:
        """Tell the assistant this message was shown: it leaves the outbox."""
        if item.outbox is not None:
            await self._send({"type": "ack", "outbox": item.outbox})

    def backlog_note(self) -> str | None:
        """The line that introduces the held messages, or None when there are none."""
        if not self.waiting and not self.dropped:
            return None
        note = (
            f"{self.waiting} message{'' if self.waiting == 1 else 's'} arrived while no client"
            " was attached"
        )
        if self.dropped:
            note += (
                f" ({self.dropped} older one{'' if self.dropped == 1 else 's'} dropped: the"
                f" outbox keeps the newest {self.kept})"
            )
        return note + (":" if self.waiting else ".")

    async def incoming(self) -> AsyncIterator[Incoming]:
        """Everything the assistant sends, until the connection closes."""
        while True:
            data = await self._read()
            kind = str(data.get("type"))
            message_id = data.get("id")
            message_id = None if message_id is None else str(message_id)
            seq = data.get("outbox")
            outbox = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            held = data.get("held") is True
            prefix = f"({_local_time(data.get('at'))}) " if held else ""
            if kind == "image":
                caption = data.get("caption") or ""
                text = f"{prefix}{caption} [image: {data.get('path')}]".strip()
                yield Incoming(kind, text, outbox=outbox, held=held)
            elif kind == "error":
                yield Incoming(kind, f"error: {data.get('text', '')}", message_id)
                if message_id is not None:  # refused, so as handled as it will ever be
                    yield Incoming("settled", "", message_id)
            else:
                text = prefix + str(data.get("text", ""))
                yield Incoming(kind, text, message_id, outbox=outbox, held=held)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _local_time(at: object) -> str:
    """When a held message was said, in this machine's time zone (as sent if unreadable)."""
    try:
        when = datetime.fromisoformat(str(at)).astimezone()
    except ValueError:
        return str(at)
    return when.strftime("%a %H:%M")


async def exchange(
    endpoint_path: Path,
    text: str,
    *,
    within: float = 60.0,
    wait: float = 0.0,
    outbox: bool = False,
) -> AsyncIterator[str]:
    """Send one message; yield replies until it is handled (at most `within` seconds),
    then for `wait` more seconds. With `outbox`, what waited for a client comes first.

    Each message is acknowledged once the consumer took it (the `yield` returned)."""
    async with LocalClient(endpoint_path, outbox=outbox) as client:
        if (note := client.backlog_note()) is not None:
            yield note
        message_id = await client.send(text)
        stream = client.incoming()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        settled = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if not settled:
                    raise ChannelError(f"no answer within {within:g} s")
                return
            try:
                item = await asyncio.wait_for(anext(stream), remaining)
            except TimeoutError:
                if settled:
                    return
                raise ChannelError(f"no answer within {within:g} s") from None
            if item.kind == "error" and item.id in (None, message_id):
                raise ChannelError(
                    f"the assistant refused the message: {item.text[len('error: ') :]}"
                )
            if item.kind == "settled" and item.id == message_id:
                settled = True
                if wait <= 0:
                    return
                deadline = loop.time() + wait
            elif item.kind != "settled":
                yield item.text
                await client.ack(item)
