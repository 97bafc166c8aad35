"""A local Slack: the Web API methods the adapter and slack_sdk call, and a Socket Mode
websocket, on 127.0.0.1 with the real wire format, so the adapter is tested as deployed.

Web API: POST /api/<method>, token in `Authorization: Bearer`, arguments as JSON, form or
query string (slack_sdk uses all three); errors are HTTP 200 {"ok": false, "error": ...}
except rate limits (429 + Retry-After) and server failures (5xx). Socket Mode:
apps.connections.open (app token) hands out a one-time ws:// URL; the socket says hello,
then carries envelopes that the client must ack with {"envelope_id": ...}: events_api
(messages, mentions), slash_commands (`push_command`) and interactive block_actions
(`press`, built from a button the bot drew). Like Slack, an events_api envelope not acked
when its socket ends is sent again, with retry_attempt raised, on the next connection, and
the bot's own posts and edits come back as events (its message, message_changed).
Messages keep their Block Kit blocks; chat.update without blocks keeps them, as Slack does
(python-slack-sdk issue 523), so `shown` gives what a person would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
TEAM = "T0TEAM"
APP_ID = "A0APP"
Json = dict[str, Any]


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    error: str


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request


@dataclass
class _Sent:
    envelope: Json
    socket: _Socket | None


@dataclass
class Upload:
    file_id: str
    filename: str
    length: int
    content: bytes = b""
    title: str = ""
    initial_comment: str | None = None
    thread_ts: str | None = None


@dataclass
class FakeSlack:
    """`async with FakeSlack() as slack:`; point the adapter at `slack.api_url`."""

    bot_token: str = BOT_TOKEN
    app_token: str = APP_TOKEN
    bot_user: str = BOT_USER
    echo_bot_messages: bool = True  # Slack sends the bot its own posts as events
    messages: dict[str, list[Json]] = field(default_factory=lambda: defaultdict(list))
    updates: dict[str, list[Json]] = field(default_factory=lambda: defaultdict(list))
    ephemerals: dict[str, list[Json]] = field(default_factory=lambda: defaultdict(list))
    responses: dict[str, list[Json]] = field(default_factory=lambda: defaultdict(list))
    files: dict[str, list[Upload]] = field(default_factory=lambda: defaultdict(list))
    calls: list[str] = field(default_factory=list)  # every Web API method called, in order
    acked: set[str] = field(default_factory=set)
    connections: int = 0  # sockets that got their hello
    refuse_sockets: int = 0  # the next n socket openings fail (their tickets used up)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._failures: dict[str, list[_Failure]] = defaultdict(list)
        self._tickets: set[str] = set()
        self._socket: _Socket | None = None
        self._backlog: list[Json] = []  # envelopes waiting for a socket
        self._sent: dict[str, _Sent] = {}  # envelope id -> envelope, until acked
        self._events: dict[str, Json] = {}  # ts -> event, for redelivery
        self._channels: dict[str, Json] = {}
        self._uploads: dict[str, Upload] = {}
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{file_id}", self._upload)
        app.router.add_post("/hooks/commands/{channel}/{trigger}", self._response_url)
        app.router.add_get("/link/", self._websocket)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._socket is not None:
            await self._socket.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def connected(self) -> bool:
        return self._socket is not None

    # ---- test controls -------------------------------------------------------------

    def add_channel(
        self, channel: str, name: str | None = None, *, is_im: bool = False, member: bool = True
    ) -> None:
        """A channel (or a DM); `member`: whether the bot is in it (else it cannot post)."""
        info: Json = {"id": channel, "is_im": is_im, "is_channel": not is_im}
        if is_im:
            info["user"] = "U1"
        else:
            info["name"] = name or channel.lower()
            info["is_member"] = member
        self._channels[channel] = info

    def fail_next(
        self, method: str, status: int, retry_after: float | None = None, error: str = ""
    ) -> None:
        """The next call of `method` fails with this HTTP status (429: ratelimited)."""
        error = error or ("ratelimited" if status == 429 else "internal_error")
        self._failures[method].append(_Failure(status, retry_after, error))

    async def push_message(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        channel_type: str = "im",
        ts: str | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """A person posts; returns the message ts. A mention in a channel also arrives
        as an app_mention event, as Slack sends both when the app subscribes to both."""
        if channel not in self._channels:
            self.add_channel(channel, is_im=channel_type == "im")
        ts = ts or self._next_ts()
        event: Json = {
            "client_msg_id": secrets.token_hex(8),
            "type": "message",
            "text": text,
            "user": user,
            "ts": ts,
            "team": TEAM,
            "channel": channel,
            "event_ts": ts,
            "channel_type": channel_type,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        self._events[ts] = event
        await self._emit(event)
        if f"<@{self.bot_user}" in text and channel_type != "im":
            mention = {k: v for k, v in event.items() if k != "channel_type"}
            await self._emit({**mention, "type": "app_mention"})
        return ts

    async def push_event(self, event: Any) -> str:
        """Any event body, well-formed or not, in an events_api envelope; returns its id."""
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "payload": {
                "team_id": TEAM,
                "api_app_id": APP_ID,
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{next(self._ids)}",
            },
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": 0,
            "retry_reason": "",
        }
        await self._send(envelope)
        return envelope_id

    async def push_command(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        command: str = "/gpu",
        channel_type: str = "channel",
    ) -> str:
        """A person types `/gpu <text>` in a channel or a DM; returns the trigger id."""
        if channel not in self._channels:
            self.add_channel(channel, is_im=channel_type == "im")
        info = self._channels[channel]
        trigger_id = f"{next(self._ids)}.{secrets.token_hex(6)}"
        payload = {
            "token": "verification-token",
            "team_id": TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "directmessage" if info.get("is_im") else info.get("name"),
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": f"http://127.0.0.1:{self._port}/hooks/commands/{channel}/{trigger_id}",
            "trigger_id": trigger_id,
        }
        await self._envelope("slash_commands", payload, accepts_response_payload=True)
        return trigger_id

    def button(
        self, channel: str, label: str, messages: list[Json] | None = None
    ) -> tuple[Json, Json]:
        """The newest message in `channel` (or in `messages`) with a button labelled
        `label`, and the button."""
        for message in reversed(self.messages.get(channel, []) if messages is None else messages):
            for block in message.get("blocks") or []:
                for element in block.get("elements", []) if block.get("type") == "actions" else []:
                    if element.get("text", {}).get("text") == label:
                        return message, {**element, "block_id": block.get("block_id", "")}
        raise AssertionError(f"no button {label!r} in {channel}: {self.messages.get(channel)}")

    async def press(
        self, channel: str, label: str, user: str = "U1", *, seen: Json | None = None
    ) -> str:
        """A person presses a button the bot drew: a block_actions envelope, as Slack sends
        it (the message as it stands, the action with its value); returns the action_ts.
        `seen`: the message as a client that has not caught up still shows it."""
        message, button = self.button(channel, label, None if seen is None else [seen])
        action_ts = f"{time.time():.6f}"
        container = {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel,
            "is_ephemeral": False,
        }
        if message.get("thread_ts"):
            container["thread_ts"] = message["thread_ts"]
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": APP_ID,
            "token": "verification-token",
            "container": container,
            "trigger_id": f"{next(self._ids)}.{secrets.token_hex(6)}",
            "team": {"id": TEAM, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": self._channels[channel].get("name", channel)},
            "message": json.loads(json.dumps(message)),
            "state": {"values": {}},
            "response_url": f"https://hooks.fake.slack.com/actions/{TEAM}/{action_ts}",
            "actions": [
                {
                    "action_id": button["action_id"],
                    "block_id": button["block_id"],
                    "text": button["text"],
                    "value": button.get("value", ""),
                    **({"style": button["style"]} if button.get("style") else {}),
                    "type": "button",
                    "action_ts": action_ts,
                }
            ],
        }
        await self._envelope("interactive", payload)
        return action_ts

    async def push_envelope(self, kind: str, payload: Any) -> str:
        """Any envelope type and payload, well-formed or not; returns its id."""
        return await self._envelope(kind, payload)

    async def push_frame(self, frame: str | bytes) -> None:
        """A raw socket frame as is: text for str, binary for bytes (hostile-input tests)."""
        assert self._socket is not None, "no client is connected"
        if isinstance(frame, bytes):
            await self._socket.ws.send_bytes(frame)
        else:
            await self._socket.ws.send_str(frame)

    async def redeliver(self, ts: str) -> None:
        """Send a message's event again in a new envelope, as Slack retries one."""
        await self._emit(self._events[ts], retry_attempt=1)

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's request that the client move to a new connection."""
        if self._socket is not None:
            await self._socket.ws.send_json({"type": "disconnect", "reason": reason})

    async def drop_socket(self) -> None:
        """Cut the connection without a close frame, like a network failure."""
        socket, self._socket = self._socket, None
        if socket is not None and socket.request.transport is not None:
            socket.request.transport.abort()

    async def wait_for(self, what: str, check: Callable[[], object], timeout: float = 5) -> None:
        """Poll until `check()` is true; fails naming `what` after `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def wait_messages(self, channel: str, count: int, timeout: float = 5) -> list[Json]:
        await self.wait_for(
            f"{count} message(s) in {channel}; have {self.messages.get(channel)}",
            lambda: len(self.messages.get(channel, [])) >= count,
            timeout,
        )
        return self.messages[channel]

    async def wait_acked(self, timeout: float = 5) -> None:
        """Until every envelope sent so far was acked."""
        await self.wait_for(f"acks for {list(self._sent)}", lambda: not self._sent, timeout)

    def texts(self, channel: str) -> list[str]:
        return [m["text"] for m in self.messages.get(channel, [])]

    def shown(self, channel: str) -> list[str]:
        """What a person reads of each message: its blocks' text where it has blocks
        (Slack shows those, `text` is only the notification), else its text."""
        return [_shown(m) for m in self.messages.get(channel, [])]

    def in_thread(self, channel: str, thread_ts: str) -> list[Json]:
        """The replies in the thread under `thread_ts`, oldest first."""
        return [m for m in self.messages.get(channel, []) if m.get("thread_ts") == thread_ts]

    # ---- Web API -------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        args: Json = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        if self._failures[method]:
            failure = self._failures[method].pop(0)
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            return web.json_response(
                {"ok": False, "error": failure.error}, status=failure.status, headers=headers
            )
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token")
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            return _error("not_authed")
        if token != wanted:
            wrong_kind = token in (self.app_token, self.bot_token)
            return _error("not_allowed_token_type" if wrong_kind else "invalid_auth")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return _error("unknown_method")
        result: web.Response = await handler(args)
        return result

    async def _m_auth_test(self, args: Json) -> web.Response:
        return _ok(
            url="https://fake.slack.com/",
            team="Fake Team",
            user="assistant",
            team_id=TEAM,
            user_id=self.bot_user,
            bot_id=BOT_ID,
            is_enterprise_install=False,
        )

    async def _m_apps_connections_open(self, args: Json) -> web.Response:
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        return _ok(url=f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={APP_ID}")

    async def _m_conversations_info(self, args: Json) -> web.Response:
        info = self._channels.get(str(args.get("channel")))
        return _ok(channel=info) if info else _error("channel_not_found")

    async def _m_chat_postMessage(self, args: Json) -> web.Response:
        channel, text = str(args.get("channel", "")), args.get("text")
        if channel not in self._channels:
            return _error("channel_not_found")
        if self._channels[channel].get("is_member") is False:
            return _error("not_in_channel")
        blocks = _blocks(args.get("blocks"))
        if blocks is False:
            return _error("invalid_blocks")
        if not text and not blocks:
            return _error("no_text")
        ts = self._next_ts()
        message: Json = {"type": "message", "text": text or "", "user": self.bot_user, "ts": ts}
        message.update(bot_id=BOT_ID, app_id=APP_ID, team=TEAM)
        if blocks:
            message["blocks"] = blocks
        if args.get("thread_ts"):
            said = self._events.get(str(args["thread_ts"]))  # a person's message is a root too
            if not any(m["ts"] == args["thread_ts"] for m in self.messages[channel]) and (
                said is None or said.get("channel") != channel
            ):
                return _error("thread_not_found")
            message["thread_ts"] = args["thread_ts"]
            if args.get("reply_broadcast") in (True, "true", "1"):
                message["subtype"] = "thread_broadcast"  # shown in the channel too
        self.messages[channel].append(message)
        self._echo({**message, "channel": channel, "event_ts": ts})
        return _ok(channel=channel, ts=ts, message=message)

    async def _m_chat_update(self, args: Json) -> web.Response:
        channel, ts, text = str(args.get("channel", "")), args.get("ts"), args.get("text")
        original = next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)
        if original is None:
            return _error("message_not_found")
        blocks = _blocks(args.get("blocks"))
        if blocks is False:
            return _error("invalid_blocks")
        if not text and not blocks:
            return _error("no_text")
        previous = dict(original)
        original["text"] = text or ""
        update: Json = {"ts": ts, "text": text or ""}
        if blocks is not None:  # absent: the message keeps the blocks it had
            original["blocks"] = update["blocks"] = blocks
        self.updates[channel].append(update)
        self._echo(
            {
                "type": "message",
                "subtype": "message_changed",
                "hidden": True,
                "channel": channel,
                "message": dict(original),
                "previous_message": previous,
                "ts": self._next_ts(),
            }
        )
        return _ok(channel=channel, ts=ts, text=text)

    async def _m_chat_postEphemeral(self, args: Json) -> web.Response:
        channel, user, text = str(args.get("channel", "")), args.get("user"), args.get("text")
        if channel not in self._channels:
            return _error("channel_not_found")
        if not user:
            return _error("user_not_found")
        if not text and not args.get("blocks"):
            return _error("no_text")
        ephemeral: Json = {"user": user, "text": text or ""}
        if args.get("thread_ts"):
            ephemeral["thread_ts"] = args["thread_ts"]
        self.ephemerals[channel].append(ephemeral)
        return _ok(message_ts=self._next_ts())

    async def _m_files_getUploadURLExternal(self, args: Json) -> web.Response:
        filename, length = args.get("filename"), args.get("length")
        if not filename or not str(length or "").isdigit():
            return _error("invalid_arguments")
        file_id = f"F{next(self._ids):08d}"
        self._uploads[file_id] = Upload(file_id, str(filename), int(str(length)))
        upload_url = f"http://127.0.0.1:{self._port}/upload/v1/{file_id}"
        return _ok(upload_url=upload_url, file_id=file_id)

    async def _m_files_completeUploadExternal(self, args: Json) -> web.Response:
        channel = str(args.get("channel_id", ""))
        if channel not in self._channels:
            return _error("channel_not_found")
        done: list[Json] = []
        for item in json.loads(str(args.get("files", "[]"))):
            upload = self._uploads.pop(str(item.get("id")), None)
            if upload is None or len(upload.content) != upload.length:
                return _error("file_not_found" if upload is None else "file_upload_size_mismatch")
            upload.title = str(item.get("title") or upload.filename)
            upload.initial_comment = args.get("initial_comment")
            upload.thread_ts = args.get("thread_ts") or None
            self.files[channel].append(upload)
            done.append({"id": upload.file_id, "name": upload.filename, "title": upload.title})
        return _ok(files=done)

    async def _response_url(self, request: web.Request) -> web.Response:
        """A slash command's response_url: a message for the channel, or only for who
        typed the command (response_type ephemeral, the default)."""
        self.responses[request.match_info["channel"]].append(await request.json())
        return web.Response(text="ok", content_type="text/plain")

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self._uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        upload.content = await request.read()
        return web.Response(text=f"OK - {len(upload.content)}", content_type="text/plain")

    # ---- Socket Mode ---------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # a ticket is good for one connection attempt
        if self.refuse_sockets > 0:
            self.refuse_sockets -= 1
            return web.Response(status=503, text="try again")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self._socket is not None:  # one connection at a time, like a single-socket app
            await self._socket.ws.close()
        socket = self._socket = _Socket(ws, request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                "connection_info": {"app_id": APP_ID},
            }
        )
        self.connections += 1
        backlog, self._backlog = self._backlog, []
        for envelope in backlog:
            await self._send(envelope)
        with contextlib.suppress(ConnectionError):
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                envelope_id = json.loads(msg.data).get("envelope_id")
                if envelope_id:
                    self._sent.pop(envelope_id, None)
                    self.acked.add(envelope_id)
        if self._socket is socket:
            self._socket = None
        await self._retry_unacked(socket)
        return ws

    async def _retry_unacked(self, socket: _Socket) -> None:
        """Events sent on a socket that ended before they were acked go out again, as
        Slack retries them; slash commands and presses are not retried (Slack tells the
        person it failed)."""
        for envelope_id, sent in list(self._sent.items()):
            if sent.socket is not socket:
                continue
            del self._sent[envelope_id]
            if sent.envelope["type"] == "events_api":
                retry = sent.envelope["retry_attempt"] + 1
                await self._send(
                    {
                        **sent.envelope,
                        "envelope_id": f"env-{next(self._ids)}",
                        "retry_attempt": retry,
                        "retry_reason": "timeout",
                    }
                )

    async def _emit(self, event: Json, retry_attempt: int = 0) -> None:
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "payload": {
                "token": "verification-token",
                "team_id": TEAM,
                "api_app_id": APP_ID,
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{event['ts'].replace('.', '')}",
                "event_time": int(float(event["ts"])),
                "authorizations": [{"team_id": TEAM, "user_id": self.bot_user, "is_bot": True}],
                "is_ext_shared_channel": False,
            },
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._send(envelope)

    async def _envelope(
        self, kind: str, payload: Any, *, accepts_response_payload: bool = False
    ) -> str:
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": kind,
            "accepts_response_payload": accepts_response_payload,
        }
        await self._send(envelope)
        return envelope_id

    async def _send(self, envelope: Json) -> None:
        """Send now, or when a client connects; tracked until acked."""
        socket = self._socket
        self._sent[envelope["envelope_id"]] = _Sent(envelope, socket)
        if socket is None:
            self._backlog.append(envelope)
            return
        try:
            await socket.ws.send_json(envelope)
        except ConnectionError:
            self._sent[envelope["envelope_id"]].socket = None
            self._backlog.append(envelope)

    def _echo(self, event: Json) -> None:
        if self.echo_bot_messages:
            task = asyncio.create_task(self._emit(event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"


def _blocks(value: Any) -> list[Json] | bool | None:
    """Blocks as sent (a JSON list, or its text in a form); None if absent, False if bad."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return False
    if not isinstance(value, list) or not all(isinstance(b, dict) and b.get("type") for b in value):
        return False
    return value


def _shown(message: Json) -> str:
    blocks = message.get("blocks")
    if not blocks:
        return str(message["text"])
    lines: list[str] = []
    for block in blocks:
        if block.get("type") == "section":
            lines.append(block["text"]["text"])
        elif block.get("type") == "context":
            lines.extend(e.get("text", "") for e in block.get("elements", []))
        elif block.get("type") == "actions":
            lines.append(" ".join(f"[{e['text']['text']}]" for e in block.get("elements", [])))
    return "\n".join(lines)


def _ok(**data: Any) -> web.Response:
    return web.json_response({"ok": True, **data})


def _error(error: str) -> web.Response:
    return web.json_response({"ok": False, "error": error})
