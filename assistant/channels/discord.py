"""Discord: a bot account over discord.py (REST + gateway).

A chat is a Discord channel, `dc:<channel id>`: a guild text channel or a DM. In a guild,
text is addressed to the assistant when it mentions the bot, replies to one of its
messages or starts with its name; the orchestrator stores the rest without answering.

Sending goes through one `SendQueue`. discord.py waits out a 429 itself (it sleeps
`retry_after` and repeats the request, so the message is posted once) as long as the wait
is under `MAX_RATELIMIT_WAIT_S`; a longer one surfaces as `RateLimited` and becomes
`RetryAfter`, so the queue waits instead. It also repeats 500/502/504 a few times before
the error reaches us as a `TransientError`.

`api_url`/`gateway_url` point this one client elsewhere (tests, a proxy): a subclass of
discord.py's `HTTPClient` is installed on this client only and rewrites its URLs. No
process-wide setting (`Route.BASE`, `DiscordWebSocket.DEFAULT_GATEWAY`) is changed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from assistant.background import cancel
from assistant.channels.base import Channel, Inbox, IncomingMessage
from assistant.channels.delivery import RetryAfter, SendQueue, TransientError, split_text
from assistant.errors import ChannelError

with warnings.catch_warnings():
    # discord.py imports audioop for voice (unused here); it warns on Python 3.11+.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord.gateway import DiscordWebSocket
    from discord.http import HTTPClient, Route
    from discord.state import ConnectionState

log = logging.getLogger(__name__)

T = TypeVar("T")
LIMIT = 2000  # characters per Discord message
MAX_RATELIMIT_WAIT_S = 30.0  # discord.py waits out shorter 429s itself (30 is its minimum)
READY_TIMEOUT_S = 60.0
DEFAULT_RETRY_AFTER_S = 5.0  # a 429 without a usable retry_after
REMEMBERED = 1024  # message ids kept for de-duplication and reply detection
NO_MENTIONS = discord.AllowedMentions.none()
REJECTED = "discord: the bot token was rejected (401); check DISCORD_BOT_TOKEN"
NO_CONTENT_INTENT = (
    "discord: the gateway refused the Message Content intent; enable it for the bot"
    " (Developer Portal → Bot → Privileged Gateway Intents → Message Content)"
)
ANSWERABLE = (discord.MessageType.default, discord.MessageType.reply)


class DiscordChannel(Channel):
    name = "discord"
    prefix = "dc"
    supports_edit = True

    def __init__(
        self,
        token: str,
        *,
        api_url: str | None = None,
        gateway_url: str | None = None,
        bot_name: str = "assistant",
    ) -> None:
        self._token = token
        self._api_url = api_url
        self._gateway_url = gateway_url
        self.bot_name = bot_name
        self._client: _Client | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._inbox: Inbox | None = None
        self._ready = asyncio.Event()
        self._queue = SendQueue("discord")
        self._seen: OrderedDict[int, None] = OrderedDict()  # incoming ids: drop redeliveries
        self._mine: OrderedDict[int, None] = OrderedDict()  # ids this bot sent: replies to it
        self._incoming_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sending_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def is_connected(self) -> bool:
        client = self._client
        if client is None or client.is_closed() or not self._ready.is_set():
            return False
        ws = client.ws  # replaced on every reconnect; closed while the gateway is down
        return ws is not None and ws.open

    # ---- connecting --------------------------------------------------------------------

    async def start(self, inbox: Inbox) -> None:
        """Log in and return once the gateway is READY; discord.py reconnects after drops.

        :raises ChannelError: if the token is rejected or the gateway refuses or times out.
        """
        self._inbox = inbox
        client = self._client = _Client(
            self._api_url, self._gateway_url, self._ready.set, self._on_message, self.note_skipped
        )
        try:
            await client.login(self._token)
        except discord.LoginFailure:
            await self.aclose()
            raise ChannelError(REJECTED) from None
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.aclose()
            raise ChannelError(f"discord: cannot log in ({_describe(exc)})") from None
        self._gateway = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        self._gateway.add_done_callback(_log_gateway_end)
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {self._gateway, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel(ready)
        if not self._ready.is_set():
            problem = self._gateway_problem()
            await self.aclose()
            raise ChannelError(problem)

    def _gateway_problem(self) -> str:
        task = self._gateway
        if task is None or not task.done():
            return f"discord: the gateway was not ready within {READY_TIMEOUT_S:g}s"
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            return NO_CONTENT_INTENT
        if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
            return REJECTED
        return f"discord: the gateway connection ended ({_describe(exc)})"

    async def aclose(self) -> None:
        await self._queue.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        task, self._gateway = self._gateway, None
        if task is not None:
            await asyncio.wait({task}, timeout=5)  # returns once the closed socket is noticed
            if not task.done():
                await cancel(task)  # its failure, if any, was logged by _log_gateway_end
        self._ready.clear()

    # ---- incoming ----------------------------------------------------------------------

    async def _on_message(self, message: discord.Message) -> None:
        client, inbox = self._client, self._inbox
        me = client.user if client is not None else None
        if me is None or inbox is None:
            return
        if message.author.id == me.id or message.author.bot or message.type not in ANSWERABLE:
            return
        if not _remember(self._seen, message.id):
            log.debug("discord: message %s delivered again, dropped", message.id)
            return
        try:
            incoming = self._incoming(message, me.id)
        except Exception as exc:  # a field discord.py let through with the wrong type
            self.note_skipped(f"message {message.id}", f"{type(exc).__name__}: {exc}")
            return
        if not incoming.text:
            return  # a bare mention, or content withheld (no Message Content intent)
        # discord.py runs each event in its own task: keep a chat's messages in order
        async with self._incoming_locks[incoming.chat_id]:
            try:
                await inbox.deliver(incoming)
            except Exception:
                log.exception("discord: delivering message %s failed", message.id)

    def _incoming(self, message: discord.Message, me: int) -> IncomingMessage:
        text = message.content
        mentioned = any(user.id == me for user in message.mentions)
        if mentioned:
            text = re.sub(rf"\s*<@!?{me}>\s*", " ", text).strip()
        text = "\n".join(
            [text, *(f"[attachment: {a.filename} {a.url}]" for a in message.attachments)]
        ).strip()
        reference = message.reference
        replied_id = reference.message_id if reference is not None else None
        resolved = reference.resolved if reference is not None else None
        to_me = (isinstance(resolved, discord.Message) and resolved.author.id == me) or (
            replied_id in self._mine
        )
        dm = message.guild is None
        named = re.match(rf"{re.escape(self.bot_name)}\b", text, re.IGNORECASE) is not None
        title = getattr(message.channel, "name", None)
        return IncomingMessage(
            chat_id=f"{self.prefix}:{message.channel.id}",
            sender=message.author.display_name,
            text=text,
            platform_id=str(message.id),
            chat_title=str(title) if title else (f"DM with {message.author.name}" if dm else ""),
            reply_to=str(replied_id) if replied_id is not None else None,
            addressed=dm or mentioned or to_me or named,
        )

    # ---- outgoing ----------------------------------------------------------------------

    async def send_text(self, chat_id: str, text: str) -> str | None:
        target = self._target(chat_id)
        if not text.strip():
            return None  # Discord refuses empty messages
        message_id = None
        async with self._sending_locks[chat_id]:  # a split text stays contiguous
            for piece in split_text(text, LIMIT):
                message_id = await self._submit(_post(target, piece))
        return message_id

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        target = self._target(chat_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ChannelError(f"discord: cannot read image {path} ({exc.strerror})") from None
        pieces = split_text(caption, LIMIT) if caption.strip() else [""]
        async with self._sending_locks[chat_id]:
            for piece in pieces[:-1]:
                await self._submit(_post(target, piece))
            return await self._submit(_post(target, pieces[-1] or None, (path.name, data)))

    async def edit_text(self, chat_id: str, message_id: str, text: str) -> str | None:
        """Edit in place; a message that is gone is sent anew. Beyond 2000 characters
        the rest follows as new messages."""
        target = self._target(chat_id)
        if not message_id.isdigit():
            raise ChannelError(f"discord: {message_id!r} is not a Discord message id")
        if not text.strip():
            return message_id
        first, *rest = split_text(text, LIMIT)

        async def edit() -> discord.Message:
            try:
                return await target.get_partial_message(int(message_id)).edit(
                    content=first, allowed_mentions=NO_MENTIONS
                )
            except discord.NotFound:
                log.info("discord: message %s is gone; sending anew", message_id)
                return await target.send(first, allowed_mentions=NO_MENTIONS)

        async with self._sending_locks[chat_id]:
            edited = await self._submit(edit)
            for piece in rest:
                await self._submit(_post(target, piece))
        return edited

    def _target(self, chat_id: str) -> discord.PartialMessageable:
        client = self._client
        if client is None:
            raise ChannelError("discord: not connected")
        prefix, _, channel_id = chat_id.partition(":")
        if prefix != self.prefix or not channel_id.isdigit():
            raise ChannelError(f"discord: {chat_id!r} is not a Discord chat (dc:<channel id>)")
        return client.get_partial_messageable(int(channel_id))

    async def _submit(self, send: Callable[[], Awaitable[discord.Message]]) -> str:
        message = await self._queue.submit(lambda: _mapped(send))
        _remember(self._mine, message.id)
        return str(message.id)


# ---- helpers -------------------------------------------------------------------------


def _post(
    target: discord.PartialMessageable,
    content: str | None,
    image: tuple[str, bytes] | None = None,
) -> Callable[[], Awaitable[discord.Message]]:
    """One send, repeatable: a retry needs a fresh `File` (discord.py closes it after use)."""

    def send() -> Awaitable[discord.Message]:
        if image is None:
            return target.send(content, allowed_mentions=NO_MENTIONS)
        name, data = image
        attachment = discord.File(io.BytesIO(data), filename=name)
        return target.send(content, file=attachment, allowed_mentions=NO_MENTIONS)

    return send


async def _mapped(send: Callable[[], Awaitable[T]]) -> T:
    """discord.py's errors as the send queue's: wait, retry, or give up with a reason."""
    try:
        return await send()
    except discord.RateLimited as exc:  # longer than discord.py is willing to wait itself
        raise RetryAfter(exc.retry_after, "discord: rate limited") from exc
    except discord.Forbidden as exc:
        raise ChannelError(
            f"discord: not allowed (403 {exc.text}); check the bot's permissions in that channel"
        ) from exc
    except discord.NotFound as exc:
        raise ChannelError(f"discord: unknown channel or message (404 {exc.text})") from exc
    except discord.HTTPException as exc:
        if exc.status == 429:  # one discord.py does not retry (no Via header: Cloudflare)
            raise RetryAfter(_retry_after(exc), "discord: rate limited") from exc
        if exc.status >= 500:
            raise TransientError(f"discord: server error ({exc.status} {exc.text})") from exc
        raise ChannelError(f"discord: request refused ({exc.status} {exc.text})") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TransientError(f"discord: connection failed ({_describe(exc)})") from exc


def _retry_after(exc: discord.HTTPException) -> float:
    """Seconds to wait: X-RateLimit-Reset-After is precise, Retry-After whole seconds."""
    headers = getattr(exc.response, "headers", None) or {}
    for name in ("X-RateLimit-Reset-After", "Retry-After"):
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            continue
    return DEFAULT_RETRY_AFTER_S


def _remember(ids: OrderedDict[int, None], message_id: int) -> bool:
    """Add an id to a bounded set; False if it was there already."""
    if message_id in ids:
        return False
    ids[message_id] = None
    while len(ids) > REMEMBERED:
        ids.popitem(last=False)
    return True


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "cancelled"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _log_gateway_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("discord: the gateway connection ended: %s", _describe(exc))


class _Client(discord.Client):
    """discord.Client with the message_content intent, no mass mentions and, when asked,
    REST and gateway redirected for this instance only."""

    def __init__(
        self,
        api_url: str | None,
        gateway_url: str | None,
        on_ready: Callable[[], None],
        on_message: Callable[[discord.Message], Awaitable[None]],
        on_unreadable: Callable[[str, str], None],
    ) -> None:
        self._redirect = (api_url, gateway_url)  # read by _get_state during __init__
        self._unreadable = on_unreadable  # likewise
        self._ready_callback = on_ready
        self._message_callback = on_message
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            intents=intents,
            allowed_mentions=NO_MENTIONS,
            max_ratelimit_timeout=MAX_RATELIMIT_WAIT_S,
        )
        if (api_url or gateway_url) and not isinstance(self.http, _RedirectedHTTP):
            # never fall back silently to the real Discord when told to go elsewhere
            raise ChannelError("discord: this discord.py version cannot be redirected")

    def _get_state(self, **options: Any) -> ConnectionState[Self]:
        # The one hook between creating `self.http` and handing it to the connection state.
        api_url, gateway_url = self._redirect
        if api_url is not None or gateway_url is not None:
            self.http = _RedirectedHTTP(self.http, api_url, gateway_url)
        state = super()._get_state(**options)
        # discord.py calls these parsers bare: one event it cannot parse (a field missing
        # or of the wrong type) would end the gateway connection for good. Skip it instead.
        for event, parse in list(state.parsers.items()):
            state.parsers[event] = _skipping(event, parse, self._unreadable)
        return state

    async def on_connect(self) -> None:
        # READY was received; on_ready would come only after guild_ready_timeout (2 s) more.
        self._ready_callback()

    async def on_message(self, message: discord.Message) -> None:
        await self._message_callback(message)


def _skipping(
    event: str, parse: Callable[[Any], None], unreadable: Callable[[str, str], None]
) -> Callable[[Any], None]:
    def parse_or_skip(data: Any) -> None:
        try:
            parse(data)
        except Exception as exc:
            unreadable(f"a {event} event", f"{type(exc).__name__}: {exc}")

    return parse_or_skip


class _RedirectedHTTP(HTTPClient):
    """discord.py's HTTP client sending REST calls to `api_url` and opening the default
    gateway at `gateway_url` (resumes use READY's resume_gateway_url, the server's own)."""

    def __init__(self, base: HTTPClient, api_url: str | None, gateway_url: str | None) -> None:
        super().__init__(
            base.loop,
            base.connector,
            proxy=base.proxy,
            proxy_auth=base.proxy_auth,
            unsync_clock=not base.use_clock,
            http_trace=base.http_trace,
            max_ratelimit_timeout=base.max_ratelimit_timeout,
        )
        self._api_url = api_url.rstrip("/") if api_url is not None else None
        self._gateway_url = gateway_url

    async def request(
        self,
        route: Route,
        *,
        files: Sequence[discord.File] | None = None,
        form: Iterable[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        if self._api_url is not None and route.url.startswith(Route.BASE):
            route.url = self._api_url + route.url[len(Route.BASE) :]
        return await super().request(route, files=files, form=form, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        asked = urlsplit(url)
        default_host = DiscordWebSocket.DEFAULT_GATEWAY.host
        if self._gateway_url is not None and asked.hostname == default_host:
            url = urlunsplit(urlsplit(self._gateway_url)._replace(query=asked.query))
        return await super().ws_connect(url, compress=compress)
