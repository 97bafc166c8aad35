"""The local channel: talk to the assistant from this machine, no chat account needed.

JSON lines over TCP on 127.0.0.1. A client's first line carries the token that
`assistant up` wrote to ASSISTANT_HOME (mode 0600), so only someone who can read that file
can send commands. Everything on this channel is the local admin's chat, `local:console`;
what the assistant sends to it goes to every connected client.

    client -> {"token": "...", "client": "send"}          server -> {"type": "ready"}
    client -> {"type": "message", "id": "...", "text": "/status"}
    server -> {"type": "message", "text": "..."}          (any number, any time)
    server -> {"type": "settled", "id": "..."}             (that message is fully handled)
    server -> {"type": "error", "text": "...", "id": ...}  (a line it could not take)

A line over 1 MiB, not UTF-8, not JSON, or not an object of the shape above is answered
with one `error` line that says what was wrong and what is expected; the connection stays
open, except after a bad hello. The message text is made valid (lone surrogates, NUL)
where IncomingMessage is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from assistant.channels.base import Channel, Inbox, IncomingMessage
from assistant.errors import ChannelError
from assistant.jobs.text import valid_text

log = logging.getLogger(__name__)

LOCAL_CHAT = "local:console"
MAX_LINE = 1024 * 1024
# What each line must be, quoted in the error reply to a line that is not.
HELLO_SHAPE = 'expected one line of UTF-8 JSON: {"token": "<from local-channel.json>"}'
MESSAGE_SHAPE = (
    'expected one line of UTF-8 JSON: {"type": "message", "id": "<string>", "text": "<string>"}'
)


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(data, fh)
    os.replace(tmp, path)


class LocalChannel(Channel):
    name = "local"
    prefix = "local"

    def __init__(self, endpoint_path: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self._endpoint_path = endpoint_path
        self._port = port
        self._host = host
        self._token = secrets.token_urlsafe(32)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._inbox: Inbox | None = None
        self.port: int | None = None

    @property
    def is_connected(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self, inbox: Inbox) -> None:
        """Listen on loopback and publish port and token.

        :raises ChannelError: if the port is taken.
        """
        self._inbox = inbox
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_LINE
            )
        except OSError as exc:
            raise ChannelError(
                f"local channel: cannot listen on {self._host}:{self._port} ({exc.strerror});"
                " set ASSISTANT_LOCAL_PORT to a free port (0 = any)"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        write_private(
            self._endpoint_path,
            {"host": self._host, "port": self.port, "token": self._token, "pid": os.getpid()},
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: a hello with the token, then message lines until it hangs up.

        A line that is too long, not UTF-8, not JSON or not the expected object gets one
        `error` line saying what was wrong and what is expected; a bad hello also ends
        the connection (nothing was proven), a bad message line does not.
        """
        try:
            hello = _parse(await _read_line(reader), HELLO_SHAPE)
            if isinstance(hello, str):
                await _write(writer, {"type": "error", "text": hello})
                log.info("local channel: refused a client: %s", hello)
                return
            token = hello.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(
                valid_text(token).encode(), self._token.encode()
            ):
                await _write(writer, {"type": "error", "text": "bad token"})
                log.warning("local channel: a client gave a wrong token")
                return
            await _write(writer, {"type": "ready", "chat": LOCAL_CHAT})
            self._clients.add(writer)
            while (line := await _read_line(reader)) != b"":
                await self._handle_line(writer, line)
        except ConnectionError as exc:
            log.debug("local client dropped: %s", exc)
        except Exception:  # one client must never take the channel down
            log.exception("local channel: a client connection failed")
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle_line(self, writer: asyncio.StreamWriter, line: bytes | None) -> None:
        request = _parse(line, MESSAGE_SHAPE)
        if isinstance(request, str):
            await _write(writer, {"type": "error", "text": request})
            return
        message_id, text = request.get("id"), request.get("text")
        problem = None
        if request.get("type") != "message":
            problem = f"unknown type {_clip(request.get('type'))}; {MESSAGE_SHAPE}"
        elif not isinstance(text, str):
            problem = f'"text" must be a string; {MESSAGE_SHAPE}'
        elif message_id is not None and not isinstance(message_id, str | int):
            problem = f'"id" must be a string; {MESSAGE_SHAPE}'
        if problem is not None:
            reply: dict[str, Any] = {"type": "error", "text": problem}
            if isinstance(message_id, str | int):
                reply["id"] = valid_text(str(message_id))
            await _write(writer, reply)
            return
        message_id = str(message_id or secrets.token_hex(8))
        assert self._inbox is not None and isinstance(text, str)
        incoming = IncomingMessage(LOCAL_CHAT, "local admin", text, platform_id=message_id)
        try:
            await self._inbox.deliver(incoming)
            await self._inbox.settled(LOCAL_CHAT)
        except Exception as exc:  # the connection, and the service, stay up
            log.exception("local channel: message %s could not be handled", message_id)
            problem = valid_text(f"the assistant could not handle this message ({exc})")
            await _write(writer, {"type": "error", "id": incoming.platform_id, "text": problem})
            return
        await _write(writer, {"type": "settled", "id": incoming.platform_id})

    async def send_text(self, chat_id: str, text: str) -> str | None:
        await self._broadcast({"type": "message", "text": text})
        return None

    async def send_image(self, chat_id: str, path: Path, caption: str = "") -> str | None:
        await self._broadcast({"type": "image", "path": str(path), "caption": caption})
        return None

    async def _broadcast(self, payload: dict[str, Any]) -> None:
        for writer in list(self._clients):
            try:
                await _write(writer, payload)
            except ConnectionError:
                self._clients.discard(writer)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._endpoint_path.unlink()


async def _write(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    # ASCII JSON: whatever the text holds, the line is valid UTF-8 and one line.
    writer.write(json.dumps(payload).encode() + b"\n")
    await writer.drain()


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line; b"" at the end; None for a line over MAX_LINE (read and discarded).

    The discarded part never sits in memory whole: it is consumed as it arrives.
    """
    too_long = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # the end, perhaps after a last line
            return None if too_long else exc.partial
        except asyncio.LimitOverrunError as exc:
            too_long = True
            try:
                await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return None
            continue
        return None if too_long else line


def _parse(line: bytes | None, shape: str) -> dict[str, Any] | str:
    """A protocol line as a JSON object, or what was wrong with it (a short error reply)."""
    if line is None:
        return f"line longer than {MAX_LINE // (1024 * 1024)} MiB; {shape}"
    if not line.strip():
        return f"empty line; {shape}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"line is not valid UTF-8 (byte {exc.start}); {shape}"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        return f"line is not JSON ({_clip(str(exc))}); {shape}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}; {shape}"
    return data


def _clip(value: object, limit: int = 60) -> str:
    """A bit of what a client sent, safe to quote back: valid, short, repr-quoted."""
    return valid_text(repr(value))[:limit]
