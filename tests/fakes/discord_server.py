"""A fake Discord on 127.0.0.1: the REST routes and the gateway that discord.py 2.x uses.

It exercises the real network stack of the adapter (aiohttp client, discord.py's HTTP
client, rate-limit handling, the websocket protocol) without an account. It answers like
Discord does where the adapter cares: `application/json` bodies, 401/403/404/429/5xx with
Discord's error shapes and rate-limit headers, the bot's own messages echoed back over the
gateway, zlib-free TEXT frames (discord.py asks for zlib-stream but accepts plain text).

    fake = FakeDiscord(); await fake.start()
    DiscordChannel(TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url)
    mid = await fake.push_message(ADMIN_CHANNEL, "hi", mentions_bot=True)
    await fake.wait_sent(ADMIN_CHANNEL, 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

TOKEN = "fake-bot-token-not-a-secret"
API_PREFIX = "/api/v10"
BOT_ID = 1000
APP_ID = 1001
OWNER_ID = 1002
USER_ID = 2001
GUILD_ID = 555
ADMIN_CHANNEL = 987
OTHER_CHANNEL = 988
MESSAGE_CONTENT_INTENT = 1 << 15

Json = dict[str, Any]


@dataclass
class Sent:
    """A message the bot posted (or edited), as the fake received it."""

    id: int
    channel_id: int
    content: str
    attachments: list[tuple[str, bytes]] = field(default_factory=list)
    allowed_mentions: Json | None = None


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    via: bool


@dataclass
class _Session:
    ws: web.WebSocketResponse
    session_id: str
    seq: int = 0
    identified: bool = False


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body only if content-type is exactly application/json (no charset).
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, message: str, code: int = 0) -> web.Response:
    return _json({"message": message, "code": code}, status)


class FakeDiscord:
    """REST + gateway; tests push user messages in and read what the bot sent."""

    def __init__(self, *, token: str = TOKEN, bot_name: str = "assistant") -> None:
        self.token = token
        self.bot_name = bot_name
        self.channels: dict[int, str] = {ADMIN_CHANNEL: "ops", OTHER_CHANNEL: "general"}
        self.message_content_enabled = True  # the privileged intent, as set in the portal
        self.sent: dict[int, list[Sent]] = defaultdict(list)
        self.edits: dict[int, list[Sent]] = defaultdict(list)
        # ("POST /channels/{channel_id}/messages", status) for every REST request
        self.requests: list[tuple[str, int]] = []
        self.identifies = 0
        self.resumes = 0
        self._messages: dict[int, Json] = {}
        self._events: dict[int, Json] = {}  # MESSAGE_CREATE payloads pushed, for redelivery
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._sessions: list[_Session] = []
        self._session_ids = itertools.count(1)
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._rest_middleware])
        p = API_PREFIX
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get(f"{p}/users/@me", self._me)
        app.router.add_get(f"{p}/oauth2/applications/@me", self._application)
        app.router.add_get(f"{p}/gateway", self._gateway_info)
        app.router.add_get(f"{p}/gateway/bot", self._gateway_info)
        app.router.add_get(f"{p}/channels/{{channel_id}}", self._get_channel)
        app.router.add_post(f"{p}/channels/{{channel_id}}/messages", self._post_message)
        app.router.add_get(
            f"{p}/channels/{{channel_id}}/messages/{{message_id}}", self._get_message
        )
        app.router.add_patch(
            f"{p}/channels/{{channel_id}}/messages/{{message_id}}", self._patch_message
        )
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def aclose(self) -> None:
        for session in list(self._sessions):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- test controls -----------------------------------------------------------------

    def fail_next(
        self, route: str, status: int, retry_after: float | None = None, *, via: bool = True
    ) -> None:
        """Answer the next request to `route` (e.g. "POST /channels/{channel_id}/messages")
        with `status`. A 429 carries retry_after and Discord's rate-limit headers; `via=False`
        drops the `Via` header, which discord.py takes for a Cloudflare ban and does not retry.
        """
        self._failures[route].append(_Failure(status, retry_after, via))

    def reject_token(self) -> None:
        """From now on the bot's token is refused (REST 401, gateway close 4004)."""
        self.token = "a-token-nobody-has"

    async def push_message(
        self,
        channel_id: int,
        text: str,
        *,
        author_id: int = USER_ID,
        author_name: str = "ann",
        guild: bool = True,
        mentions_bot: bool = False,
        reply_to: int | None = None,
        bot: bool = False,
    ) -> int:
        """A user posts `text`; dispatched as MESSAGE_CREATE to every identified session.

        With `guild=False` it is a DM: `channel_id` is then the DM channel's id.
        `mentions_bot` prefixes the text with the bot's mention, as Discord clients do.
        """
        author = self._user(author_id, author_name, bot=bot)
        content = f"<@{BOT_ID}> {text}" if mentions_bot else text
        data = self._message(channel_id, author, content, guild=guild)
        if mentions_bot:
            data["mentions"] = [self._user(BOT_ID, self.bot_name, bot=True)]
        if reply_to is not None:
            data["type"] = 19
            data["message_reference"] = {"message_id": str(reply_to), "channel_id": str(channel_id)}
            data["referenced_message"] = self._messages.get(reply_to)
        self._messages[int(data["id"])] = data
        self._events[int(data["id"])] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return int(data["id"])

    async def redeliver(self, message_id: int) -> None:
        """Dispatch an already pushed MESSAGE_CREATE again (as after a gateway replay)."""
        await self.dispatch("MESSAGE_CREATE", self._events[message_id])

    async def dispatch(self, event: str, data: Json, timeout: float = 5) -> None:
        """Send an event to every identified session, waiting for one after a drop."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.connected > 0)
        await self._broadcast(event, data)

    async def _broadcast(self, event: str, data: Json) -> None:
        for session in list(self._sessions):
            if session.identified and not session.ws.closed:
                await self._send_dispatch(session, event, data)

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every gateway socket with a resumable close code."""
        for session in list(self._sessions):
            await session.ws.close(code=code, message=b"dropped by the fake")

    @property
    def connected(self) -> int:
        return sum(1 for s in self._sessions if s.identified and not s.ws.closed)

    async def wait_sent(self, channel_id: int, count: int, timeout: float = 5) -> list[Sent]:
        """The bot's messages in a channel once there are at least `count` of them."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.sent[channel_id]) >= count)
        return list(self.sent[channel_id])

    def count(self, route: str, status: int | None = None) -> int:
        return sum(1 for r, s in self.requests if r == route and status in (None, s))

    # ---- payloads ----------------------------------------------------------------------

    def _user(self, user_id: int, name: str, *, bot: bool = False) -> Json:
        user: Json = {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "public_flags": 0,
        }
        if bot:
            user["bot"] = True
        return user

    def _bot(self) -> Json:
        return {**self._user(BOT_ID, self.bot_name, bot=True), "verified": True, "flags": 0}

    def _message(self, channel_id: int, author: Json, content: str, *, guild: bool) -> Json:
        data: Json = {
            "id": str(next(self._ids)),
            "channel_id": str(channel_id),
            "author": author,
            "content": content,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if guild:
            data["guild_id"] = str(GUILD_ID)
        return data

    def _channel(self, channel_id: int) -> Json:
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(GUILD_ID),
            "name": self.channels[channel_id],
            "position": list(self.channels).index(channel_id),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
        }

    def _guild(self) -> Json:
        return {
            "id": str(GUILD_ID),
            "name": "ml-lab",
            "unavailable": False,
            "owner_id": str(OWNER_ID),
            "member_count": 2,
            "large": False,
            "features": [],
            "roles": [
                {
                    "id": str(GUILD_ID),
                    "name": "@everyone",
                    "permissions": "1071698660929",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "channels": [self._channel(c) for c in self.channels],
            "members": [
                {
                    "user": self._bot(),
                    "roles": [],
                    "joined_at": datetime.now(UTC).isoformat(),
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
            ],
            "threads": [],
            "emojis": [],
            "stickers": [],
        }

    # ---- REST --------------------------------------------------------------------------

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or not resource.canonical.startswith(API_PREFIX):
            response: web.StreamResponse = await handler(request)
            return response
        route = f"{request.method} {resource.canonical.removeprefix(API_PREFIX)}"
        if request.headers.get("Authorization") != f"Bot {self.token}":
            response = _error(401, "401: Unauthorized")
        elif self._failures[route]:
            await request.read()
            response = self._failure(self._failures[route].popleft())
        else:
            response = await handler(request)
        self.requests.append((route, response.status))
        return response

    def _failure(self, failure: _Failure) -> web.Response:
        status = failure.status
        if status == 429:
            wait = failure.retry_after if failure.retry_after is not None else 1.0
            headers = {
                "Retry-After": str(math.ceil(wait)),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + wait:.3f}",
                "X-RateLimit-Reset-After": f"{wait:.3f}",
                "X-RateLimit-Bucket": "fakebucket0001",
                "X-RateLimit-Scope": "user",
            }
            if failure.via:
                headers["Via"] = "1.1 google"
            body = {"message": "You are being rate limited.", "retry_after": wait, "global": False}
            return _json(body, 429, headers)
        known = {
            401: ("401: Unauthorized", 0),
            403: ("Missing Permissions", 50013),
            404: ("Unknown Channel", 10003),
        }
        message, code = known.get(status, (f"{status}: Server Error", 0))
        return _error(status, message, code)

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self._bot())

    async def _application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(APP_ID),
                "name": self.bot_name,
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": self._user(OWNER_ID, "owner"),
                "verify_key": "0" * 64,
                "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
            }
        )

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        if channel_id not in self.channels:
            return _error(404, "Unknown Channel", 10003)
        return _json(self._channel(channel_id))

    async def _post_message(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        attachments: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            payload: Json = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader):
                    raw = await part.read()
                    if part.name == "payload_json":
                        payload = json.loads(raw)
                    else:
                        attachments.append((part.filename or "", bytes(raw)))
        else:
            payload = await request.json()
        data = self._message(
            channel_id,
            self._bot(),
            str(payload.get("content") or ""),
            guild=self._is_guild(channel_id),
        )
        data["attachments"] = [
            {
                "id": str(next(self._ids)),
                "filename": name,
                "size": len(blob),
                "url": f"https://cdn.example.invalid/{name}",
                "proxy_url": f"https://media.example.invalid/{name}",
                "content_type": "image/png" if name.endswith(".png") else None,
            }
            for name, blob in attachments
        ]
        message_id = int(data["id"])
        self._messages[message_id] = data
        await self._record(
            self.sent,
            Sent(
                message_id,
                channel_id,
                data["content"],
                attachments,
                payload.get("allowed_mentions"),
            ),
        )
        await self._broadcast("MESSAGE_CREATE", data)  # Discord echoes the bot's own messages
        return _json(data)

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._messages.get(int(request.match_info["message_id"]))
        if message is None:
            return _error(404, "Unknown Message", 10008)
        return _json(message)

    async def _patch_message(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        message_id = int(request.match_info["message_id"])
        message = self._messages.get(message_id)
        if message is None or message["author"]["id"] != str(BOT_ID):
            return _error(404, "Unknown Message", 10008)
        payload = await request.json()
        if "content" in payload:
            message["content"] = payload["content"]
        message["edited_timestamp"] = datetime.now(UTC).isoformat()
        await self._record(
            self.edits,
            Sent(message_id, channel_id, message["content"], [], payload.get("allowed_mentions")),
        )
        return _json(message)

    def _is_guild(self, channel_id: int) -> bool:
        return channel_id in self.channels

    async def _record(self, where: dict[int, list[Sent]], item: Sent) -> None:
        async with self._changed:
            where[item.channel_id].append(item)
            self._changed.notify_all()

    # ---- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = _Session(ws, f"fake-session-{next(self._session_ids)}")
        self._sessions.append(session)
        try:
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                await self._gateway_op(session, json.loads(msg.data))
        finally:
            self._sessions.remove(session)
        return ws

    async def _gateway_op(self, session: _Session, payload: Json) -> None:
        op, data = payload.get("op"), payload.get("d") or {}
        ws = session.ws
        if op == 1:  # heartbeat
            await ws.send_str(json.dumps({"op": 11}))
        elif op == 2:  # identify
            self.identifies += 1
            if data["token"] != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
            elif data["intents"] & MESSAGE_CONTENT_INTENT and not self.message_content_enabled:
                await ws.close(code=4014, message=b"Disallowed intent(s).")
            else:
                await self._send_dispatch(session, "READY", self._ready(session))
                await self._send_dispatch(session, "GUILD_CREATE", self._guild())
                await self._identified(session)
        elif op == 6:  # resume
            self.resumes += 1
            if data["token"] != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            session.session_id = data["session_id"]
            session.seq = int(data.get("seq") or 0)
            await self._send_dispatch(session, "RESUMED", {})
            await self._identified(session)

    async def _identified(self, session: _Session) -> None:
        async with self._changed:
            session.identified = True
            self._changed.notify_all()

    def _ready(self, session: _Session) -> Json:
        return {
            "v": 10,
            "user": self._bot(),
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
        }

    async def _send_dispatch(self, session: _Session, event: str, data: Json) -> None:
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        with contextlib.suppress(ConnectionError):
            await session.ws.send_str(json.dumps(frame))
