"""Slack over Socket Mode: a bot token and an app token, no public URL.

Incoming envelopes go through slack-bolt's `AsyncApp` (events, the slash command, button
presses), fed by Bolt's aiohttp Socket Mode handler; Web API calls go through slack_sdk's
AsyncWebClient and the channel's send queue (its files_upload_v2 does Slack's upload steps).

Where Bolt's handler falls short of what this channel promises, the channel keeps its own:

- At start, the bot token (auth.test) and the app token (apps.connections.open) are
  checked first, and a rejected one is a ChannelError naming the setting; Bolt's client
  would retry a rejected app token forever. Start returns once Slack said hello.
- Every envelope is acked the moment it arrives, before it is handled (Slack redelivers
  after 3 s); Bolt acks only once the app answered 200, so an envelope no listener takes,
  or one that fails, would be sent again (events up to three times).
- Envelopes are handled one at a time in the order they arrived; Bolt's handler runs each
  in a task of its own, so two messages could be answered out of order.
- A frame or envelope that cannot be read is counted and skipped (`Channel.note_skipped`).
- A redelivered message, command or press is handled once (Slack retries an event not
  acked on a socket that dropped, with a new envelope id).
- Bolt's "who is the bot" is answered from the start-time auth.test (`authorize=`), so no
  envelope waits on, or is lost to, a failing auth.test call later.
- While the socket is down, the next try uses a new Socket Mode URL (`_fresh_urls`):
  Bolt's client would retry a used-up URL forever after one failed connection.

Bolt keeps the connection: reconnecting after a drop (its monitor checks every
`ping_interval_s`, then retries at that interval) or when Slack asks (`disconnect`),
pings, and routing each envelope to its listener; its ignoring-self-events middleware
drops the bot's own posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from assistant.background import cancel
from assistant.channels.base import Button, Channel, Inbox, IncomingMessage, Press
from assistant.channels.delivery import RetryAfter, SendQueue, TransientError, split_text
from assistant.errors import ChannelError

log = logging.getLogger(__name__)

LIMIT = 3900  # Slack advises at most 4,000 characters of text per message
SECTION_LIMIT = 3000  # a section block's text; a message with buttons is split at this
LABEL_LIMIT = 75  # a button's plain_text label
BUTTONS_PER_BLOCK = 25  # an actions block holds at most 25 elements
ACTION_PREFIX = "press:"  # action_id of our buttons: press:<token>
HELLO_TIMEOUT_S = 10.0
SEEN_KEPT = 2000  # keys remembered to drop Slack's redeliveries
DRAWN_KEPT = 500  # messages whose extra blocks (buttons, pressed line) edits keep
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
ENVELOPES = frozenset({"events_api", "slash_commands", "interactive"})
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)

JsonDict = dict[str, Any]
Ack = Callable[[], Awaitable[Any]]  # Bolt's ack(), called first in each listener
# the channel whose slash command is being answered in this task (see send_message)
_ANSWERING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "slack_answering", default=None
)


class SlackRefused(ChannelError):
    """Slack answered a call with an error that retrying will not fix."""

    def __init__(self, method: str, error: str) -> None:
        self.error = error
        super().__init__(f"slack: {method} failed: {error}")


class _Handler(AsyncSocketModeHandler):
    """Bolt's aiohttp Socket Mode handler, with each frame passed to `arrived` as it is
    read (in order, in the client's one reading task) instead of to Bolt's `handle`, which
    runs each envelope in a task of its own and acks it only after the app answered."""

    def __init__(
        self,
        app: AsyncApp,
        app_token: str,
        web_client: AsyncWebClient,
        ping_interval: float,
        arrived: Callable[[aiohttp.WSMessage], Awaitable[None]],
    ) -> None:
        super().__init__(app, app_token, web_client=web_client, ping_interval=ping_interval)
        self.client.socket_mode_request_listeners.clear()
        self.client.on_message_listeners.append(arrived)


class SlackChannel(Channel):
    name = "slack"
    prefix = "sl"
    supports_edit = True
    supports_buttons = True
    supports_threads = True
    ping_interval_s = 5.0  # Bolt's ping, and how soon a dropped socket is noticed

    def __init__(
        self,
        bot_token: str,
        app_token: str,
        *,
        api_url: str,
        bot_name: str = "assistant",
        command: str = "/gpu",
    ) -> None:
        self._bot_token = bot_token
        self._app_token = app_token
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._bot_name = bot_name
        self.command = command if command.startswith("/") else "/" + command
        self._inbox: Inbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._app: AsyncApp | None = None
        self._handler: _Handler | None = None
        self._hello = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._envelopes: asyncio.Queue[SocketModeRequest] = asyncio.Queue()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._drawn: OrderedDict[tuple[str, str], list[JsonDict]] = OrderedDict()
        self._titles: dict[str, str] = {}
        self._member_of: set[str] = set()  # channels Slack said the bot is in
        self._queue = SendQueue("slack")
        self.bot_user_id = ""
        self._bot_id = ""
        self._team_id: str | None = None

    def __repr__(self) -> str:
        return f"SlackChannel(api_url={self._api_url!r})"  # never the tokens

    @property
    def is_connected(self) -> bool:
        if self._handler is None:
            return False
        client = self._handler.client
        session = client.current_session
        return (
            self._hello.is_set()
            and session is not None
            and not session.closed
            and not client.closed
            and not client.stale
        )

    # ---- connecting ----------------------------------------------------------------

    async def start(self, inbox: Inbox) -> None:
        """Check both tokens, open Socket Mode; returns once Slack said hello.

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
            self._team_id = auth.get("team_id")
            url = await self._at_start(self._socket_url(), "app", "SLACK_APP_TOKEN")
            self._app = self._build_app()
            self._handler = _Handler(
                self._app, self._app_token, self._client, self.ping_interval_s, self._arrived
            )
            self._handler.client.wss_uri = url  # checked above; the ticket is never logged
            self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="slack-inbox")
            await self._connect()
            self._watchdog = asyncio.create_task(self._fresh_urls(), name="slack-socket-url")
        except BaseException:
            await self.aclose()
            raise
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

    async def _connect(self) -> None:
        """Bolt's connect, bounded: it retries a socket that will not open forever."""
        assert self._handler is not None
        handler = self._handler

        async def connected() -> None:
            await handler.connect_async()  # type: ignore[no-untyped-call]
            await self._hello.wait()

        try:
            await asyncio.wait_for(connected(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise ChannelError(
                f"slack: Socket Mode did not say hello within {HELLO_TIMEOUT_S:g}s"
            ) from None

    async def _fresh_urls(self) -> None:
        """While the socket is down, make Bolt's client ask for a new Socket Mode URL on
        its next try: a URL is good for one connection, and Bolt's client retries a
        failed one forever (its connect loop reuses `wss_uri` once it is set)."""
        while True:
            await asyncio.sleep(self.ping_interval_s / 2)
            if self._handler is not None and not self.is_connected:
                self._handler.client.wss_uri = None

    def _build_app(self) -> AsyncApp:
        """The Bolt app: one listener per kind of envelope, each run to its end before
        the next envelope (process_before_response), so the channel's order holds."""
        app = AsyncApp(
            # Bolt's client needs no token: `authorize` hands it the bot's
            client=AsyncWebClient(base_url=self._api_url, session=self._session),
            authorize=self._authorize(),
            process_before_response=True,
            request_verification_enabled=False,  # Socket Mode: no signed HTTP requests
            ssl_check_enabled=False,
            url_verification_enabled=False,
            logger=logging.getLogger(f"{__name__}.bolt"),
        )

        # Bolt passes arguments by parameter name (and counts a method's `self`): plain
        # functions here, each handing on to the channel
        async def on_event(body: JsonDict) -> None:
            await self._on_event(body)

        async def on_command(ack: Ack, command: JsonDict) -> None:
            await self._on_command(ack, command)

        async def on_action(ack: Ack, body: JsonDict, action: JsonDict) -> None:
            await self._on_action(ack, body, action)

        app.event(re.compile(r".*"))(on_event)
        app.command(self.command)(on_command)
        app.action(re.compile("^" + re.escape(ACTION_PREFIX)))(on_action)
        return app

    def _authorize(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """Who the bot is, from the start-time auth.test (no call per envelope)."""

        async def authorize(team_id: str | None) -> AuthorizeResult:
            return AuthorizeResult(
                enterprise_id=None,
                team_id=team_id or self._team_id,
                bot_token=self._bot_token,
                bot_id=self._bot_id or None,
                bot_user_id=self.bot_user_id or None,
            )

        return authorize

    # ---- reading -------------------------------------------------------------------

    async def _arrived(self, frame: aiohttp.WSMessage) -> None:
        """Each text frame, in the order read: hello noted, envelopes acked then queued."""
        try:
            data = json.loads(frame.data)
        except (TypeError, ValueError):
            data = None
        if not isinstance(data, dict):
            self.note_skipped("a socket message", "not a JSON object")
            return
        kind = data.get("type")
        if kind == "hello":
            self._hello.set()
            return
        envelope_id = data.get("envelope_id")
        if isinstance(envelope_id, str) and envelope_id:
            assert self._handler is not None
            try:
                await self._handler.client.send_socket_mode_response({"envelope_id": envelope_id})
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                log.info("slack: ack failed (%s); Slack sends it again", _describe(exc))
                return
        if kind not in ENVELOPES:
            if kind != "disconnect":  # Bolt's client reconnects on that one
                log.debug("slack: a %r socket message was ignored", kind)
            return
        request = SocketModeRequest.from_dict(data) if envelope_id else None
        if request is None or not isinstance(data.get("payload"), dict):
            self.note_skipped(f"an envelope of type {kind}", "no envelope id or payload object")
            return
        self._envelopes.put_nowait(request)

    async def _dispatch_forever(self) -> None:
        """Hand envelopes to the Bolt app one at a time, in the order Slack sent them."""
        while True:
            request = await self._envelopes.get()
            try:
                await self._dispatch(request)
            finally:
                self._envelopes.task_done()

    async def _dispatch(self, request: SocketModeRequest) -> None:
        assert self._app is not None
        problem = _shape_problem(request.type, request.payload)
        if problem is not None:
            self.note_skipped(f"an envelope of type {request.type}", problem)
            return
        try:
            response = await run_async_bolt_app(self._app, request)
        except Exception as exc:  # Bolt reading fields of the wrong type
            self.note_skipped(f"an envelope of type {request.type}", f"{type(exc).__name__}: {exc}")
            return
        if response.status != 200:
            log.debug("slack: Bolt answered %s to a %s envelope", response.status, request.type)

    async def drained(self) -> None:
        """Return once every envelope received so far has been handled to its end (its
        replies and press answers sent)."""
        await self._envelopes.join()

    async def _on_event(self, body: JsonDict) -> None:
        """Bolt listener: a message or mention (Bolt acks events by itself)."""
        event = body.get("event")
        try:
            message = await self._incoming(event if isinstance(event, dict) else {})
        except Exception as exc:  # fields of the wrong type
            self.note_skipped("an event", f"{type(exc).__name__}: {exc}")
            return
        if message is not None:
            await self._deliver(message)

    async def _on_command(self, ack: Ack, command: JsonDict) -> None:
        """Bolt listener: `/gpu run stop X` is the command `/run stop X`, `/gpu` alone
        `/help`; delivered like a typed one, the reply posted in the chat."""
        await ack()
        channel, user = str(command["channel_id"]), str(command["user_id"])
        trigger = str(command.get("trigger_id") or "")
        if trigger and not self._first_time(("command", trigger)):
            return
        if not await self._may_post(channel):
            await self._respond(
                command.get("response_url"),
                f"I am not in this channel, so I cannot answer here: invite me with"
                f" `/invite <@{self.bot_user_id}>`, then try again.",
            )
            return
        words = from_mrkdwn(str(command.get("text") or "")).strip().lstrip("/")
        message = IncomingMessage(
            chat_id=f"{self.prefix}:{channel}",
            sender=user,
            text="/" + (words or "help"),
            platform_id=trigger or None,
            chat_title=await self._title(channel),
            addressed=True,
        )
        token = _ANSWERING.set(channel)
        try:
            await self._deliver(message)
        finally:
            _ANSWERING.reset(token)

    async def _on_action(self, ack: Ack, body: JsonDict, action: JsonDict) -> None:
        """Bolt listener: one of our buttons pressed. The orchestrator decides (rights now,
        once only); here the message loses its buttons, or the presser gets the note."""
        await ack()
        container = body.get("container") or {}
        channel = str((body.get("channel") or {}).get("id") or container.get("channel_id"))
        user = str(body["user"]["id"])
        found = body.get("message")
        message: JsonDict = found if isinstance(found, dict) else {}
        message_ts = str(container.get("message_ts") or message.get("ts") or "") or None
        action_ts = str(action.get("action_ts") or "")
        if action_ts and not self._first_time(("press", channel, user, action_ts)):
            return
        token = str(action.get("value") or str(action["action_id"])[len(ACTION_PREFIX) :])
        label = str((action.get("text") or {}).get("text") or token)
        press = Press(
            chat_id=f"{self.prefix}:{channel}",
            sender=user,
            token=token,
            platform_id=action_ts or None,
            message_id=message_ts,
            chat_title=await self._title(channel),
        )
        if self._inbox is None:
            return
        result = await self._inbox.press(press)
        thread = message.get("thread_ts") or container.get("thread_ts")
        try:
            if result.acted and message_ts and not container.get("is_ephemeral"):
                spent = None if result.spent_all else str(action["action_id"])
                await self._mark_pressed(channel, message_ts, message, spent, label, user)
            elif result.note:
                await self._ephemeral(channel, user, result.note, thread)
        except ChannelError as exc:
            log.warning("slack: could not answer a press in %s: %s", channel, exc)

    async def _may_post(self, channel: str) -> bool:
        """False where Slack says the bot is not in the channel: a slash command works
        there, but its answer could not be posted. Asked until the answer is yes."""
        if channel in self._member_of:
            return True
        try:
            info = (await self._web().conversations_info(channel=channel))["channel"]
        except (SlackApiError, *_NETWORK_ERRORS) as exc:
            log.info("slack: cannot tell whether the bot is in %s (%s)", channel, _describe(exc))
            return True  # the answer's send will say what is wrong
        if info.get("is_member") is False:
            return False
        self._member_of.add(channel)
        return True

    async def _respond(self, url: object, text: str) -> None:
        """A line only the person who typed the slash command sees, through its
        response_url (which needs no channel membership)."""
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return
        try:
            await AsyncWebhookClient(url, session=self._session).send(
                text=text, response_type="ephemeral"
            )
        except (SlackApiError, SlackRequestError, *_NETWORK_ERRORS) as exc:
            log.warning("slack: could not answer a slash command (%s)", _describe(exc))

    async def _deliver(self, message: IncomingMessage) -> None:
        try:
            if self._inbox is not None:
                await self._inbox.deliver(message)
        except Exception:
            self.skipped += 1
            log.exception("slack: could not handle a message")

    async def _incoming(self, event: JsonDict) -> IncomingMessage | None:
        """An IncomingMessage for something a person said; None for the rest."""
        kind = event.get("type")
        if kind not in ("message", "app_mention") or event.get("subtype") not in PERSON_SUBTYPES:
            return None
        user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
        if not (user and channel and ts) or self._is_own(event):
            return None
        if not self._first_time((str(channel), str(ts))):
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
            thread=event.get("thread_ts"),  # typed in a thread: answered in it
            addressed=addressed,
        )

    def _is_own(self, event: JsonDict) -> bool:
        own_bot = bool(self._bot_id) and event.get("bot_id") == self._bot_id
        return own_bot or event.get("user") == self.bot_user_id

    def _first_time(self, key: Hashable) -> bool:
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
        sent = await self._post(self._channel(chat_id), split_text(to_mrkdwn(text), LIMIT))
        return sent[-1]

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        """Post text with Block Kit buttons under its last piece (a section and an actions
        block: action_id `press:<token>`, value the token), in the thread under `thread`
        (its ts); returns the ts of the first piece."""
        channel = self._channel(chat_id)
        mrkdwn = to_mrkdwn(text) if text.strip() else ""
        if not mrkdwn and not buttons:
            return None
        pieces = split_text(mrkdwn, SECTION_LIMIT if buttons else LIMIT) if mrkdwn else [""]
        # a slash command is seen by nobody: its answer, where it goes in a thread (a
        # run's), shows in the channel too, or the person who typed it would see nothing
        broadcast = thread is not None and _ANSWERING.get() == channel
        sent = await self._post(
            channel, pieces, thread=thread, extra=_actions(buttons), broadcast=broadcast
        )
        return sent[0]

    async def _post(
        self,
        channel: str,
        pieces: list[str],
        *,
        thread: str | None = None,
        extra: list[JsonDict] | None = None,
        broadcast: bool = False,
    ) -> list[str]:
        """One queue job for all pieces, so they stay together; a retry resumes at the
        piece that failed rather than repeating the ones Slack already has. `extra`
        blocks (buttons) go under the last piece; `broadcast`: the thread's pieces show
        in the channel too. Returns each piece's ts."""
        remaining = list(pieces)
        sent: list[str] = []

        async def send() -> str:
            while remaining:
                piece = remaining[0]
                args: JsonDict = {"channel": channel, "text": piece}
                if thread:
                    args["thread_ts"] = thread
                    if broadcast:
                        args["reply_broadcast"] = True
                if extra and len(remaining) == 1:
                    args["blocks"] = [*([_section(piece)] if piece else []), *extra]
                    args["text"] = piece or _labels(extra)
                response = await self._post_one(args)
                sent.append(str(response["ts"]))
                remaining.pop(0)
            return sent[-1]

        await self._queue.submit(send)
        if extra:
            self._remember(channel, sent[-1], extra)
        return sent

    async def _post_one(self, args: JsonDict) -> AsyncSlackResponse:
        return await self._call("chat.postMessage", lambda: self._web().chat_postMessage(**args))

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        """Upload as a file in the chat (in the thread under `thread`); returns the file id."""
        channel = self._channel(chat_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ChannelError(f"slack: cannot read image {path}: {exc.strerror}") from None
        comment = to_mrkdwn(caption) if caption.strip() else None
        if comment is not None and len(comment) > LIMIT:
            await self.send_message(chat_id, caption, thread=thread)
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
                    thread_ts=thread,
                ),
            )
            return str(response["file"]["id"])

        return await self._queue.submit(send)

    async def edit_text(
        self, chat_id: str, message_id: str, text: str, *, thread: str | None = None
    ) -> str | None:
        """chat.update in place; a message Slack will not edit is sent anew (in the thread
        under `thread`, where it belongs in one). Text beyond one message follows as new
        messages, there too.

        The text goes as a section block too, with the buttons (or pressed line) the
        message had: chat.update without blocks keeps a message's old blocks, and Slack
        shows those, not the new text.
        """
        channel = self._channel(chat_id)
        pieces = split_text(to_mrkdwn(text), SECTION_LIMIT) if text.strip() else []
        if not pieces:
            return None
        extra = self._drawn.get((channel, message_id), [])

        async def send() -> str:
            await self._update(channel, message_id, pieces[0], [_section(pieces[0]), *extra])
            return message_id

        try:
            edited = await self._queue.submit(send)
        except SlackRefused as exc:
            if exc.error not in EDIT_REFUSED:
                raise
            return (await self._post(channel, pieces, thread=thread))[-1]
        if len(pieces) > 1:
            await self._post(channel, pieces[1:], thread=thread)
        return edited

    async def _update(
        self, channel: str, ts: str, text: str, blocks: list[JsonDict]
    ) -> AsyncSlackResponse:
        return await self._call(
            "chat.update",
            lambda: self._web().chat_update(channel=channel, ts=ts, text=text, blocks=blocks),
        )

    async def _mark_pressed(
        self,
        channel: str,
        ts: str,
        message: JsonDict,
        action_id: str | None,
        label: str,
        user: str,
    ) -> None:
        """The pressed button becomes a line "<label> — pressed by <who>" under the
        message, so nobody presses a used button again. The other buttons stay (a run's
        Logs pressed leaves its Stop), unless `action_id` is None: a choice (Yes / No)
        was used up, and every button goes. An actions block left empty goes."""
        pressed = {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{escape(label)} — pressed by <@{user}>"}],
        }
        blocks: list[JsonDict] = []
        for block in message.get("blocks") or []:
            if block.get("type") == "actions":
                elements = [
                    e
                    for e in block.get("elements", [])
                    if action_id is not None and e.get("action_id") != action_id
                ]
                if not elements:
                    continue
                block = {**block, "elements": elements}
            blocks.append(block)
        blocks.append(pressed)
        text = str(message.get("text") or label)

        async def send() -> str:
            await self._update(channel, ts, text, blocks)
            return ts

        # before the update: an edit racing it must not bring the pressed button back
        self._remember(channel, ts, [b for b in blocks if b.get("type") != "section"])
        await self._queue.submit(send)

    async def _ephemeral(self, channel: str, user: str, note: str, thread: str | None) -> None:
        """The press's note, seen only by who pressed."""

        async def send() -> str:
            response = await self._call(
                "chat.postEphemeral",
                lambda: self._web().chat_postEphemeral(
                    channel=channel, user=user, text=escape(note), thread_ts=thread
                ),
            )
            return str(response.get("message_ts") or "")

        await self._queue.submit(send)

    def _remember(self, channel: str, ts: str, extra: list[JsonDict]) -> None:
        self._drawn[(channel, ts)] = extra
        self._drawn.move_to_end((channel, ts))
        while len(self._drawn) > DRAWN_KEPT:
            self._drawn.popitem(last=False)

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
        if self._handler is not None:
            with contextlib.suppress(Exception):  # closing: whatever state it is in
                await self._handler.close_async()  # type: ignore[no-untyped-call]
            self._handler = None
        self._hello.clear()
        await cancel(self._watchdog)
        await cancel(self._dispatcher)
        self._dispatcher = self._watchdog = None
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


def _section(text: str) -> JsonDict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _actions(buttons: Sequence[Button]) -> list[JsonDict]:
    """Actions blocks (25 buttons each) whose buttons carry the token as action_id and
    value; a style only where one is asked for (Slack refuses an empty one)."""
    elements: list[JsonDict] = []
    for button in buttons:
        element: JsonDict = {
            "type": "button",
            "text": {"type": "plain_text", "text": button.label[:LABEL_LIMIT] or button.token},
            "action_id": ACTION_PREFIX + button.token,
            "value": button.token,
        }
        if button.style:
            element["style"] = button.style
        elements.append(element)
    return [
        {
            "type": "actions",
            "block_id": f"assistant-actions-{i // BUTTONS_PER_BLOCK}",
            "elements": elements[i : i + BUTTONS_PER_BLOCK],
        }
        for i in range(0, len(elements), BUTTONS_PER_BLOCK)
    ]


def _labels(blocks: list[JsonDict]) -> str:
    """Text for a message that is buttons only (notifications show it)."""
    labels = [
        e["text"]["text"]
        for b in blocks
        for e in b.get("elements", [])
        if e.get("type") == "button"
    ]
    return " / ".join(labels) or " "


def _shape_problem(kind: str, payload: JsonDict) -> str | None:
    """Why an envelope cannot be handled (Bolt would fail on it), or None."""
    if kind == "events_api":
        if payload.get("type") != "event_callback":
            return f"a payload of type {payload.get('type')!r}, not event_callback"
        event = payload.get("event")
        if not isinstance(event, dict):
            return f"the event is {type(event).__name__}, not an object"
        return None if isinstance(event.get("type"), str) else "the event has no type"
    if kind == "slash_commands":
        fields = ("command", "channel_id", "user_id")
        if not all(isinstance(payload.get(f), str) and payload.get(f) for f in fields):
            return "a slash command without command, channel_id and user_id"
        text = payload.get("text")
        return None if text is None or isinstance(text, str) else "its text is not a string"
    if payload.get("type") != "block_actions":
        return None  # other interactions: Bolt routes them, no listener takes them
    actions, user = payload.get("actions"), payload.get("user")
    if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
        return "block_actions without a list of actions"
    if not all(isinstance(a.get("action_id"), str) for a in actions):
        return "an action without an action_id"
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        return "block_actions without a user"
    channel, container = payload.get("channel"), payload.get("container")
    has_channel = isinstance(channel, dict) and isinstance(channel.get("id"), str)
    if not has_channel and not (isinstance(container, dict) and container.get("channel_id")):
        return "block_actions without a channel"
    return None


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
