"""Slack over Socket Mode: a bot token and an app token, no public URL.

Web API calls go through slack_sdk's AsyncWebClient (its files_upload_v2 does Slack's
external-upload steps). The Socket Mode loop is a small aiohttp loop of our own rather
than slack_sdk's SocketModeClient, which retries a rejected app token forever, reconnects
at a fixed interval and handles each envelope in an unordered fire-and-forget task. Here a
rejected token is a clear ChannelError at start, reconnects back off, every envelope is
acked before it is handled (Slack redelivers after 3 s), and messages keep their order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from assistant.background import cancel
from assistant.channels.base import Channel, Inbox, IncomingMessage
from assistant.channels.delivery import RetryAfter, SendQueue, TransientError, split_text
from assistant.errors import ChannelError

log = logging.getLogger(__name__)

LIMIT = 3900  # Slack advises at most 4,000 characters of text per message
HELLO_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0
SEEN_KEPT = 2000  # message keys remembered to drop Slack's redeliveries
# errors that mean the token itself is wrong, not that a call failed
REJECTED = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
    }
)
# message subtypes that are something a person said; the rest are edits, joins, bots
PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
EDIT_REFUSED = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)

JsonDict = dict[str, Any]


class SlackRefused(ChannelError):
    """Slack answered a call with an error that retrying will not fix."""

    def __init__(self, method: str, error: str) -> None:
        self.error = error
        super().__init__(f"slack: {method} failed: {error}")


class SlackChannel(Channel):
    name = "slack"
    prefix = "sl"
    supports_edit = True
    reconnect_delay_s = 0.5  # first wait after a dropped socket; doubles per failed attempt
    max_reconnect_delay_s = 60.0

    def __init__(
        self, bot_token: str, app_token: str, *, api_url: str, bot_name: str = "assistant"
    ) -> None:
        self._bot_token = bot_token
        self._app_token = app_token
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._bot_name = bot_name
        self._inbox: Inbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[JsonDict] = asyncio.Queue()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._titles: dict[str, str] = {}
        self._queue = SendQueue("slack")
        self.bot_user_id = ""
        self._bot_id = ""

    def __repr__(self) -> str:
        return f"SlackChannel(api_url={self._api_url!r})"  # never the tokens

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    # ---- connecting ----------------------------------------------------------------

    async def start(self, inbox: Inbox) -> None:
        """Check the bot token, open Socket Mode; returns once Slack said hello.

        :raises ChannelError: if a token is rejected or Slack cannot be reached.
        """
        self._inbox = inbox
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._client = AsyncWebClient(
            token=self._bot_token,
            base_url=self._api_url,
            session=self._session,
            retry_handlers=[],  # the send queue is the one retry policy
        )
        try:
            auth = await self._at_start(self._client.auth_test(), "bot", "SLACK_BOT_TOKEN")
            self.bot_user_id = str(auth["user_id"])
            self._bot_id = str(auth.get("bot_id") or "")
            url = await self._at_start(self._socket_url(), "app", "SLACK_APP_TOKEN")
            self._ws = await self._at_start(self._open_socket(url), "app", "SLACK_APP_TOKEN")
        except BaseException:
            await self.aclose()
            raise
        self._reader = asyncio.create_task(self._read_forever(), name="slack-socket")
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="slack-inbox")
        log.info("slack: connected as %s", self.bot_user_id)

    async def _at_start(self, call: Awaitable[Any], which: str, variable: str) -> Any:
        try:
            return await call
        except SlackApiError as exc:
            error = _error_of(exc)
            if error in REJECTED:
                raise ChannelError(
                    f"slack: the {which} token was rejected ({error}); check {variable}"
                ) from None
            raise ChannelError(f"slack: starting failed ({error})") from None
        except _NETWORK_ERRORS as exc:
            raise ChannelError(
                f"slack: cannot reach Slack at {self._api_url} ({type(exc).__name__}: {exc})"
            ) from None

    async def _socket_url(self) -> str:
        response = await self._web().apps_connections_open(app_token=self._app_token)
        return str(response["url"])

    async def _open_socket(self, url: str) -> aiohttp.ClientWebSocketResponse:
        """Connect and wait for hello. The URL carries a one-time ticket: never logged."""
        assert self._session is not None
        ws = await self._session.ws_connect(url, heartbeat=HEARTBEAT_S)
        try:
            hello = await ws.receive(timeout=HELLO_TIMEOUT_S)
            if hello.type != aiohttp.WSMsgType.TEXT or '"hello"' not in hello.data:
                raise TransientError(f"slack: the socket opened without a hello ({hello.type!r})")
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _read_forever(self) -> None:
        """Read the socket; when it drops, reconnect with backoff (is_connected is False)."""
        failures = 0
        while True:
            ws = self._ws
            if ws is not None:
                reason = await self._read(ws)
                self._ws = None
                await ws.close()
                log.warning("slack: socket closed (%s); reconnecting", reason)
            await asyncio.sleep(self._backoff(failures))
            try:
                self._ws = await self._open_socket(await self._socket_url())
            except Exception as exc:  # whatever it was, this loop must keep trying
                failures += 1
                log.warning(
                    "slack: reconnecting failed (%s); next try in %.1fs",
                    _describe(exc),
                    self._backoff(failures),
                )
            else:
                failures = 0
                log.info("slack: reconnected")

    def _backoff(self, failures: int) -> float:
        return float(min(self.reconnect_delay_s * 2**failures, self.max_reconnect_delay_s))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Ack and queue envelopes until the socket ends; returns why it ended."""
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return f"error: {ws.exception()}"
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                self.note_skipped("a socket message", "not a JSON object")
                continue
            envelope_id = data.get("envelope_id")
            if envelope_id:
                try:
                    await ws.send_json({"envelope_id": envelope_id})
                except ConnectionError as exc:
                    return f"ack failed: {exc}"
            if data.get("type") == "disconnect":
                return f"Slack asked to reconnect: {data.get('reason')}"
            if data.get("type") == "events_api" and isinstance(data.get("payload"), dict):
                self._events.put_nowait(data["payload"])
        return "connection lost"

    # ---- incoming ------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        """Hand events to the inbox one at a time, in the order Slack sent them."""
        while True:
            payload = await self._events.get()
            event = payload.get("event")
            if not isinstance(event, dict):
                self.note_skipped("an event", f"the event is {type(event).__name__}, not an object")
                continue
            try:
                message = await self._incoming(event)
            except Exception as exc:  # fields of the wrong type
                self.note_skipped("an event", f"{type(exc).__name__}: {exc}")
                continue
            try:
                if message is not None and self._inbox is not None:
                    await self._inbox.deliver(message)
            except Exception:
                self.skipped += 1
                log.exception("slack: could not handle an event")

    async def _incoming(self, event: JsonDict) -> IncomingMessage | None:
        """An IncomingMessage for something a person said; None for the rest."""
        kind = event.get("type")
        if kind not in ("message", "app_mention") or event.get("subtype") not in PERSON_SUBTYPES:
            return None
        user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
        if not (user and channel and ts) or self._is_own(event):
            return None
        if not self._first_time(str(channel), str(ts)):
            return None  # a redelivery, or the app_mention twin of a message
        text, addressed = self._addressed_text(str(event.get("text") or ""))
        if not text:
            return None  # a bare mention or a file without words: nothing to answer
        addressed = addressed or kind == "app_mention" or event.get("channel_type") == "im"
        return IncomingMessage(
            chat_id=f"{self.prefix}:{channel}",
            sender=str(user),
            text=text,
            platform_id=str(ts),
            chat_title=await self._title(str(channel)),
            reply_to=event.get("thread_ts"),
            addressed=addressed,
        )

    def _is_own(self, event: JsonDict) -> bool:
        own_bot = bool(self._bot_id) and event.get("bot_id") == self._bot_id
        return own_bot or event.get("user") == self.bot_user_id

    def _first_time(self, channel: str, ts: str) -> bool:
        key = (channel, ts)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        return True

    def _addressed_text(self, raw: str) -> tuple[str, bool]:
        """The text as a person would read it, and whether it is addressed to the bot
        (mentions it or starts with its name; "assistant /status" becomes a command)."""
        mention = re.compile(rf"<@{re.escape(self.bot_user_id)}(?:\|[^>]*)?>[\s,:]*")
        stripped, mentions = mention.subn("", raw)
        text = from_mrkdwn(stripped).strip()
        if mentions:
            return text, True
        name = re.match(rf"@?{re.escape(self._bot_name)}\b[\s,:]*", text, re.IGNORECASE)
        if name is None:
            return text, False
        rest = text[name.end() :]
        return (rest if rest.startswith("/") else text), True

    async def _title(self, channel: str) -> str:
        """A readable chat title ("#ml-ops"); the channel id if Slack will not say."""
        if channel not in self._titles:
            try:
                info = (await self._web().conversations_info(channel=channel))["channel"]
                if info.get("name"):
                    title = f"#{info['name']}"
                elif info.get("is_im"):
                    title = f"direct message with {info.get('user', 'someone')}"
                else:
                    title = channel
            except (SlackApiError, *_NETWORK_ERRORS) as exc:
                log.info("slack: no title for %s (%s)", channel, _describe(exc))
                title = channel
            self._titles[channel] = title
        return self._titles[channel]

    # ---- outgoing ------------------------------------------------------------------

    async def send_text(self, chat_id: str, text: str) -> str | None:
        """Post as mrkdwn, split at LIMIT; returns the ts of the last piece."""
        if not text.strip():
            return None
        return await self._post(self._channel(chat_id), split_text(to_mrkdwn(text), LIMIT))

    async def _post(self, channel: str, pieces: list[str]) -> str:
        """One queue job for all pieces, so they stay together; a retry resumes at the
        piece that failed rather than repeating the ones Slack already has."""
        remaining = list(pieces)
        last = ""

        async def send() -> str:
            nonlocal last
            while remaining:
                response = await self._call(
                    "chat.postMessage",
                    lambda: self._web().chat_postMessage(channel=channel, text=remaining[0]),
                )
                last = str(response["ts"])
                remaining.pop(0)
            return last

        return await self._queue.submit(send)

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        """Upload as a file in the chat; returns the file id."""
        channel = self._channel(chat_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ChannelError(f"slack: cannot read image {path}: {exc.strerror}") from None
        comment = to_mrkdwn(caption) if caption.strip() else None
        if comment is not None and len(comment) > LIMIT:
            await self.send_text(chat_id, caption)
            comment = None

        async def send() -> str:
            response = await self._call(
                "files.upload",
                lambda: self._web().files_upload_v2(
                    channel=channel,
                    file=data,
                    filename=path.name,
                    title=path.name,
                    initial_comment=comment,
                ),
            )
            return str(response["file"]["id"])

        return await self._queue.submit(send)

    async def edit_text(self, chat_id: str, message_id: str, text: str) -> str | None:
        """chat.update in place; a message Slack will not edit is sent anew. Text beyond
        one message follows as new messages."""
        channel = self._channel(chat_id)
        pieces = split_text(to_mrkdwn(text), LIMIT) if text.strip() else []
        if not pieces:
            return None

        async def send() -> str:
            await self._call(
                "chat.update",
                lambda: self._web().chat_update(channel=channel, ts=message_id, text=pieces[0]),
            )
            return message_id

        try:
            edited = await self._queue.submit(send)
        except SlackRefused as exc:
            if exc.error not in EDIT_REFUSED:
                raise
            return await self._post(channel, pieces)
        if len(pieces) > 1:
            await self._post(channel, pieces[1:])
        return edited

    async def _call(
        self, method: str, call: Callable[[], Awaitable[AsyncSlackResponse]]
    ) -> AsyncSlackResponse:
        """One Web API call, its failure sorted for the send queue."""
        try:
            return await call()
        except SlackApiError as exc:
            response = exc.response
            error = _error_of(exc)
            if response.status_code == 429 or error == "ratelimited":
                raise RetryAfter(
                    _retry_after(response.headers), f"slack: {method} rate limited"
                ) from None
            if response.status_code >= 500:
                raise TransientError(
                    f"slack: {method} failed with HTTP {response.status_code}"
                ) from None
            raise SlackRefused(method, error) from None
        except SlackRequestError as exc:
            raise ChannelError(f"slack: {method} failed: {exc}") from None
        except _NETWORK_ERRORS as exc:
            raise TransientError(f"slack: {method}: {_describe(exc)}") from None

    def _web(self) -> AsyncWebClient:
        if self._client is None or self._session is None or self._session.closed:
            raise ChannelError("slack: the channel is not started")
        return self._client

    def _channel(self, chat_id: str) -> str:
        if not self.owns(chat_id):
            raise ChannelError(f"slack: {chat_id} is not a Slack chat")
        return chat_id.split(":", 1)[1]

    async def aclose(self) -> None:
        await cancel(self._reader)
        await cancel(self._dispatcher)
        self._reader = self._dispatcher = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        await self._queue.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._client = None


# ---- formatting ------------------------------------------------------------------------

_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]+`)", re.DOTALL)
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_HEADING = re.compile(r"^#{1,6}\s+(.+)$", re.MULTILINE)
_MARKUP = re.compile(r"<([^<>\n]+)>")


def escape(text: str) -> str:
    """Slack reads &, < and > as markup; everywhere else they must be entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(text: str) -> str:
    """Markdown as Slack's mrkdwn: escaped, **bold** -> *bold*, headings bold, links
    <url|label>; code spans and blocks are only escaped."""
    parts = _CODE.split(text)
    for i, part in enumerate(parts):
        part = escape(part)
        if i % 2 == 0:  # outside code
            part = _LINK.sub(r"<\2|\1>", part)
            part = _BOLD.sub(r"*\1*", part)
            part = _HEADING.sub(r"*\1*", part)
        parts[i] = part
    return "".join(parts)


def from_mrkdwn(text: str) -> str:
    """Slack's markup as plain text: <@U1> -> @U1, <#C1|ops> -> #ops, <url|x> -> x (url)."""

    def plain(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            return "@" + (label or target[1:])
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            return label or "@" + target[1:].split("^", 1)[0]
        url = target.removeprefix("mailto:")
        return url if not label or label in url else f"{label} ({url})"

    text = _MARKUP.sub(plain, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _error_of(exc: SlackApiError) -> str:
    data = exc.response.data
    error = data.get("error") if isinstance(data, dict) else None
    return str(error or f"HTTP {exc.response.status_code}")


def _retry_after(headers: Any) -> float:
    try:
        return float(headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        return 1.0


def _describe(exc: BaseException) -> str:
    """A failure for the log, without the response dump (Slack errors) or any token."""
    if isinstance(exc, SlackApiError):
        return _error_of(exc)
    return f"{type(exc).__name__}: {exc}"
