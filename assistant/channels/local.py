"""The local channel: talk to the assistant from this machine, no chat account needed.

JSON lines over TCP on 127.0.0.1. A client's first line carries the token that
`assistant up` wrote to ASSISTANT_HOME (mode 0600), so only someone who can read that file
can send commands. Everything on this channel is the local admin's chat, `local:console`;
what the assistant sends to it goes to every connected client.

    client -> {"token": "...", "client": "send"}          server -> {"type": "ready"}
    client -> {"type": "message", "id": "...", "text": "/status"}
    server -> {"type": "message", "text": "..."}          (any number, any time)
    server -> {"type": "settled", "id": "..."}             (that message is fully handled)
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

log = logging.getLogger(__name__)

LOCAL_CHAT = "local:console"
MAX_LINE = 1024 * 1024


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
        try:
            hello = json.loads(await reader.readline() or b"{}")
            token = str(hello.get("token", ""))
            if not hmac.compare_digest(token.encode(), self._token.encode()):
                await _write(writer, {"type": "error", "text": "bad token"})
                log.warning("local channel: a client gave a wrong token")
                return
            await _write(writer, {"type": "ready", "chat": LOCAL_CHAT})
            self._clients.add(writer)
            while line := await reader.readline():
                request = json.loads(line)
                if request.get("type") != "message":
                    continue
                message_id = str(request.get("id") or secrets.token_hex(8))
                text = str(request.get("text", ""))
                assert self._inbox is not None
                await self._inbox.deliver(
                    IncomingMessage(LOCAL_CHAT, "local admin", text, platform_id=message_id)
                )
                await self._inbox.settled(LOCAL_CHAT)
                await _write(writer, {"type": "settled", "id": message_id})
        except (ConnectionError, json.JSONDecodeError, ValueError) as exc:
            log.debug("local client dropped: %s", exc)
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

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
    writer.write(json.dumps(payload).encode() + b"\n")
    await writer.drain()
