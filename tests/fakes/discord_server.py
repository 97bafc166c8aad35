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

Interactions as Discord sends them (INTERACTION_CREATE over the gateway, answered at
POST /interactions/{id}/{token}/callback, then edited and followed up through
/webhooks/{application}/{token}): `push_command` (a slash command) and `push_press` (a
button under a message) return the interaction's id; `interactions[id]` records how it
was answered. Application commands are kept per scope ("global" or the guild id) as the
last bulk overwrite (PUT) left them; threads started from a message get its id.
An interaction must be acknowledged (its callback) within `ack_limit_s` of its dispatch
(3 s, as on Discord; later ones get 404 Unknown interaction and land in `late_callbacks`);
its token then serves edits and followups for 15 minutes.
`add_thread` is a thread a user started on its own (its own id), announced over the gateway
(THREAD_CREATE) or not, as when the bot missed it; GET /channels/{id} answers for threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
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
LOADING = 1 << 7  # message flag of a deferred response ("… is thinking")
EPHEMERAL = 1 << 6
THREAD_TYPES = (10, 11, 12)

Json = dict[str, Any]


@dataclass
class Sent:
    """A message the bot posted (or edited), as the fake received it."""

    id: int
    channel_id: int
    content: str
    attachments: list[tuple[str, bytes]] = field(default_factory=list)
    allowed_mentions: Json | None = None
    components: list[Json] = field(default_factory=list)


@dataclass
class Interaction:
    """An interaction the fake dispatched, and what the bot answered to it."""

    id: int
    token: str
    type: int  # 2 application command, 3 message component
    channel_id: int
    callbacks: list[Json] = field(default_factory=list)  # each callback body (type, data)
    dispatched: float = 0.0  # loop time it was sent over the gateway
    original: int | None = None  # the message @original names
    edits: list[Json] = field(default_factory=list)  # PATCH @original bodies
    followups: list[Json] = field(default_factory=list)  # POST /webhooks/{app}/{token} bodies
    deleted: bool = False  # DELETE @original


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
        # application commands as the last bulk overwrite left them: "global" or a guild id
        self.commands: dict[str | int, list[Json]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.ack_limit_s = 3.0  # Discord's window for the first response to an interaction
        self.late_callbacks: list[int] = []  # interactions acknowledged too late (refused)
        self.threads: dict[int, Json] = {}  # thread id (= its root message's id) -> channel
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
        app.router.add_post(
            f"{p}/channels/{{channel_id}}/messages/{{message_id}}/threads", self._start_thread
        )
        app.router.add_put(f"{p}/applications/{{app_id}}/commands", self._put_commands)
        app.router.add_put(
            f"{p}/applications/{{app_id}}/guilds/{{guild_id}}/commands", self._put_commands
        )
        app.router.add_post(f"{p}/interactions/{{id}}/{{token}}/callback", self._callback)
        original = f"{p}/webhooks/{{app_id}}/{{token}}/messages/@original"
        app.router.add_patch(original, self._edit_original)
        app.router.add_delete(original, self._delete_original)
        app.router.add_post(f"{p}/webhooks/{{app_id}}/{{token}}", self._followup)
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

    async def add_thread(
        self, parent: int, name: str = "questions", *, announce: bool = True
    ) -> int:
        """A user starts a thread in channel `parent` (not from a message); its id.

        `announce=False`: the bot is not told (no THREAD_CREATE, as for a thread started
        while it was away), so discord.py holds no copy of it."""
        thread_id = next(self._ids)
        thread = self._thread_json(thread_id, parent, name, owner=USER_ID, archive=1440)
        async with self._changed:
            self.threads[thread_id] = thread
            self._changed.notify_all()
        if announce:
            await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread_id

    def archive(self, thread_id: int) -> None:
        """A thread archived for lack of messages: a new gateway session is not told of it
        (GUILD_CREATE lists active threads); a message sent to it opens it again."""
        self.threads[thread_id]["thread_metadata"]["archived"] = True

    async def push_command(
        self,
        channel_id: int,
        name: str,
        args: str | None = None,
        *,
        user_id: int = USER_ID,
        user_name: str = "ann",
        guild: bool = True,
    ) -> int:
        """A user runs slash command `/name` (with its `args` option when given)."""
        data: Json = {"id": str(next(self._ids)), "name": name, "type": 1}
        if args is not None:
            data["options"] = [{"name": "args", "type": 3, "value": args}]
        return await self.push_interaction(
            self.interaction_payload(2, channel_id, data, user_id, user_name, guild=guild)
        )

    async def push_press(
        self,
        channel_id: int,
        message_id: int,
        custom_id: str,
        *,
        user_id: int = USER_ID,
        user_name: str = "ann",
        guild: bool = True,
    ) -> int:
        """A user presses the button `custom_id` under message `message_id`."""
        data = {"custom_id": custom_id, "component_type": 2}
        payload = self.interaction_payload(3, channel_id, data, user_id, user_name, guild=guild)
        payload["message"] = self._messages[message_id]
        return await self.push_interaction(payload)

    def interaction_payload(
        self,
        kind: int,
        channel_id: int,
        data: Json,
        user_id: int = USER_ID,
        user_name: str = "ann",
        *,
        guild: bool = True,
    ) -> Json:
        """An INTERACTION_CREATE payload of API v10 (tests may spoil it before pushing)."""
        user = self._user(user_id, user_name)
        channel = self.threads.get(channel_id) or (
            self._channel(channel_id)
            if channel_id in self.channels
            else {"id": str(channel_id), "type": 1, "recipients": [user]}
        )
        payload: Json = {
            "id": str(next(self._ids)),
            "application_id": str(APP_ID),
            "type": kind,
            "data": data,
            "channel_id": str(channel_id),
            "channel": channel,
            "token": f"interaction-token-{next(self._ids)}",
            "version": 1,
            "locale": "en-US",
            "app_permissions": "1071698660929",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)} if guild else {},
            "context": 0 if guild else 1,
            "attachment_size_limit": 10 << 20,
        }
        if guild:
            payload["guild_id"] = str(GUILD_ID)
            payload["guild_locale"] = "en-US"
            payload["member"] = {
                "user": user,
                "roles": [],
                "joined_at": datetime.now(UTC).isoformat(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": "1071698660929",
            }
        else:
            payload["user"] = user
        return payload

    async def push_interaction(self, payload: Json) -> int:
        """Dispatch an INTERACTION_CREATE as it is (also a malformed one); its id, or 0."""
        try:
            interaction = Interaction(
                int(payload["id"]),
                str(payload["token"]),
                int(payload["type"]),
                int(payload["channel_id"]),
            )
            message = payload.get("message")
            if isinstance(message, dict):
                interaction.original = int(message["id"])
            interaction.dispatched = asyncio.get_running_loop().time()
            self.interactions[interaction.id] = interaction
        except (KeyError, TypeError, ValueError):
            interaction = None
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction.id if interaction is not None else 0

    async def wait_answered(self, interaction_id: int, timeout: float = 5) -> Interaction:
        """The interaction once it was acknowledged (its callback arrived)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: bool(self.interactions[interaction_id].callbacks))
        return self.interactions[interaction_id]

    async def wait_for(self, check: Any, timeout: float = 5) -> None:
        """Wait until `check()` holds (re-checked on every request the fake records)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(check)

    def message(self, message_id: int) -> Json | None:
        """A message as it stands now (after edits), None once deleted."""
        return self._messages.get(message_id)

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
            # the active threads only, as Discord sends them; an archived one is not listed
            "threads": [t for t in self.threads.values() if not t["thread_metadata"]["archived"]],
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
        by_token = route.split()[1].startswith(("/webhooks/", "/interactions/"))
        if not by_token and request.headers.get("Authorization") != f"Bot {self.token}":
            response = _error(401, "401: Unauthorized")
        elif self._failures[route]:
            await request.read()
            response = self._failure(self._failures[route].popleft())
        else:
            response = await handler(request)
        async with self._changed:
            self.requests.append((route, response.status))
            self._changed.notify_all()
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
        if channel_id in self.threads:
            return _json(self.threads[channel_id])
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
        data["components"] = payload.get("components") or []
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
        if channel_id in self.threads:  # a message opens an archived thread again
            self.threads[channel_id]["thread_metadata"]["archived"] = False
        self._messages[message_id] = data
        await self._record(
            self.sent,
            Sent(
                message_id,
                channel_id,
                data["content"],
                attachments,
                payload.get("allowed_mentions"),
                data["components"],
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
        if (
            message is None
            or message["author"]["id"] != str(BOT_ID)
            or message["channel_id"] != str(channel_id)  # a thread's message: its own id
        ):
            return _error(404, "Unknown Message", 10008)
        payload = await request.json()
        await self._edit(channel_id, message, payload)
        return _json(message)

    async def _edit(self, channel_id: int, message: Json, payload: Json) -> None:
        for key in ("content", "components"):
            if key in payload:
                message[key] = payload[key] if payload[key] is not None else []
        message["flags"] = int(message.get("flags") or 0) & ~LOADING
        message["edited_timestamp"] = datetime.now(UTC).isoformat()
        await self._record(
            self.edits,
            Sent(
                int(message["id"]),
                channel_id,
                message["content"],
                [],
                payload.get("allowed_mentions"),
                list(message.get("components") or []),
            ),
        )

    async def _start_thread(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        message_id = int(request.match_info["message_id"])
        if channel_id not in self.channels:  # a DM (or unknown): no threads there
            return _error(400, "Cannot execute action on this channel type", 50024)
        message = self._messages.get(message_id)
        if message is None or message["channel_id"] != str(channel_id):
            return _error(404, "Unknown Message", 10008)
        if message_id in self.threads:
            return _error(400, "A thread has already been created for this message", 160004)
        payload = await request.json()
        name = str(payload.get("name") or "")
        if not 1 <= len(name) <= 100:
            return _error(400, "Invalid Form Body: name must be 1-100 characters", 50035)
        archive = int(payload.get("auto_archive_duration") or 1440)
        thread = self._thread_json(message_id, channel_id, name, owner=BOT_ID, archive=archive)
        async with self._changed:
            self.threads[message_id] = thread
            self._changed.notify_all()
        await self._broadcast("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread, 201)

    def _thread_json(
        self, thread_id: int, parent: int, name: str, *, owner: int, archive: int
    ) -> Json:
        return {
            "id": str(thread_id),
            "guild_id": str(GUILD_ID),
            "parent_id": str(parent),
            "owner_id": str(owner),
            "name": name,
            "type": 11,  # PUBLIC_THREAD
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": archive,
                "archive_timestamp": datetime.now(UTC).isoformat(),
                "locked": False,
            },
        }

    async def _put_commands(self, request: web.Request) -> web.Response:
        if int(request.match_info["app_id"]) != APP_ID:
            return _error(403, "Missing Access", 50001)
        guild = request.match_info.get("guild_id")
        scope: str | int = int(guild) if guild is not None else "global"
        if guild is not None and int(guild) != GUILD_ID:
            return _error(403, "Missing Access", 50001)  # the bot is not in that guild
        payload = await request.json()
        problem = _command_problem(payload)
        if problem is not None:
            return _error(400, f"Invalid Form Body: {problem}", 50035)
        stored = [
            {
                **command,
                "id": str(next(self._ids)),
                "application_id": str(APP_ID),
                "version": str(next(self._ids)),
                "default_member_permissions": None,
                **({"guild_id": str(guild)} if guild is not None else {}),
            }
            for command in payload
        ]
        self.commands[scope] = stored
        return _json(stored)

    def _interaction(self, token: str) -> Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(int(request.match_info["id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            return _error(404, "Unknown interaction", 10062)
        if interaction.callbacks:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        if asyncio.get_running_loop().time() - interaction.dispatched > self.ack_limit_s:
            self.late_callbacks.append(interaction.id)
            return _error(404, "Unknown interaction", 10062)
        body = await request.json()
        kind = body.get("type")
        if kind in (4, 5):  # a message under the command: with content, or "thinking…"
            inner = body.get("data") or {}
            data = self._message(
                interaction.channel_id,
                self._bot(),
                str(inner.get("content") or ""),
                guild=self._is_guild(interaction.channel_id),
            )
            data["flags"] = LOADING if kind == 5 else int(inner.get("flags") or 0)
            data["components"] = inner.get("components") or []
            data["webhook_id"] = str(APP_ID)
            data["type"] = 20  # CHAT_INPUT_COMMAND
            self._messages[int(data["id"])] = data
            interaction.original = int(data["id"])
        elif kind not in (6, 7) or interaction.type != 3:
            return _error(400, f"Invalid interaction response type {kind}", 50035)
        async with self._changed:
            interaction.callbacks.append(body)
            self._changed.notify_all()
        if "with_response" in request.query:
            return _json({"interaction": {"id": str(interaction.id), "type": interaction.type}})
        return web.Response(status=204)

    async def _edit_original(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request.match_info["token"])
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        message = self._messages.get(interaction.original or 0)
        if not interaction.callbacks or message is None:
            return _error(404, "Unknown Message", 10008)
        payload = await self._body(request)
        interaction.edits.append(payload)
        await self._edit(int(message["channel_id"]), message, payload)
        return _json(message)

    async def _delete_original(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request.match_info["token"])
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        if not interaction.callbacks or self._messages.pop(interaction.original or 0, None) is None:
            return _error(404, "Unknown Message", 10008)
        async with self._changed:
            interaction.deleted = True
            self._changed.notify_all()
        return web.Response(status=204)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request.match_info["token"])
        if interaction is None or not interaction.callbacks:
            return _error(404, "Unknown Webhook", 10015)
        payload = await self._body(request)
        data = self._message(
            interaction.channel_id,
            self._bot(),
            str(payload.get("content") or ""),
            guild=self._is_guild(interaction.channel_id),
        )
        data["flags"] = int(payload.get("flags") or 0)
        data["webhook_id"] = str(APP_ID)
        if not data["flags"] & EPHEMERAL:  # an ephemeral one is seen by the presser only
            self._messages[int(data["id"])] = data
        async with self._changed:
            interaction.followups.append(payload)
            self._changed.notify_all()
        return _json(data)

    async def _body(self, request: web.Request) -> Json:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader) and part.name == "payload_json":
                    body: Json = json.loads(await part.read())
                    return body
            return {}
        body = await request.json()
        return body if isinstance(body, dict) else {}

    def _is_guild(self, channel_id: int) -> bool:
        return channel_id in self.channels or channel_id in self.threads

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


def _command_problem(payload: Any) -> str | None:
    """What Discord would refuse in a bulk overwrite of CHAT_INPUT commands, if anything."""
    if not isinstance(payload, list) or len(payload) > 100:
        return "a list of at most 100 commands"
    names = [c.get("name") for c in payload if isinstance(c, dict)]
    if len(names) != len(payload) or len(set(names)) != len(names):
        return "each command an object, names unique"
    for command in payload:
        name, description = command.get("name"), command.get("description")
        if not isinstance(name, str) or not re.fullmatch(r"[-_a-z0-9]{1,32}", name):
            return f"name {name!r}: 1-32 of a-z 0-9 - _"
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            return f"/{name}: description 1-100 characters"
        for option in command.get("options") or []:
            if not re.fullmatch(r"[-_a-z0-9]{1,32}", str(option.get("name"))):
                return f"/{name}: option name {option.get('name')!r}"
            if not 1 <= len(str(option.get("description") or "")) <= 100:
                return f"/{name}: option description 1-100 characters"
    return None
