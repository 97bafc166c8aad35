"""The local channel: talk to the assistant from this machine, no chat account needed.

JSON lines over TCP on 127.0.0.1. A client's first line carries the token that
`assistant up` wrote to ASSISTANT_HOME (mode 0600), so only someone who can read that file
can send commands. Everything on this channel is the local admin's chat, `local:console`;
what the assistant sends to it goes to every connected client.

    client -> {"token": "...", "client": "send", "ack": true, "outbox": true}
    server -> {"type": "ready", "waiting": 2, "dropped": 0}
    server -> {"type": "message", "text": "...", "outbox": 7, "at": "...", "held": true}
              (the `waiting` messages that no client got yet, oldest first: with "outbox")
    client -> {"type": "message", "id": "...", "text": "/status"}
    server -> {"type": "message", "text": "...", "outbox": 9, "at": "..."}  (any time)
    server -> {"type": "image", "path": "...", "caption": "...", "outbox": 10, "at": "..."}
    client -> {"type": "ack", "outbox": 9}                 (shown: "ack" clients only)
    server -> {"type": "settled", "id": "..."}             (that message is fully handled)
    server -> {"type": "error", "text": "...", "id": ...}  (a line it could not take)

Every message is kept in the outbox (assistant/channels/local_outbox.py) until a client got
it: an "ack" client acknowledged it, or it was written to a client that does not ack. The
send is recorded in the chain as it was: delivered, or kept for the next client (the
`message_sent` action fails, saying so); a kept message that a client gets later is a
`message_delivered` action under the same event. Lines from a client are read while its
messages are handled, so its acks are seen while the assistant waits for them.

Buttons are numbered choices: a message offering actions ends with "[3] Stop  [4] Logs",
and a client line that is just one of those numbers presses that button (the same press
as a platform's button: rights checked then, acting once). Numbers count up across
messages, so an older message's choices stay valid; they are held in memory, the newest
`MAX_CHOICES`, and a number not offered is sent on as text.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from assistant import log_context
from assistant.channels.base import Button, Channel, Inbox, IncomingMessage, Press
from assistant.channels.local_outbox import Held, Outbox
from assistant.channels.local_protocol import (
    ACK_SHAPE,
    HELLO_SHAPE,
    LOCAL_CHAT,
    MAX_LINE,
    MESSAGE_SHAPE,
)
from assistant.errors import ChannelError
from assistant.jobs.text import valid_text
from storage.ids import encode

log = logging.getLogger(__name__)

OUTBOX_NAME = "local-outbox.db"
# The longest text sent in one line: even escaped at 12 bytes a character (a surrogate
# pair as two \u escapes), it fits the client's MAX_LINE, so no message can wedge the outbox.
MAX_TEXT = 64_000
# How long a send waits for an attached "ack" client to confirm it got the message.
ACK_WAIT_S = 2.0
# How many numbered choices stay valid (the newest), so a console left open stays small.
MAX_CHOICES = 200


class DeliveryLog(Protocol):
    """Where a late delivery is recorded (the event log's `log_action`)."""

    def log_action(
        self,
        triggered_by: int | None,
        action_type: str,
        *,
        target: str | None = None,
        content: object = None,
    ) -> int: ...


@dataclass(frozen=True)
class _Client:
    acks: bool  # acknowledges each message it got (the assistant CLI does)


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
    supports_buttons = True  # as numbered choices

    def __init__(
        self,
        endpoint_path: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        outbox_path: Path | None = None,
        ack_wait_s: float = ACK_WAIT_S,
    ) -> None:
        self._endpoint_path = endpoint_path
        self._port = port
        self._host = host
        self._token = secrets.token_urlsafe(32)
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, _Client] = {}
        self._inbox: Inbox | None = None
        self._outbox_path = outbox_path or endpoint_path.with_name(OUTBOX_NAME)
        self._outbox: Outbox | None = None
        self._ack_wait_s = ack_wait_s
        self._acked: dict[int, asyncio.Future[None]] = {}  # sends waiting for an ack
        self._deliveries: DeliveryLog | None = None
        self._choices: dict[int, str] = {}  # a numbered choice -> its button's token
        self._next_choice = 1
        self.port: int | None = None

    def record_deliveries(self, log: DeliveryLog) -> None:
        """Record kept messages that a client gets later as `message_delivered` actions."""
        self._deliveries = log

    @property
    def outbox(self) -> Outbox | None:
        """What waits for a client (None until started)."""
        return self._outbox

    @property
    def is_connected(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self, inbox: Inbox) -> None:
        """Open the outbox, listen on loopback and publish port and token.

        :raises ChannelError: if the port is taken.
        :raises DatabaseOpenError: if the outbox file cannot be used.
        """
        self._inbox = inbox
        self._outbox = await Outbox.open(self._outbox_path)
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
            await self._attach(writer, _Client(acks=hello.get("ack") is True), hello)
            work: asyncio.Queue[dict[str, Any] | str | None] = asyncio.Queue()
            worker = asyncio.create_task(self._work(writer, work), name="local-client")
            try:
                while (line := await _read_line(reader)) != b"":
                    request = _parse(line, MESSAGE_SHAPE)
                    if isinstance(request, dict) and request.get("type") == "ack":
                        await self._ack(writer, request)
                    else:
                        work.put_nowait(request)
            finally:
                work.put_nowait(None)  # what it sent before hanging up is still handled
                await worker
        except ConnectionError as exc:
            log.debug("local client dropped: %s", exc)
        except Exception:  # one client must never take the channel down
            log.exception("local channel: a client connection failed")
        finally:
            self._clients.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _attach(
        self, writer: asyncio.StreamWriter, client: _Client, hello: dict[str, Any]
    ) -> None:
        """Say ready, hand over what waits (when asked), and join the live messages.

        The snapshot, its lines and joining happen with no await between them, so every
        message reaches this client once: in the snapshot, or live.
        """
        assert self._outbox is not None
        ready: dict[str, Any] = {"type": "ready", "chat": LOCAL_CHAT}
        waiting: list[Held] = []
        if client.acks and hello.get("outbox") is True:
            waiting = self._outbox.waiting()
            ready.update(
                waiting=len(waiting), dropped=self._outbox.dropped, kept=self._outbox.limit
            )
        writer.write(_encode(ready))
        for held in waiting:
            writer.write(_encode(held.line(held=True)))
        self._clients[writer] = client
        await writer.drain()
        if ready.get("dropped"):
            await self._outbox.told_dropped()

    async def _ack(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        """A client got message `outbox`: it leaves the outbox; a late one is recorded."""
        assert self._outbox is not None
        seq = request.get("outbox")
        if not isinstance(seq, int) or isinstance(seq, bool):
            await _write(writer, {"type": "error", "text": ACK_SHAPE})
            return
        waiter = self._acked.get(seq)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # its send is still waiting: recorded there, as ok
            await self._outbox.remove(seq)
            return
        held = await self._outbox.remove(seq)
        if held is not None:
            self._record_late(held)

    def _record_late(self, held: Held) -> None:
        if self._deliveries is None:
            return
        self._deliveries.log_action(
            held.event_id,
            "message_delivered",
            target=held.chat_id,
            content={
                "message_sent": None if held.action_id is None else encode(held.action_id),
                "said_at": held.at,
                "text": held.text[:500],
            },
        )

    async def _work(
        self, writer: asyncio.StreamWriter, work: asyncio.Queue[dict[str, Any] | str | None]
    ) -> None:
        """A client's message lines, handled one after another in the order sent."""
        while (request := await work.get()) is not None:
            try:
                await self._handle_line(writer, request)
            except ConnectionError as exc:
                log.debug("local client dropped: %s", exc)
            except Exception:  # one message must never take the connection down
                log.exception("local channel: a client line failed")

    async def _handle_line(
        self, writer: asyncio.StreamWriter, request: dict[str, Any] | str
    ) -> None:
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
            token = self._chosen(text)
            if token is not None:
                press = Press(LOCAL_CHAT, "local admin", token, platform_id=message_id)
                result = await self._inbox.press(press)
                if not result.acted:
                    await self._say(LOCAL_CHAT, "message", result.note)
            else:
                await self._inbox.deliver(incoming)
            await self._inbox.settled(LOCAL_CHAT)
        except Exception as exc:  # the connection, and the service, stay up
            log.exception("local channel: message %s could not be handled", message_id)
            problem = valid_text(f"the assistant could not handle this message ({exc})")
            await _write(writer, {"type": "error", "id": incoming.platform_id, "text": problem})
            return
        await _write(writer, {"type": "settled", "id": incoming.platform_id})

    async def send_text(self, chat_id: str, text: str) -> str | None:
        """Deliver to the attached clients, or keep it for the next one.

        :raises ChannelError: no client got it; it waits in the outbox for the next one.
        """
        return await self._say(chat_id, "message", text)

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        """As send_text, the buttons listed under it as numbered choices."""
        if not buttons:
            return await self.send_text(chat_id, text)
        numbered = []
        for button in buttons:
            number, self._next_choice = self._next_choice, self._next_choice + 1
            self._choices[number] = button.token
            numbered.append(f"[{number}] {button.label}")
        while len(self._choices) > MAX_CHOICES:
            del self._choices[min(self._choices)]
        return await self.send_text(chat_id, f"{text}\n" + "  ".join(numbered))

    def _chosen(self, text: str) -> str | None:
        """The token of the choice `text` names, if it is just an offered number."""
        words = text.strip()
        if not words.isdigit() or len(words) > 6:
            return None
        return self._choices.get(int(words))

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        """As send_text; a client is shown the image's path.

        :raises ChannelError: no client got it; it waits in the outbox for the next one.
        """
        return await self._say(chat_id, "image", caption, str(path))

    async def _say(self, chat_id: str, kind: str, text: str, path: str | None = None) -> str:
        """Keep the message, write it to every client, and wait until one has it.

        Returns its outbox number once a client got it: an "ack" client acknowledged it
        within `ack_wait_s`, or it was written to a client that does not ack.
        """
        if self._outbox is None:
            raise ChannelError("the local channel is not started")
        if len(text) > MAX_TEXT:
            text = f"{text[:MAX_TEXT]}\n[cut here: {len(text) - MAX_TEXT:,} more characters]"
        chain = log_context.current()
        held = await self._outbox.add(
            chat_id,
            kind,
            text,
            path,
            event_id=chain.event_id if chain else None,
            action_id=chain.action_id if chain else None,
        )
        # From the add to these writes, no await: a client attaching now sees it once.
        line = _encode(held.line(held=False))
        clients = list(self._clients.items())
        for writer, _ in clients:
            writer.write(line)
        acked = asyncio.get_running_loop().create_future()
        self._acked[held.seq] = acked
        try:
            got = False
            for writer, client in clients:
                try:
                    await writer.drain()
                except ConnectionError:
                    self._clients.pop(writer, None)
                    continue
                got = got or not client.acks
            if not got and any(client.acks for _, client in clients):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ack_wait_s):
                        await acked
                got = acked.done() and not acked.cancelled()
        finally:
            del self._acked[held.seq]
        if got:
            await self._outbox.remove(held.seq)  # a no-op where the ack removed it
            return str(held.seq)
        waiting = len(self._outbox.waiting())
        nobody = (
            f"no attached client acknowledged it within {self._ack_wait_s:g} s"
            if clients
            else "no local client is attached"
        )
        raise ChannelError(
            f"{nobody}: kept in the local outbox ({waiting} waiting), shown by the next"
            " `assistant chat` or `assistant inbox`"
        )

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._endpoint_path.unlink()
        if self._outbox is not None:
            await self._outbox.aclose()
            self._outbox = None


def _encode(payload: dict[str, Any]) -> bytes:
    # ASCII JSON: whatever the text holds, the line is valid UTF-8 and one line.
    return json.dumps(payload).encode() + b"\n"


async def _write(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(_encode(payload))
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
