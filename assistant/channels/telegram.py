"""The Telegram channel: long polling with python-telegram-bot's `Bot`, sends through one
`SendQueue`.

Native where Telegram offers it: the command menu (the `/` button) filled from the command
registry, inline keyboard buttons whose callback queries come back as presses (answered
with the orchestrator's note as soon as the press is decided, before its command runs, the
pressed button taken off once it acted), and threads as
replies to the thread's first message (a run's messages reply to its launch message). A
message that is itself a reply (or in a forum topic) is in a thread: its answer replies to it.

Polling needs no public URL, which suits a single assistant on a GPU host. The update offset
is stored after each update is handled, so a restart neither replays what was answered nor
skips what arrived while the service was down. The token never appears in a message or a
log line: the library's error texts are scrubbed of it, the one that quotes it (a rejected
token) is replaced, and httpx, which logs every request URL, is kept at WARNING.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
import os
import re
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeChat,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    Message,
    ReplyParameters,
    Update,
)
from telegram import error as tg
from telegram.constants import ChatType, ParseMode
from telegram.warnings import PTBDeprecationWarning, PTBUserWarning

from assistant.background import cancel
from assistant.channels.base import (
    Button,
    Channel,
    Inbox,
    IncomingMessage,
    MenuEntry,
    Press,
    PressResult,
)
from assistant.channels.delivery import RetryAfter, SendQueue, TransientError, split_text
from assistant.errors import ChannelError
from storage.kv import KeyValue

log = logging.getLogger(__name__)
# PTB v22's own RetryAfter reads its int-valued period, which warns (a UserWarning, so it
# is printed) on every 429; this opts in to the timedelta form that v23 makes the default.
os.environ.setdefault("PTB_TIMEDELTA", "true")

T = TypeVar("T")
OFFSET_KEY = "telegram.offset"
MENU_KEY = "telegram.menu_chats"  # chats given the full command menu, comma-separated ids
TEXT_LIMIT = 4096  # characters of a message, after markup is parsed
CAPTION_LIMIT = 1024
NOTE_LIMIT = 200  # characters of an answerCallbackQuery text
BUTTONS_PER_ROW = 3  # what fits side by side on a phone
# What getUpdates asks for: messages and inline button presses, nothing else.
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
PRESS_FAILED = "That failed inside the assistant; nothing was done"
TOKEN_REJECTED = "telegram: the bot token was rejected (Unauthorized); check TELEGRAM_BOT_TOKEN"
_COMMAND_TARGET = re.compile(r"^/[A-Za-z0-9_]+@([A-Za-z0-9_]+)")
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


class _Unparsable(ChannelError):
    """Telegram could not parse our HTML: the text goes again, plain."""


class _NotModified(ChannelError):
    """An edit to the text the message already has."""


class _CannotEdit(ChannelError):
    """The message is gone or too old to edit: the text is sent anew."""


class TelegramChannel(Channel):
    name = "telegram"
    prefix = "tg"
    supports_edit = True
    supports_buttons = True
    supports_threads = True
    nested_threads = True  # a reply in a chain can be replied to in turn
    backoff_s = 1.0  # first wait after a failed poll; doubles up to max_backoff_s
    max_backoff_s = 30.0

    def __init__(
        self,
        token: str,
        *,
        api_url: str,
        kv: KeyValue,
        poll_timeout: float = 30.0,
        bot_name: str = "assistant",
    ) -> None:
        self._token = token
        api_url = bot_endpoint(api_url)
        self._api_url = api_url
        httpx_log = logging.getLogger("httpx")
        if httpx_log.level == logging.NOTSET:  # it logs each URL at INFO, and ours hold the token
            httpx_log.setLevel(logging.WARNING)
        # PTB refuses an empty token in the constructor; `start` says so in our terms instead.
        placeholder = token.strip() or "0:empty"
        self._bot = Bot(placeholder, base_url=api_url, base_file_url=file_url(api_url))
        self._kv = kv
        self._poll_timeout = poll_timeout
        self._bot_name = bot_name
        self._queue = SendQueue("telegram")
        self._poller: asyncio.Task[None] | None = None
        self._offset: int | None = None
        # Ids handled by this process: a duplicate delivery is skipped. Across restarts the
        # stored offset does that, since the server forgets what lies below it.
        self._recent: deque[int] = deque(maxlen=1000)
        self._connected = False
        self._closed = False
        self._mention: re.Pattern[str] | None = None
        self._called = re.compile(rf"^\s*@?{re.escape(bot_name)}\b", re.IGNORECASE)

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def username(self) -> str:
        """The bot's @username, known once `start` has run getMe."""
        return self._bot.username

    async def start(self, inbox: Inbox) -> None:
        """Check the token (getMe), then poll in the background.

        :raises ChannelError: if the token is rejected or the Bot API cannot be reached.
        """
        if not self._token.strip():
            raise ChannelError(
                "telegram: TELEGRAM_BOT_TOKEN is empty; set the token @BotFather gave"
            )
        try:
            await self._bot.initialize()  # getMe
            await self._bot.delete_webhook()  # getUpdates is refused while a webhook is set
        except tg.InvalidToken:
            await self._bot.shutdown()
            raise ChannelError(TOKEN_REJECTED) from None
        except tg.TelegramError as exc:
            await self._bot.shutdown()
            raise ChannelError(
                f"telegram: cannot reach the Bot API at {self._where()}: {self._scrub(exc)}"
            ) from None
        self._mention = re.compile(rf"@{re.escape(self._bot.username)}\b", re.IGNORECASE)
        stored = await self._kv.get(OFFSET_KEY)
        self._offset = int(stored) if stored else None
        self._connected = True
        log.info("telegram: connected as @%s", self._bot.username)
        self._poller = asyncio.create_task(self._poll(inbox), name="telegram-poll")

    async def set_menu(self, admin_chats: Sequence[str], commands: Sequence[MenuEntry]) -> None:
        """setMyCommands: every command in each admin chat of ours, /help elsewhere.

        The `/` button in Telegram's app shows this list. Telegram keeps a chat's menu until
        it is deleted, so a chat that was given the full menu and is no longer an admin gets
        its own deleted (it falls back to the default, /help); which chats have one is kept
        in the key-value store across restarts. Called again whenever admin chats change. A
        menu Telegram refuses is logged and left as it was: it never stops the channel.
        """
        every = [BotCommand(c.name, c.summary[:256] or c.name) for c in commands]
        short = [c for c in every if c.command == "help"]
        admins = sorted(
            {
                int(chat.split(":", 1)[1])
                for chat in admin_chats
                if self.owns(chat) and chat.split(":", 1)[1].lstrip("-").isdigit()
            }
        )
        stored = await self._kv.get(MENU_KEY) or ""
        before = {int(x) for x in stored.split(",") if x.lstrip("-").isdigit()}
        await self._menu_call("default", self._bot.set_my_commands(short))
        kept = set(admins)
        for chat in admins:
            scope = BotCommandScopeChat(chat)
            await self._menu_call(f"tg:{chat}", self._bot.set_my_commands(every, scope=scope))
        for chat in sorted(before - kept):
            scope = BotCommandScopeChat(chat)
            if not await self._menu_call(f"tg:{chat}", self._bot.delete_my_commands(scope)):
                kept.add(chat)  # tried again at the next call
        await self._kv.set(MENU_KEY, ",".join(str(chat) for chat in sorted(kept)))

    async def _menu_call(self, where: str, call: Awaitable[bool]) -> bool:
        try:
            await call
        except tg.TelegramError as exc:  # one chat refused (the bot left it): the rest go on
            log.warning("telegram: the command menu (%s) was not set: %s", where, self._scrub(exc))
            return False
        return True

    async def aclose(self) -> None:
        self._closed = True
        self._connected = False
        await cancel(self._poller)
        self._poller = None
        await self._queue.aclose()
        await self._bot.shutdown()

    # ---- incoming ----------------------------------------------------------------------

    async def _poll(self, inbox: Inbox) -> None:
        delay = self.backoff_s
        timeout = dt.timedelta(seconds=self._poll_timeout)
        while True:
            try:
                updates = await self._bot.get_updates(
                    offset=self._offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES
                )
                if not self._connected:
                    log.info("telegram: connected again")
                self._connected = True
                delay = self.backoff_s
                for update in updates:
                    await self._handle(inbox, update)
                continue
            except tg.RetryAfter as exc:
                await asyncio.sleep(_retry_seconds(exc))
                continue
            except tg.InvalidToken:
                log.error("%s (while polling)", TOKEN_REJECTED)
            except tg.Conflict:
                log.error(
                    "telegram: another process is polling with this bot token (409 Conflict);"
                    " stop the other instance"
                )
            except tg.TelegramError as exc:  # NetworkError, TimedOut, 5xx
                if self._connected:
                    log.warning("telegram: connection lost (%s); retrying", self._scrub(exc))
            except Exception as exc:  # PTB could not parse an update in the batch
                try:
                    await self._handle_raw(inbox, exc)
                    continue
                except Exception:
                    log.exception("telegram: polling failed; retrying")
            self._connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def _handle_raw(self, inbox: Inbox, cause: Exception) -> None:
        """Fetch the batch PTB could not parse as plain JSON and take it one update at a
        time: the readable ones are handled, an unreadable one is skipped and counted.

        Without this, one malformed update would fail every poll after it, for good.
        """
        with warnings.catch_warnings():  # "use Bot.get_updates": it is what failed
            warnings.simplefilter("ignore", PTBUserWarning)
            raw = await self._bot.do_api_request(
                "getUpdates",
                api_kwargs={
                    "offset": self._offset,
                    "timeout": 0,
                    "allowed_updates": ALLOWED_UPDATES,
                },
            )
        if not isinstance(raw, list):
            raise ValueError(f"getUpdates answered {type(raw).__name__}, not a list") from cause
        for item in raw:
            update_id = item.get("update_id") if isinstance(item, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                self.note_skipped("an update without an update_id", type(cause).__name__)
                continue
            try:
                update = Update.de_json(item, self._bot)
            except Exception as exc:
                self.note_skipped(f"update {update_id}", f"{type(exc).__name__}: {exc}")
                await self._advance(update_id)
                continue
            await self._handle(inbox, update)

    async def _advance(self, update_id: int) -> None:
        self._recent.append(update_id)
        # Not max(): after a week without updates Telegram restarts ids at a random value.
        self._offset = update_id + 1
        await self._kv.set(OFFSET_KEY, str(self._offset))

    async def _handle(self, inbox: Inbox, update: Update) -> None:
        """Deliver one update, then store the offset past it (never before: no skips)."""
        if update.update_id in self._recent:
            log.debug("telegram: update %d was handled before; skipped", update.update_id)
            return
        if update.callback_query is not None:
            await self._handle_press(inbox, update.update_id, update.callback_query)
            await self._advance(update.update_id)
            return
        # One update that cannot be read or handled must not block every later one.
        try:
            message = self._incoming(update)
        except Exception as exc:  # fields of a shape PTB let through (text not a string)
            self.note_skipped(f"update {update.update_id}", f"{type(exc).__name__}: {exc}")
            message = None
        if message is not None:
            try:
                await inbox.deliver(message)
            except Exception:
                self.skipped += 1
                log.exception("telegram: update %d could not be handled; skipped", update.update_id)
        await self._advance(update.update_id)

    async def _handle_press(self, inbox: Inbox, update_id: int, query: CallbackQuery) -> None:
        """An inline button pressed: hand the press to the inbox and, as soon as it is
        decided, before its command runs, answer the query with its note (Telegram shows
        it as a toast and stops the button's spinner: "Stop: on it", or why not) and,
        where it acted, take that button off the message so nobody presses it again. The
        command's reply then follows in the chat. Telegram refuses an answer given more
        than about 15 s after the press ("query is too old"), so a slow command must not
        come first. The other buttons stay ("Logs" pressed under a launch message leaves
        "Stop" there to press), unless the press used them all (a choice: Yes / No),
        which takes the keyboard off.

        Whether it acts (rights at this moment, a button already used, one that expired) is
        the inbox's to say, never the channel's.
        """
        try:
            press = self._press(query)
        except Exception as exc:  # fields of a shape PTB let through
            self.note_skipped(
                f"update {update_id} (a button press)", f"{type(exc).__name__}: {exc}"
            )
            await self._answer(query, "This button could not be read")
            return
        if press is None:
            await self._answer(query, "This button is not one of the assistant's")
            return
        answered = False

        async def claimed(decided: PressResult) -> None:
            nonlocal answered
            answered = True
            await self._answer(query, decided.note)
            if decided.acted:
                await self._spend(press, query.message, every=decided.spent_all)

        try:
            result = await inbox.press(press, claimed)
        except Exception:
            self.skipped += 1
            log.exception("telegram: the press in update %d could not be handled", update_id)
            if not answered:
                await self._answer(query, PRESS_FAILED)
            return
        if not answered:  # it failed before it was decided: the query is still open
            await claimed(result)

    def _press(self, query: CallbackQuery) -> Press | None:
        """The Press a callback query stands for; None for one no button of ours sends (a
        game, a message sent inline through another chat)."""
        message = query.message
        data = query.data
        if message is None or not isinstance(data, str) or not data:
            return None
        chat = message.chat
        user = query.from_user
        return Press(
            chat_id=f"tg:{int(chat.id)}",
            sender=user.username or user.full_name or str(user.id),
            token=data,
            platform_id=str(query.id),
            message_id=str(int(message.message_id)),
            chat_title=chat.effective_name or "",
        )

    async def _answer(self, query: CallbackQuery, note: str) -> None:
        """answerCallbackQuery, at once (not behind queued messages: the user waits on a
        spinner). A query too old to answer is logged; it never stops polling."""
        text = note if len(note) <= NOTE_LIMIT else note[: NOTE_LIMIT - 1] + "…"
        try:
            await self._bot.answer_callback_query(str(query.id), text=text or None)
        except tg.TelegramError as exc:
            log.warning("telegram: a button press was not answered: %s", self._scrub(exc))

    async def _spend(self, press: Press, message: object, *, every: bool) -> None:
        """editMessageReplyMarkup: the keyboard without the pressed button, built from the
        message as the press carried it; none at all where that was the last button or
        `every` one went. A message Telegram no longer shows the bot (older than 48 hours)
        carries no keyboard: it is left as it is unless every button went, since taking
        all of it off would take the other actions too."""
        drawn = message.reply_markup if isinstance(message, Message) else None
        if press.message_id is None or (drawn is None and not every):
            return
        target, message_id = self._target(press.chat_id), int(press.message_id)
        rows = [
            [b for b in row if b.callback_data != press.token]
            for row in (drawn.inline_keyboard if drawn is not None and not every else ())
        ]
        left = InlineKeyboardMarkup([row for row in rows if row]) if any(rows) else None
        try:
            await self._submit(
                lambda: self._bot.edit_message_reply_markup(
                    chat_id=target, message_id=message_id, reply_markup=left
                )
            )
        except (_NotModified, _CannotEdit):
            pass  # already gone, or the message is: nothing left to press
        except ChannelError as exc:
            log.warning("telegram: the buttons of message %d stay drawn: %s", message_id, exc)

    def _incoming(self, update: Update) -> IncomingMessage | None:
        message = update.message
        if message is None:
            return None
        chat = message.chat
        if message.migrate_to_chat_id is not None:
            log.warning(
                "telegram: group tg:%s became supergroup tg:%s; update chat ids that name it",
                chat.id,
                message.migrate_to_chat_id,
            )
            return None
        text = message.text or message.caption
        user = message.from_user
        if not text or (user is not None and user.is_bot):
            return None  # no text, or another bot: answering bots invites loops
        target = _COMMAND_TARGET.match(text)
        if target and target.group(1).lower() != self._bot.username.lower():
            return None  # /command@otherbot in a group
        sender: str | None
        if user is not None:
            sender = user.username or user.full_name
        else:
            sender = message.sender_chat.effective_name if message.sender_chat else None
        reply = message.reply_to_message
        # a reply (or a message in a forum topic) is in a thread: a chain of replies, which
        # the answer continues by replying to it (in a topic, that keeps it in the topic)
        in_thread = reply is not None or bool(message.is_topic_message)
        return IncomingMessage(
            chat_id=f"tg:{chat.id}",
            sender=sender or "unknown",
            text=text,
            platform_id=str(message.message_id),
            chat_title=chat.effective_name or "",
            reply_to=str(reply.message_id) if reply else None,
            thread=str(message.message_id) if in_thread else None,
            addressed=self._addressed(message, text),
        )

    def _addressed(self, message: Message, text: str) -> bool:
        """A direct message, an @mention, a reply to the bot, or text that starts with its name."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        reply = message.reply_to_message
        if reply is not None and reply.from_user is not None and reply.from_user.id == self._bot.id:
            return True
        if self._mention is not None and self._mention.search(text):
            return True
        return bool(self._called.match(text))

    # ---- outgoing ----------------------------------------------------------------------

    async def send_text(self, chat_id: str, text: str) -> str | None:
        """Send as HTML, split at Telegram's limit; returns the last message's id."""
        sent = await self._send_pieces(self._target(chat_id), text)
        return sent[-1] if sent else None

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        """Send as HTML with the buttons as an inline keyboard under the text (on its last
        piece, where it is split), each piece replying to `thread`'s message; returns the
        first message's id, the one a thread opened by this message hangs from."""
        sent = await self._send_pieces(
            self._target(chat_id), text, keyboard=keyboard(buttons), reply=replying_to(thread)
        )
        return sent[0] if sent else None

    async def _send_pieces(
        self,
        target: int | str,
        text: str,
        *,
        keyboard: InlineKeyboardMarkup | None = None,
        reply: ReplyParameters | None = None,
    ) -> list[str]:
        pieces = [piece for piece in split_text(text, TEXT_LIMIT) if piece.strip()]
        sent: list[str] = []
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            sent.append(await self._send_piece(target, piece, keyboard if last else None, reply))
        return sent

    async def send_image(
        self, chat_id: str, path: Path, caption: str = "", *, thread: str | None = None
    ) -> str | None:
        """sendPhoto, replying to `thread`'s message; a caption over Telegram's 1024
        follows as its own message."""
        target = self._target(chat_id)
        reply = replying_to(thread)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ChannelError(f"telegram: cannot read image {path}: {exc.strerror}") from None
        short = caption if len(caption) <= CAPTION_LIMIT else ""
        photo = InputFile(data, filename=path.name)

        async def send(markup: bool) -> Message:
            return await self._bot.send_photo(
                target,
                photo,
                caption=to_html(short) if markup else short,
                parse_mode=ParseMode.HTML if markup else None,
                reply_parameters=reply,
            )

        try:
            sent = await self._submit(lambda: send(True))
        except _Unparsable:
            sent = await self._submit(lambda: send(False))
        if caption and not short:
            await self._send_pieces(target, caption, reply=reply)
        return str(sent.message_id)

    async def edit_text(
        self, chat_id: str, message_id: str, text: str, *, thread: str | None = None
    ) -> str | None:
        """editMessageText; a text over the limit continues in new messages, and a message
        that can no longer be edited is sent anew: both as replies to `thread`'s message
        (the edited one stays where it is: Telegram edits by chat and message id)."""
        target = self._target(chat_id)
        reply = replying_to(thread)
        if not message_id.isdigit():
            raise ChannelError(f"telegram: {message_id!r} is not a message id")
        first, *rest = split_text(text, TEXT_LIMIT)

        async def edit(markup: bool) -> object:
            return await self._bot.edit_message_text(
                to_html(first) if markup else first,
                chat_id=target,
                message_id=int(message_id),
                parse_mode=ParseMode.HTML if markup else None,
            )

        try:
            try:
                await self._submit(lambda: edit(True))
            except _Unparsable:
                await self._submit(lambda: edit(False))
        except _NotModified:
            pass
        except _CannotEdit:
            sent = await self._send_pieces(target, text, reply=reply)
            return sent[-1] if sent else None
        last = message_id
        for piece in rest:
            last = await self._send_piece(target, piece, reply=reply)
        return last

    async def _send_piece(
        self,
        target: int | str,
        piece: str,
        keyboard: InlineKeyboardMarkup | None = None,
        reply: ReplyParameters | None = None,
    ) -> str:
        async def send(markup: bool) -> Message:
            return await self._bot.send_message(
                target,
                to_html(piece) if markup else piece,
                parse_mode=ParseMode.HTML if markup else None,
                reply_markup=keyboard,
                reply_parameters=reply,
            )

        try:
            sent = await self._submit(lambda: send(True))
        except _Unparsable:
            log.warning("telegram: the HTML of a message was refused; sent as plain text")
            sent = await self._submit(lambda: send(False))
        return str(sent.message_id)

    async def _submit(self, call: Callable[[], Awaitable[T]]) -> T:
        """Through the send queue, with the library's errors in the queue's terms."""
        if self._closed:
            raise ChannelError("telegram: the channel is closed")
        return await self._queue.submit(lambda: self._call(call))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except tg.RetryAfter as exc:
            raise RetryAfter(_retry_seconds(exc), "telegram: rate limited") from None
        except tg.BadRequest as exc:  # before NetworkError: BadRequest is a subclass
            raise _bad_request(exc.message) from None
        except tg.NetworkError as exc:  # TimedOut, a dropped connection, a 5xx
            raise TransientError(f"telegram: {self._scrub(exc)}") from None
        except tg.InvalidToken:
            raise ChannelError(TOKEN_REJECTED) from None
        except tg.ChatMigrated as exc:
            raise ChannelError(
                f"telegram: the group moved to tg:{exc.new_chat_id}; use that chat id"
            ) from None
        except tg.TelegramError as exc:  # Forbidden (blocked, kicked), Conflict, ...
            raise ChannelError(f"telegram: {self._scrub(exc)}") from None

    def _target(self, chat_id: str) -> int | str:
        if not self.owns(chat_id):
            raise ChannelError(f"telegram: {chat_id} is not a Telegram chat")
        raw = chat_id.split(":", 1)[1]
        return int(raw) if raw.lstrip("-").isdigit() else raw  # or @channelusername

    def _scrub(self, exc: tg.TelegramError) -> str:
        return exc.message.replace(self._token, "<token>")

    def _where(self) -> str:
        return self._api_url.replace(self._token, "<token>").split("/bot", 1)[0]


def bot_endpoint(api_url: str) -> str:
    """The Bot API endpoint the token is appended to, from either form people give.

    A self-hosted Bot API server's docs give its root (`http://127.0.0.1:8081`); Telegram's
    own is written with `/bot` (`https://api.telegram.org/bot`). Both mean the same server:
    the root gets `/bot`, so the token never lands in the port (`Invalid port: '8081<token>'`).
    """
    url = api_url.strip().rstrip("/")
    return url if url.endswith("/bot") else f"{url}/bot"


def keyboard(buttons: Sequence[Button]) -> InlineKeyboardMarkup | None:
    """An inline keyboard, BUTTONS_PER_ROW to a row; each button's callback_data is its
    token as it is (at most 32 characters, within Telegram's 64 bytes). Its style colours it
    (danger red, primary blue) in apps from February 2026 on; older ones draw it plain."""
    if not buttons:
        return None
    drawn = [
        InlineKeyboardButton(b.label, callback_data=b.token, style=b.style or None) for b in buttons
    ]
    return InlineKeyboardMarkup(
        [drawn[i : i + BUTTONS_PER_ROW] for i in range(0, len(drawn), BUTTONS_PER_ROW)]
    )


def replying_to(thread: str | None) -> ReplyParameters | None:
    """A reply to the thread's first message, sent anyway where that message is gone
    (deleted, or the chat's history cleared): a run's report must not be lost with it."""
    if thread is None or not thread.isdigit():
        return None
    return ReplyParameters(int(thread), allow_sending_without_reply=True)


def file_url(api_url: str) -> str:
    """The file endpoint beside a Bot API endpoint: .../bot -> .../file/bot."""
    head, _, tail = api_url.rstrip("/").rpartition("/")
    return f"{head}/file/{tail}"


def to_html(text: str) -> str:
    """Telegram HTML: ``` blocks become <pre>, `code` and **bold** inline; the rest escaped.

    Only markup that cannot change the visible length upward is used, so a piece cut at
    the limit before formatting stays within it after.
    """
    out: list[str] = []
    code: list[str] | None = None
    language = ""
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            if code is None:
                code, language = [], re.sub(r"[^\w+#-]", "", line.strip()[3:])
            else:
                out.append(_pre(code, language))
                code = None
            continue
        if code is not None:
            code.append(line)
        else:
            out.append(_INLINE.sub(_inline, html.escape(line, quote=False)))
    if code is not None:  # an unclosed block still renders as one
        out.append(_pre(code, language))
    return "\n".join(out)


def _pre(lines: list[str], language: str) -> str:
    body = html.escape("\n".join(lines), quote=False)
    if language:
        return f'<pre><code class="language-{language}">{body}</code></pre>'
    return f"<pre>{body}</pre>"


def _inline(match: re.Match[str]) -> str:
    code, bold = match.groups()
    return f"<code>{code}</code>" if code is not None else f"<b>{bold}</b>"


def _bad_request(message: str) -> ChannelError:
    lowered = message.lower()
    if "can't parse entities" in lowered:
        return _Unparsable(f"telegram: {message}")
    if "message is not modified" in lowered:
        return _NotModified(f"telegram: {message}")
    if "message to edit not found" in lowered or "message can't be edited" in lowered:
        return _CannotEdit(f"telegram: {message}")
    return ChannelError(f"telegram: {message}")


def _retry_seconds(exc: tg.RetryAfter) -> float:
    with warnings.catch_warnings():  # int-valued retry_after is deprecated in v22
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
