"""A Bot API server on 127.0.0.1 that speaks the real wire format, for the Telegram channel.

It answers what the channel uses (getMe, deleteWebhook, getUpdates, sendMessage, sendPhoto,
editMessageText, editMessageReplyMarkup, answerCallbackQuery, setMyCommands, sendChatAction)
with the JSON the real server sends, and fails the way the
real one does: an HTTP status plus `{"ok": false, "error_code", "description", "parameters"}`
(python-telegram-bot picks its exception from the status). Updates follow the real
semantics: `getUpdates(offset=N)` confirms and forgets everything below N, and only the
kinds of update its `allowed_updates` (as last given) names are sent.

    fake = FakeTelegram(); await fake.start()
    uid = fake.push_message(1001, "/status")
    await fake.wait_sent(1001)          # fake.sent[1001][0].text
    fake.push_press(1001, message_id, "Stop")   # a user taps the inline button labelled Stop
    await fake.wait_answered(query_id)  # fake.answers[query_id].text

A message sent with `reply_markup` keeps its inline keyboard (`Sent.buttons`, and in the
message JSON a press carries) until `editMessageReplyMarkup` replaces or removes it; one sent
with `reply_parameters` replies to that message where it exists (`Sent.reply_to`), and is
refused where it does not, unless `allow_sending_without_reply` is set. A callback query is
answered at most once and only while it is young: like Telegram (about 15 s), the fake
refuses an answerCallbackQuery older than `query_max_age_s` ("query is too old"), which
a test may shorten so that it need not wait 15 s.
"""

from __future__ import annotations

import asyncio
import copy
import html
import json
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-fake-token-for-tests"
BOT_USER: dict[str, Any] = {
    "id": 777000111,
    "is_bot": True,
    "first_name": "Ops Assistant",
    "username": "ops_helper_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": True,
    "supports_inline_queries": False,
}
ANN: dict[str, Any] = {"id": 4242, "is_bot": False, "first_name": "Ann", "username": "ann"}
# The tags Telegram's HTML parse mode accepts.
ALLOWED_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
    "span", "tg-spoiler", "blockquote", "tg-emoji",
}  # fmt: skip
DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    409: "Conflict: terminated by other getUpdates request",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
BUTTON_STYLES = {"primary", "success", "danger"}
DROP = 0  # a `fail_next` status that closes the connection without an answer


@dataclass
class Sent:
    """A message the bot sent (text is what a user sees; raw is what was posted)."""

    message_id: int
    text: str
    raw: str
    parse_mode: str | None
    # the inline keyboard as drawn: rows of (label, callback_data)
    buttons: list[list[tuple[str, str]]] = field(default_factory=list)
    reply_to: int | None = None  # the message it replies to, where it does
    markup: dict[str, Any] | None = None  # reply_markup as posted (styles and all)


@dataclass
class Photo:
    message_id: int
    data: bytes
    caption: str
    reply_to: int | None = None


@dataclass
class Answer:
    """An answerCallbackQuery: the toast a user sees after pressing a button."""

    query_id: str
    text: str
    show_alert: bool


@dataclass
class MarkupEdit:
    """An editMessageReplyMarkup: the message's keyboard after it (empty: removed)."""

    message_id: int
    buttons: list[list[tuple[str, str]]]


@dataclass
class Edit:
    message_id: int
    text: str


@dataclass
class Call:
    method: str
    params: dict[str, str]  # files left out
    at: float  # loop time


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    description: str | None


@dataclass
class _Chat:
    json: dict[str, Any]
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> Message JSON


class _BadHtml(ValueError):
    pass


class _Visible(HTMLParser):
    """Checks markup the way Telegram does and collects the text a user would see."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise _BadHtml(f'Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise _BadHtml(f'Unexpected end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def visible_text(raw: str, parse_mode: str | None) -> str:
    """What a user sees; raises _BadHtml where Telegram answers "can't parse entities"."""
    if parse_mode is None:
        return raw
    if parse_mode != "HTML":
        raise _BadHtml(f"unsupported parse mode {parse_mode}")
    if re.search(r"<(?![a-zA-Z/])|&(?!(?:amp|lt|gt|quot|#\d+|#x[0-9a-fA-F]+);)", raw):
        raise _BadHtml("unescaped '<' or '&'")
    parser = _Visible()
    parser.feed(raw)
    parser.close()
    if parser.open:
        raise _BadHtml(f'Can\'t find end tag corresponding to start tag "{parser.open[-1]}"')
    return html.unescape("".join(parser.text))


class FakeTelegram:
    """The fake server plus the handles tests use: push updates, inspect what was sent."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.reject_token = False  # every method answers 401 Unauthorized
        self.sent: dict[int, list[Sent]] = {}
        self.photos: dict[int, list[Photo]] = {}
        self.edits: dict[int, list[Edit]] = {}
        self.actions: dict[int, list[str]] = {}
        self.calls: list[Call] = []  # every request
        self._updates: dict[int, dict[str, Any]] = {}  # every update ever pushed
        self._unconfirmed: list[int] = []
        self._redelivered: list[dict[str, Any]] = []
        self._failures: dict[str, list[_Failure]] = {}
        self._chats: dict[int, _Chat] = {}
        self._changed = asyncio.Event()  # an update arrived: wakes long polls
        self._tick = asyncio.Event()  # anything was recorded: wakes tests' waits
        self._confirmed_below = 0
        self._redelivered_in = 0  # the getUpdates call that last carried redelivered updates
        self._next_update = 100
        self._next_message = 5000
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.menus: dict[str, list[dict[str, str]]] = {}  # scope (JSON) -> setMyCommands list
        self.answers: dict[str, Answer] = {}  # callback query id -> its answer
        self.markup_edits: dict[int, list[MarkupEdit]] = {}
        self._queries: dict[str, int] = {}  # callback query id -> the chat it came from
        self._pressed_at: dict[str, float] = {}  # callback query id -> when it was pressed
        self.query_max_age_s = 15.0  # answers later than this are refused, as Telegram does
        self.late_answers: list[str] = []  # callback query ids answered too late
        self.query_updates: dict[str, int] = {}  # callback query id -> its update_id
        # the kinds of update getUpdates last asked for (None: every kind, the default)
        self.allowed_updates: set[str] | None = None
        self._next_query = 880000

    @property
    def base_url(self) -> str:
        """What the channel takes as `api_url` (the token is appended)."""
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        self._closing = True
        self._changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- what tests do -----------------------------------------------------------------

    def push_message(
        self,
        chat_id: int,
        text: str,
        chat_type: str = "private",
        from_user: dict[str, Any] | None = None,
        reply_to_message_id: int | None = None,
        *,
        title: str = "ML team",
        caption: bool = False,
    ) -> int:
        """Queue an update with a new message from a user; returns its update_id."""
        user = dict(from_user or ANN)
        if chat_type == "private":
            chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
            if "username" in user:
                chat["username"] = user["username"]
        else:
            chat = {"id": chat_id, "type": chat_type, "title": title}
        state = self._chat(chat_id, chat)
        message: dict[str, Any] = {
            "message_id": self._new_message_id(),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
        }
        if caption:
            message["photo"] = [_photo_size(b"\x89PNG")]
            message["caption"] = text
        else:
            message["text"] = text
            entities = _entities(text)
            if entities:
                message["entities"] = entities
        if reply_to_message_id is not None:
            message["reply_to_message"] = state.messages[reply_to_message_id]
        state.messages[message["message_id"]] = message
        return self.push_update({"message": message})

    def push_update(self, body: dict[str, Any]) -> int:
        """Queue any update body (`{"message": ...}`); returns its update_id."""
        self._next_update += 1
        update = {"update_id": self._next_update, **body}
        self._updates[self._next_update] = update
        self._unconfirmed.append(self._next_update)
        self._changed.set()
        return self._next_update

    def push_press(
        self,
        chat_id: int,
        message_id: int,
        label: str | None = None,
        *,
        data: Any = None,
        from_user: dict[str, Any] | None = None,
        inaccessible: bool = False,
    ) -> str:
        """A user taps an inline button under one of the bot's messages: queue the
        callback_query update Telegram sends, and return the query's id.

        `label` names the button as drawn (its callback_data is sent); `data` sends other
        callback data instead (Telegram's clients can send any, so the bot must not trust it).
        `inaccessible`: the message is older than the bot may see (48 hours), so the press
        carries only its chat and id (an InaccessibleMessage, date 0).
        """
        message = self._chat(chat_id).messages[message_id]
        if label is not None:
            drawn = dict(button for row in _rows(message.get("reply_markup")) for button in row)
            if label not in drawn:
                raise AssertionError(f"no button {label!r} under message {message_id}: {drawn}")
            data = drawn[label]
        self._next_query += 1
        query_id = str(self._next_query)
        self._queries[query_id] = chat_id
        self._pressed_at[query_id] = asyncio.get_running_loop().time()
        query: dict[str, Any] = {
            "id": query_id,
            "from": dict(from_user or ANN),
            "message": (
                {"chat": message["chat"], "message_id": message_id, "date": 0}
                if inaccessible
                else copy.deepcopy(message)  # as it was when pressed
            ),
            "chat_instance": f"-{abs(chat_id)}77",
        }
        if data is not None:
            query["data"] = data
        self.query_updates[query_id] = self.push_update({"callback_query": query})
        return query_id

    def messages(self, chat_id: int) -> dict[int, dict[str, Any]]:
        """A chat's messages as Telegram holds them (message JSON by id)."""
        return self._chat(chat_id).messages

    def buttons(self, chat_id: int, message_id: int) -> list[list[tuple[str, str]]]:
        """The inline keyboard a message shows now: rows of (label, callback_data)."""
        return _rows(self._chat(chat_id).messages[message_id].get("reply_markup"))

    async def wait_answered(self, query_id: str, timeout: float = 10) -> Answer:
        """The answer to a callback query, once the bot gave it."""
        async with asyncio.timeout(timeout):
            while query_id not in self.answers:
                await self._tick.wait()
        return self.answers[query_id]

    def message_id(self, update_id: int) -> int:
        """The id of the message an update carries (to reply to it)."""
        return int(self._updates[update_id]["message"]["message_id"])

    def redeliver(self, update_id: int, *, as_new: bool = False) -> int:
        """Send an update again in the next getUpdates, whatever offset the client gives
        (at-least-once delivery). `as_new`: the same message under a fresh update_id."""
        update = self._updates[update_id]
        if as_new:
            return self.push_update({k: v for k, v in update.items() if k != "update_id"})
        self._redelivered.append(update)
        self._changed.set()
        return update_id

    def unconfirm(self, update_id: int) -> None:
        """Keep an update as if its confirmation never arrived (the client died first): it
        is sent again to a client that asks without an offset past it."""
        if update_id not in self._unconfirmed:
            self._unconfirmed = sorted([*self._unconfirmed, update_id])
        self._confirmed_below = min(self._confirmed_below, update_id)
        self._changed.set()

    def fail_next(
        self,
        method: str,
        status: int,
        retry_after: int | None = None,
        *,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` calls of `method` fail with this HTTP status (DROP: no answer)."""
        failure = _Failure(status, retry_after, description)
        self._failures.setdefault(method, []).extend([failure] * times)

    def clear_failures(self) -> None:
        self._failures.clear()

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def wait_calls(self, method: str, count: int, timeout: float = 10) -> list[Call]:
        """The calls of `method` once there are at least `count`."""
        async with asyncio.timeout(timeout):
            while len(self.calls_of(method)) < count:
                await self._tick.wait()
        return self.calls_of(method)

    async def wait_redelivered(self, timeout: float = 10) -> None:
        """Until the client took the redelivered updates and asked for more (handled them)."""
        async with asyncio.timeout(timeout):
            while self._redelivered or len(self.calls_of("getUpdates")) <= self._redelivered_in:
                await self._tick.wait()

    async def wait_sent(self, chat_id: int, count: int = 1, timeout: float = 10) -> list[Sent]:
        """The chat's sent messages once there are at least `count`."""
        async with asyncio.timeout(timeout):
            while len(self.sent.get(chat_id, [])) < count:
                await self._tick.wait()
        return self.sent[chat_id]

    async def wait_confirmed(self, update_id: int, timeout: float = 10) -> None:
        """Until a client asked for updates past `update_id`: it has handled that one."""
        async with asyncio.timeout(timeout):
            while self._confirmed_below <= update_id:
                await self._tick.wait()

    # ---- the server --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        self.calls.append(Call(method, params, asyncio.get_running_loop().time()))
        try:
            return await self._answer(request, method, form, params)
        finally:
            self._touch()

    def _touch(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def _answer(
        self, request: web.Request, method: str, form: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        if self.reject_token or request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        failures = self._failures.get(method)
        if failures:
            failure = failures.pop(0)
            if failure.status == DROP:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            return _failure(failure)
        try:
            if method == "getMe":
                return _ok(BOT_USER)
            if method == "deleteWebhook":
                return _ok(True)
            if method == "getUpdates":
                return _ok(await self._get_updates(params))
            if method == "sendMessage":
                return _ok(self._send_message(params))
            if method == "sendPhoto":
                file = form.get("photo")
                data = b""
                if isinstance(file, web.FileField):
                    with file.file:  # closed now, not whenever it is collected
                        data = file.file.read()
                return _ok(self._send_photo(params, data))
            if method == "editMessageText":
                return _ok(self._edit(params))
            if method == "editMessageReplyMarkup":
                return _ok(self._edit_markup(params))
            if method == "answerCallbackQuery":
                return _ok(self._answer_query(params))
            if method == "setMyCommands":
                commands = _commands(params.get("commands", ""))
                self.menus[_scope(params)] = commands
                return _ok(True)
            if method == "deleteMyCommands":  # the scope falls back to a wider one
                self.menus.pop(_scope(params), None)
                return _ok(True)
            if method == "sendChatAction":
                self.actions.setdefault(int(params["chat_id"]), []).append(params["action"])
                return _ok(True)
        except _BadRequest as exc:
            return _error(400, f"Bad Request: {exc}")
        return _error(404, "Not Found")

    async def _get_updates(self, params: dict[str, str]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        if "allowed_updates" in params:  # kept until a later call sets it again
            wanted = json.loads(params["allowed_updates"])
            self.allowed_updates = set(wanted) if wanted else None
        if offset:
            self._confirmed_below = max(self._confirmed_below, offset)
            self._unconfirmed = [u for u in self._unconfirmed if u >= offset]
            self._touch()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            # an update of a kind the client did not ask for is never sent (nor kept)
            self._unconfirmed = [u for u in self._unconfirmed if self._wanted(self._updates[u])]
            ready = self._redelivered + [self._updates[u] for u in self._unconfirmed]
            if self._redelivered:
                self._redelivered = []
                self._redelivered_in = len(self.calls_of("getUpdates"))
            if ready or self._closing:
                return ready[:limit]
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return []
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return []

    def _wanted(self, update: dict[str, Any]) -> bool:
        if self.allowed_updates is None:
            return True
        return any(kind in self.allowed_updates for kind in update if kind != "update_id")

    def _send_message(self, params: dict[str, str]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        raw = params.get("text", "")
        text = _visible(raw, params.get("parse_mode"))
        if not text.strip():
            raise _BadRequest("message text is empty")
        if len(text) > 4096:
            raise _BadRequest("message is too long")
        extra = self._reply_fields(chat_id, params)
        message = self._bot_message(chat_id, text=text, **extra)
        self.sent.setdefault(chat_id, []).append(
            Sent(
                message["message_id"],
                text,
                raw,
                params.get("parse_mode"),
                _rows(message.get("reply_markup")),
                _replied(message),
                message.get("reply_markup"),
            )
        )
        return message

    def _send_photo(self, params: dict[str, str], data: bytes) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        caption = _visible(params.get("caption", ""), params.get("parse_mode"))
        if len(caption) > 1024:
            raise _BadRequest("message caption is too long")
        if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8")):
            raise _BadRequest("IMAGE_PROCESS_FAILED")
        extra: dict[str, Any] = {
            "photo": [_photo_size(data)],
            **self._reply_fields(chat_id, params),
        }
        if caption:
            extra["caption"] = caption
        message = self._bot_message(chat_id, **extra)
        self.photos.setdefault(chat_id, []).append(
            Photo(message["message_id"], data, caption, _replied(message))
        )
        return message

    def _reply_fields(self, chat_id: int, params: dict[str, str]) -> dict[str, Any]:
        """reply_markup and reply_parameters as the real server checks and keeps them."""
        extra: dict[str, Any] = {}
        if "reply_markup" in params:
            markup = _markup(params["reply_markup"])
            if markup["inline_keyboard"]:
                extra["reply_markup"] = markup
        reply = params.get("reply_parameters")
        if reply is None and "reply_to_message_id" in params:
            reply = json.dumps({"message_id": int(params["reply_to_message_id"])})
        if reply is not None:
            wanted = json.loads(reply)
            if not isinstance(wanted, dict) or not isinstance(wanted.get("message_id"), int):
                raise _BadRequest("invalid reply parameters specified")
            target = self._chat(chat_id).messages.get(wanted["message_id"])
            if target is not None:  # one level deep, as Telegram sends it
                extra["reply_to_message"] = {
                    k: v for k, v in target.items() if k != "reply_to_message"
                }
            elif not wanted.get("allow_sending_without_reply"):
                raise _BadRequest("message to be replied not found")
        return extra

    def _edit_markup(self, params: dict[str, str]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message_id = int(params["message_id"])
        message = self._chat(chat_id).messages.get(message_id)
        if message is None or message["from"]["id"] != BOT_USER["id"]:
            raise _BadRequest("message to edit not found")
        markup = _markup(params.get("reply_markup", '{"inline_keyboard": []}'))
        if _rows(markup) == _rows(message.get("reply_markup")):
            raise _BadRequest(
                "message is not modified: specified new message content and reply markup are"
                " exactly the same as a current content and reply markup of the message"
            )
        if markup["inline_keyboard"]:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        self.markup_edits.setdefault(chat_id, []).append(MarkupEdit(message_id, _rows(markup)))
        return message

    def _answer_query(self, params: dict[str, str]) -> bool:
        query_id = params.get("callback_query_id", "")
        pressed = self._pressed_at.get(query_id)
        late = pressed is not None and (
            asyncio.get_running_loop().time() - pressed > self.query_max_age_s
        )
        if late:
            self.late_answers.append(query_id)
        if query_id not in self._queries or query_id in self.answers or late:
            raise _BadRequest(
                "query is too old and response timeout expired or query ID is invalid"
            )
        text = params.get("text", "")
        if len(text) > 200:
            raise _BadRequest("MESSAGE_TOO_LONG")
        show_alert = params.get("show_alert", "false").lower() == "true"
        self.answers[query_id] = Answer(query_id, text, show_alert)
        return True

    def _edit(self, params: dict[str, str]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message_id = int(params["message_id"])
        text = _visible(params.get("text", ""), params.get("parse_mode"))
        message = self._chat(chat_id).messages.get(message_id)
        if message is None or message["from"]["id"] != BOT_USER["id"]:
            raise _BadRequest("message to edit not found")
        if len(text) > 4096:
            raise _BadRequest("MESSAGE_TOO_LONG")
        # as on Telegram, an edit without reply_markup takes the inline keyboard off
        markup = _markup(params.get("reply_markup", '{"inline_keyboard": []}'))
        if message.get("text") == text and _rows(markup) == _rows(message.get("reply_markup")):
            raise _BadRequest(
                "message is not modified: specified new message content and reply markup are"
                " exactly the same as a current content and reply markup of the message"
            )
        message["text"] = text
        if markup["inline_keyboard"]:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        self.edits.setdefault(chat_id, []).append(Edit(message_id, text))
        return message

    def _bot_message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        state = self._chat(chat_id)
        message = {
            "message_id": self._new_message_id(),
            "from": BOT_USER,
            "chat": state.json,
            "date": int(time.time()),
            **content,
        }
        state.messages[message["message_id"]] = message
        return message

    def _chat(self, chat_id: int, json: dict[str, Any] | None = None) -> _Chat:
        if chat_id not in self._chats:
            default = {"id": chat_id, "type": "private", "first_name": "Ann"}
            self._chats[chat_id] = _Chat(json or default)
        return self._chats[chat_id]

    def _new_message_id(self) -> int:
        self._next_message += 1
        return self._next_message


class _BadRequest(Exception):
    pass


def _visible(raw: str, parse_mode: str | None) -> str:
    try:
        return visible_text(raw, parse_mode)
    except _BadHtml as exc:
        raise _BadRequest(f"can't parse entities: {exc}") from None


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command and mention entities, as Telegram marks them (UTF-16 offsets)."""
    found = []
    for match in re.finditer(
        r"(?<!\S)(/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?)|(@[A-Za-z0-9_]{5,})", text
    ):
        kind = "bot_command" if match.group(1) else "mention"
        offset = len(text[: match.start()].encode("utf-16-le")) // 2
        length = len(match.group(0).encode("utf-16-le")) // 2
        found.append({"type": kind, "offset": offset, "length": length})
    return found


def _scope(params: dict[str, str]) -> str:
    """A BotCommandScope as the key of `menus`: its JSON, keys sorted."""
    return json.dumps(json.loads(params.get("scope") or '{"type": "default"}'), sort_keys=True)


def _commands(raw: str) -> list[dict[str, str]]:
    """setMyCommands' list as Telegram checks it: at most 100, each command 1-32 of
    a-z, 0-9 and _, each description 1-256 characters."""
    commands = json.loads(raw)
    if not isinstance(commands, list) or len(commands) > 100:
        raise _BadRequest("BOT_COMMANDS_TOO_MUCH")
    for command in commands:
        if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
            raise _BadRequest("BOT_COMMAND_INVALID")
        if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
            raise _BadRequest("BOT_COMMAND_DESCRIPTION_INVALID")
    return commands


def _markup(raw: str) -> dict[str, Any]:
    """An InlineKeyboardMarkup as Telegram checks it: rows of buttons, each with a text and
    callback_data of 1-64 bytes."""
    try:
        markup = json.loads(raw)
    except ValueError:
        raise _BadRequest("can't parse reply keyboard markup JSON object") from None
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _BadRequest('field "inline_keyboard" of the InlineKeyboardMarkup should be an Array')
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not str(button.get("text", "")).strip():
                raise _BadRequest("BUTTON_TEXT_INVALID")
            data = button.get("callback_data")
            if not isinstance(data, str) or not 1 <= len(data.encode()) <= 64:
                raise _BadRequest("BUTTON_DATA_INVALID")
            if button.get("style", "primary") not in BUTTON_STYLES:
                raise _BadRequest("BUTTON_STYLE_INVALID")
    return {"inline_keyboard": [row for row in rows if row]}


def _rows(markup: Any) -> list[list[tuple[str, str]]]:
    if not isinstance(markup, dict):
        return []
    return [
        [(str(b["text"]), str(b["callback_data"])) for b in row]
        for row in markup.get("inline_keyboard", [])
    ]


def _replied(message: dict[str, Any]) -> int | None:
    reply = message.get("reply_to_message")
    return int(reply["message_id"]) if reply else None


def _photo_size(data: bytes) -> dict[str, Any]:
    return {
        "file_id": f"AgAC{len(data)}",
        "file_unique_id": f"AQAD{len(data)}",
        "width": 640,
        "height": 480,
        "file_size": len(data),
    }


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


def _failure(failure: _Failure) -> web.Response:
    text = failure.description or DESCRIPTIONS.get(failure.status, "Error")
    if failure.retry_after is not None:
        return _error(
            failure.status,
            text.format(retry_after=failure.retry_after),
            retry_after=failure.retry_after,
        )
    return _error(failure.status, text)
