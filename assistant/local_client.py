"""Client of the local channel: what `assistant send` and `assistant chat` use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from assistant.channels.local import MAX_LINE
from assistant.errors import ChannelError


@dataclass(frozen=True)
class Incoming:
    kind: str  # "message" | "image" | "settled"
    text: str
    id: str | None = None


class LocalClient:
    """`async with LocalClient(endpoint_path) as client:`.

    :raises ChannelError: when no service is running or the token is refused.
    """

    def __init__(self, endpoint_path: Path, mode: str = "send") -> None:
        self._endpoint_path = endpoint_path
        self._mode = mode
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LocalClient:
        try:
            endpoint = json.loads(self._endpoint_path.read_text())
        except FileNotFoundError:
            raise ChannelError(self._not_running()) from None
        except (OSError, ValueError) as exc:
            raise ChannelError(f"cannot read {self._endpoint_path}: {exc}") from None
        try:
            self._reader, self._writer = await asyncio.open_connection(
                endpoint["host"], endpoint["port"], limit=MAX_LINE
            )
        except OSError:
            raise ChannelError(self._not_running()) from None
        await self._send({"token": endpoint["token"], "client": self._mode})
        reply = await self._read()
        if reply.get("type") != "ready":
            raise ChannelError(f"the assistant refused this client: {reply.get('text')}")
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
        line = await self._reader.readline()
        if not line:
            raise ChannelError("the assistant closed the connection")
        data: dict[str, Any] = json.loads(line)
        return data

    async def send(self, text: str, message_id: str | None = None) -> str:
        """Send text; its id comes back in the `settled` notice once it is handled."""
        message_id = message_id or secrets.token_hex(8)
        await self._send({"type": "message", "id": message_id, "text": text})
        return message_id

    async def incoming(self) -> AsyncIterator[Incoming]:
        """Everything the assistant sends, until the connection closes."""
        while True:
            data = await self._read()
            kind = str(data.get("type"))
            if kind == "image":
                caption = data.get("caption") or ""
                yield Incoming(kind, f"{caption} [image: {data.get('path')}]".strip())
            else:
                yield Incoming(kind, str(data.get("text", "")), data.get("id"))

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


async def exchange(
    endpoint_path: Path, text: str, *, within: float = 60.0, wait: float = 0.0
) -> AsyncIterator[str]:
    """Send one message; yield replies until it is handled (at most `within` seconds),
    then for `wait` more seconds."""
    async with LocalClient(endpoint_path) as client:
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
            if item.kind == "settled" and item.id == message_id:
                settled = True
                if wait <= 0:
                    return
                deadline = loop.time() + wait
            elif item.kind != "settled":
                yield item.text
