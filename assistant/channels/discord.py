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
process-wide setting (`Route.BASE`, `DiscordWebSocket.DEFAULT_GATEWAY`) is changed; the
interaction and webhook calls (discord.py's webhook adapter, a context variable) are
redirected only around our own calls.

Interactions: slash commands, buttons and threads. They come as INTERACTION_CREATE over
the gateway; discord.py parses each into a `discord.Interaction` and we take it in
`on_interaction`, answering through the Interaction's own methods (`response.defer`,
`edit_original_response`, `followup`). discord.py's `app_commands.CommandTree` and
`ui.View` callbacks are not used to route them, on purpose:

- every slash command means one thing here, "/name args" handed to the inbox like typed
  text, and the orchestrator already answers an unknown or stale name (the tree would
  raise CommandNotFound and leave the user with "the application did not respond");
- a button's custom_id is a token stored in the database that must work after a restart
  and whose press the orchestrator alone decides (rights now, once only); a View's
  callbacks live in this process only. `ui.View` is used just to draw the buttons
  (`_Buttons`, never dispatched, so discord.py keeps nothing per message).

Commands are registered with discord.py's bulk overwrite (PUT): in `DISCORD_GUILD_ID`'s
guild when set (immediate; global commands of this application are then cleared so none
shows twice), else globally. A slash command is acknowledged with type 5 (deferred,
"assistant is thinking…") and its reply edits that response, so the answer sits under the
user's "/status" as Discord users expect; a press is acknowledged with type 6 (deferred
update) and, where it acted, the message it was under loses its buttons and gains a line
naming the button and who pressed it; otherwise the presser alone sees the note
(an ephemeral followup).

Threads: `thread=` is the root message id; a thread started from a message has that id
as its channel id, so it is created on first use (POST …/messages/{id}/threads; "already
exists" after a restart is success) and written to by id after. In a DM, where Discord
has no threads, messages go to the DM itself. A message or press in a thread belongs to
the thread's parent channel: that is the chat, with its rights; a message or slash command
typed in a thread carries it (`IncomingMessage.thread`, the thread's id), so its answer
goes there. A guild channel discord.py holds no copy of (a thread it was not told about)
is looked up once (GET /channels/{id}), so such a thread never passes for a chat of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from assistant.background import cancel
from assistant.channels.base import Button, Channel, Inbox, IncomingMessage, MenuEntry, Press
from assistant.channels.delivery import RetryAfter, SendQueue, TransientError, split_text
from assistant.errors import ChannelError

with warnings.catch_warnings():
    # discord.py imports audioop for voice (unused here); it warns on Python 3.11+.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord.gateway import DiscordWebSocket
    from discord.http import HTTPClient, Route
    from discord.state import ConnectionState
    from discord.webhook.async_ import AsyncWebhookAdapter, async_context

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
# Discord's limits for a slash command (CHAT_INPUT): name, description, an option's text
COMMAND_NAME = re.compile(r"[-_a-z0-9]{1,32}")
DESCRIPTION_LIMIT = 100
MAX_COMMANDS = 100
ARGS_OPTION = "args"
ARGS_DESCRIPTION = "what follows the command, as you would type it (e.g. stop 3r6wfv)"
ButtonStyleName = Literal["", "primary", "danger"]
BUTTON_STYLES: dict[ButtonStyleName, discord.ButtonStyle] = {
    "primary": discord.ButtonStyle.primary,  # 1
    "danger": discord.ButtonStyle.danger,  # 4
    "": discord.ButtonStyle.secondary,  # 2
}
MAX_BUTTONS = 25  # five rows of five
BUTTON_LABEL_LIMIT = 80
THREAD_NAME_LIMIT = 100
THREAD_ARCHIVE_MINUTES: Literal[1440] = 1440  # a day without messages; a message reopens it
THREAD_EXISTS = 160004  # "A thread has already been created for this message"
THREAD_TYPES = {
    discord.ChannelType.public_thread,
    discord.ChannelType.private_thread,
    discord.ChannelType.news_thread,
}


@dataclass
class _Asked:
    """A slash command waiting for its answer: the deferred response its reply edits."""

    interaction: discord.Interaction[Any]
    answered: bool = False
    elsewhere: int | None = None  # a thread the answer went to instead


class DiscordChannel(Channel):
    name = "discord"
    prefix = "dc"
    supports_edit = True
    supports_buttons = True
    supports_threads = True

    def __init__(
        self,
        token: str,
        *,
        api_url: str | None = None,
        gateway_url: str | None = None,
        bot_name: str = "assistant",
        guild_id: int | None = None,
    ) -> None:
        self._token = token
        self._api_url = api_url
        self._gateway_url = gateway_url
        self.bot_name = bot_name
        self.guild_id = guild_id
        self._client: _Client | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._inbox: Inbox | None = None
        self._ready = asyncio.Event()
        self._queue = SendQueue("discord")
        self._seen: OrderedDict[int, None] = OrderedDict()  # incoming ids: drop redeliveries
        self._mine: OrderedDict[int, None] = OrderedDict()  # ids this bot sent: replies to it
        self._incoming_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sending_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # root message id -> its thread's channel id (the same id), or its own channel
        # where no thread can be started (a DM); message id -> the thread it was sent to
        self._threads: dict[int, int] = {}
        self._parents: dict[int, int] = {}  # thread id -> its parent channel id
        self._plain: OrderedDict[int, None] = OrderedDict()  # looked up: not threads
        self._in_thread: OrderedDict[int, int] = OrderedDict()
        self._first_lines: OrderedDict[int, str] = OrderedDict()  # for a thread's name
        self._asked: dict[str, _Asked] = {}  # chat id -> the slash command being answered
        self._webhooks = _RedirectedWebhooks(api_url) if api_url is not None else None

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
            self._api_url,
            self._gateway_url,
            self._ready.set,
            self._on_message,
            self._on_interaction,
            self.note_skipped,
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

    async def set_menu(self, admin_chats: Sequence[str], commands: Sequence[MenuEntry]) -> None:
        """The registry's commands as slash commands, each with one optional `args` text.

        A bulk overwrite (PUT), so a command gone from the registry disappears. Discord
        scopes commands by guild, not by channel: every chat sees the same list, and
        rights are checked when a command acts. A list Discord refuses is logged and the
        channel goes on with what was registered before.
        """
        client = self._client
        app_id = client.application_id if client is not None else None
        if client is None or app_id is None:
            log.warning("discord: no application id after login; slash commands not registered")
            return
        payload = command_payload(commands)
        try:
            if self.guild_id is not None:
                await client.http.bulk_upsert_guild_commands(app_id, self.guild_id, payload)
                # one list only: a command registered globally before would show twice
                await client.http.bulk_upsert_global_commands(app_id, [])
            else:
                await client.http.bulk_upsert_global_commands(app_id, payload)
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            where = f"guild {self.guild_id}" if self.guild_id is not None else "global"
            log.warning("discord: slash commands (%s) not registered: %s", where, _describe(exc))

    async def aclose(self) -> None:
        try:
            await self._queue.aclose()
        finally:  # whatever the queue says, the client's session and socket are closed
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
            chat_id, thread = await self._place(message.channel)
            incoming = self._incoming(message, me.id, chat_id, thread)
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

    def _incoming(
        self, message: discord.Message, me: int, chat_id: str, thread: str | None
    ) -> IncomingMessage:
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
        return IncomingMessage(
            chat_id=chat_id,
            sender=message.author.display_name,
            text=text,
            platform_id=str(message.id),
            chat_title=_title(message.channel, message.author, dm),
            reply_to=str(replied_id) if replied_id is not None else None,
            thread=thread,
            addressed=dm or mentioned or to_me or named,
        )

    async def _place(self, channel: Any) -> tuple[str, str | None]:
        """The chat a channel belongs to, and the thread in it (None: the chat itself).

        A thread's chat is its parent channel, with that channel's rights. A guild channel
        discord.py has no copy of (a thread whose THREAD_CREATE it missed, one started
        while the bot was away) is looked up once: taken for a chat of its own, a thread
        of an admin channel would lose the channel's rights.
        """
        channel_id = int(channel.id)
        parent: int | None = None
        if isinstance(channel, discord.Thread) or getattr(channel, "type", None) in THREAD_TYPES:
            found = getattr(channel, "parent_id", None)
            parent = int(found) if found is not None else None
        else:  # a thread discord.py has not seen (not cached): one we started, perhaps
            parent = self._parents.get(channel_id)
            if parent is None and _uncached_guild_channel(channel, self._plain):
                parent = await self._parent_by_lookup(channel_id)
        if parent is None:
            return f"{self.prefix}:{channel_id}", None
        self._parents[channel_id] = parent
        self._threads.setdefault(channel_id, channel_id)  # a message under it goes in it
        return f"{self.prefix}:{parent}", str(channel_id)

    async def _parent_by_lookup(self, channel_id: int) -> int | None:
        """GET /channels/{id}: a thread's parent id; None for any other channel (then
        remembered, so it is asked once) or when Discord cannot say (asked again later)."""
        client = self._client
        if client is None:
            return None
        try:
            found = await client.fetch_channel(channel_id)
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("discord: cannot tell what channel %s is (%s)", channel_id, _describe(exc))
            return None
        if isinstance(found, discord.Thread) and found.parent_id is not None:
            return int(found.parent_id)
        _remember(self._plain, channel_id)
        return None

    async def _on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """A slash command or a button press; anything else (autocomplete, modals) is
        not ours. One that cannot be read is skipped; the gateway reads on."""
        if not _remember(self._seen, interaction.id):
            log.debug("discord: interaction %s delivered again, dropped", interaction.id)
            return
        try:
            if interaction.type is discord.InteractionType.application_command:
                await self._slash_command(interaction)
            elif interaction.type is discord.InteractionType.component:
                await self._pressed(interaction)
        except _Unreadable as exc:
            self.note_skipped(f"interaction {interaction.id}", str(exc))
        except Exception:
            log.exception("discord: interaction %s failed", interaction.id)

    async def _slash_command(self, interaction: discord.Interaction[Any]) -> None:
        inbox = self._inbox
        name, args = _command_text(interaction.data)
        channel = interaction.channel
        if inbox is None or channel is None:
            raise _Unreadable("no channel")
        chat_id, thread = await self._place(channel)
        user = interaction.user
        incoming = IncomingMessage(
            chat_id=chat_id,
            sender=user.display_name if user else "someone",
            text=f"/{name} {args}".strip(),
            platform_id=str(interaction.id),
            chat_title=_title(channel, user, interaction.guild_id is None),
            thread=thread,
        )
        asked: _Asked | None = _Asked(interaction)
        try:  # first: Discord gives 3 s, and another command may hold the chat's lock
            with self._redirected():
                await interaction.response.defer()  # type 5: "thinking…"
        except discord.HTTPException as exc:
            # too late or refused: the answer comes as a plain message instead
            log.warning("discord: slash command %s not acknowledged: %s", name, exc)
            asked = None
        async with self._incoming_locks[chat_id]:
            if asked is not None:
                self._asked[chat_id] = asked
            try:
                await inbox.deliver(incoming)
            except Exception:
                log.exception("discord: delivering /%s failed", name)
            finally:
                if asked is not None:
                    self._asked.pop(chat_id, None)
                    await self._close_unanswered(asked)

    async def _close_unanswered(self, asked: _Asked) -> None:
        """A deferred response must not think forever: point to where the answer went, or
        remove it when there was none (a command from a chat without rights is ignored)."""
        if asked.answered:
            return
        try:
            with self._redirected():
                if asked.elsewhere is not None:
                    await asked.interaction.edit_original_response(
                        content=f"Answered in <#{asked.elsewhere}>", allowed_mentions=NO_MENTIONS
                    )
                else:
                    await asked.interaction.delete_original_response()
        except discord.HTTPException as exc:
            log.info("discord: the deferred response was left as it was: %s", exc)

    async def _pressed(self, interaction: discord.Interaction[Any]) -> None:
        inbox = self._inbox
        data: Any = interaction.data
        token = data.get("custom_id") if isinstance(data, dict) else None
        channel, message = interaction.channel, interaction.message
        if inbox is None or channel is None or not isinstance(token, str) or not token:
            raise _Unreadable("a button press without a custom_id or channel")
        try:
            with self._redirected():
                await interaction.response.defer()  # type 6: deferred update, at once
        except discord.HTTPException as exc:
            log.warning("discord: press %s not acknowledged: %s", interaction.id, exc)
        user = interaction.user
        who = user.display_name if user else "someone"
        chat_id, _ = await self._place(channel)
        press = Press(
            chat_id=chat_id,
            sender=who,
            token=token,
            platform_id=str(interaction.id),
            message_id=str(message.id) if message is not None else None,
            chat_title=_title(channel, user, interaction.guild_id is None),
        )
        result = await inbox.press(press)
        try:
            with self._redirected():
                if result.acted and message is not None:
                    label = _label_of(message, token) or "A button"
                    line = f"\n*{label} — pressed by {who}*"
                    content = message.content[: LIMIT - len(line)] + line
                    # Logs pressed: Stop stays; Yes of a Yes / No takes both away
                    rest = [] if result.spent_all else _other_buttons(message, token)
                    await interaction.edit_original_response(
                        content=content,
                        view=_Buttons(rest) if rest else None,
                        allowed_mentions=NO_MENTIONS,
                    )
                elif result.note:
                    await interaction.followup.send(
                        result.note, ephemeral=True, allowed_mentions=NO_MENTIONS
                    )
        except discord.HTTPException as exc:
            log.warning("discord: the press's answer was not shown: %s", exc)

    @contextlib.contextmanager
    def _redirected(self) -> Iterator[None]:
        """discord.py's webhook calls (interaction responses, followups) to `api_url`, for
        the calls made inside only: a context variable, so no other client is touched."""
        if self._webhooks is None:
            yield
            return
        token = async_context.set(self._webhooks)
        try:
            yield
        finally:
            async_context.reset(token)

    # ---- outgoing ----------------------------------------------------------------------

    async def send_text(self, chat_id: str, text: str) -> str | None:
        return await self.send_message(chat_id, text)

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        thread: str | None = None,
    ) -> str | None:
        """Text (split at 2000 characters) with the buttons under its last piece, in the
        thread of root message `thread`. While a slash command from this chat waits, its
        deferred response becomes the first piece. Returns the first piece's id."""
        target = self._target(chat_id)
        if not text.strip():
            return None  # Discord refuses empty messages
        pieces = split_text(text, LIMIT)
        first: str | None = None
        async with self._sending_locks[chat_id]:  # a split text stays contiguous
            where = await self._thread(target, thread)
            asked = self._asked.get(chat_id)
            if asked is not None and not asked.answered:
                here = _channel_id(asked)
                if thread is None and here is not None and self._client is not None:
                    where = self._client.get_partial_messageable(here)  # where it was asked
                elif where.id != here:
                    asked.elsewhere = where.id  # a thread's message: the thread is its place
            for number, piece in enumerate(pieces, 1):
                view = _Buttons(buttons) if buttons and number == len(pieces) else None
                if asked is not None and not asked.answered and asked.elsewhere != where.id:
                    asked.answered = True  # the answer sits under the user's command
                    sent = await self._submit(self._answer(asked, where, piece, view))
                else:
                    sent = await self._submit(_post(where, piece, view=view))
                if where.id != target.id:
                    _remember_as(self._in_thread, int(sent), where.id)
                first = first or sent
        if first is not None:
            _remember_as(self._first_lines, int(first), text.strip().splitlines()[0])
        return first

    def _answer(
        self,
        asked: _Asked,
        where: discord.PartialMessageable,
        content: str,
        view: discord.ui.View | None,
    ) -> Callable[[], Awaitable[discord.Message]]:
        """Edit the deferred response into the answer; where the response is no longer
        there (its token lasts 15 minutes, or someone removed it) post the answer instead."""

        async def edit() -> discord.Message:
            try:
                with self._redirected():
                    return await asked.interaction.edit_original_response(
                        content=content, view=view, allowed_mentions=NO_MENTIONS
                    )
            except (discord.NotFound, discord.Forbidden) as exc:
                log.info("discord: the slash command's response is gone (%s); posting", exc)
            except discord.HTTPException as exc:
                if exc.status != 401:  # 401 "Invalid Webhook Token": expired
                    raise
                log.info("discord: the slash command's response expired; posting the answer")
            return await _post(where, content, view=view)()

        return edit

    async def _thread(
        self, target: discord.PartialMessageable, root: str | None
    ) -> discord.PartialMessageable:
        """Where a message under `root` goes: its thread, started on first use."""
        client = self._client
        if root is None or client is None:
            return target
        if not root.isdigit():
            raise ChannelError(f"discord: {root!r} is not a Discord message id")
        root_id = int(root)
        known = self._threads.get(root_id)
        if known is None and isinstance(client.get_channel(root_id), discord.Thread):
            known = self._threads[root_id] = root_id  # a thread itself (after a restart)
        if known is None:
            known = self._threads[root_id] = await self._start_thread(target, root_id)
        return client.get_partial_messageable(known)

    async def _start_thread(self, target: discord.PartialMessageable, root: int) -> int:
        """The thread's channel id (the root's id); the root's own channel where there is
        no thread to be had (a DM, no permission, the root gone): said once, then used."""
        client = self._client
        assert client is not None
        name = (self._first_lines.get(root) or f"{self.bot_name} thread")[:THREAD_NAME_LIMIT]
        try:
            await client.http.start_thread_with_message(
                target.id, root, name=name, auto_archive_duration=THREAD_ARCHIVE_MINUTES
            )
        except discord.HTTPException as exc:
            if exc.code == THREAD_EXISTS:  # started before: by us before a restart, or a user
                self._parents[root] = target.id
                return root
            log.warning(
                "discord: no thread under message %s in %s (%s); sending to the channel",
                root,
                target.id,
                exc,
            )
            return target.id
        self._parents[root] = target.id
        return root

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
            where = await self._thread(target, thread)
            asked = self._asked.get(chat_id)
            here = _channel_id(asked) if asked is not None else None
            if thread is None and here is not None and self._client is not None:
                where = self._client.get_partial_messageable(here)  # beside its answer
            for piece in pieces[:-1]:
                await self._submit(_post(where, piece))
            sent = await self._submit(_post(where, pieces[-1] or None, (path.name, data)))
            if where.id != target.id:
                _remember_as(self._in_thread, int(sent), where.id)
            return sent

    async def edit_text(
        self, chat_id: str, message_id: str, text: str, *, thread: str | None = None
    ) -> str | None:
        """Edit in place; a message that is gone is sent anew. Beyond 2000 characters
        the rest follows as new messages. A message sent into a thread is edited there:
        one this process sent is remembered; after a restart `thread` (its root) says."""
        target = self._target(chat_id)
        if not message_id.isdigit():
            raise ChannelError(f"discord: {message_id!r} is not a Discord message id")
        if not text.strip():
            return message_id
        client = self._client
        assert client is not None
        where = target
        if (known := self._in_thread.get(int(message_id))) is not None:
            where = client.get_partial_messageable(known)
        elif thread is not None:
            where = await self._thread(target, thread)
        first, *rest = split_text(text, LIMIT)

        async def edit() -> discord.Message:
            try:
                return await where.get_partial_message(int(message_id)).edit(
                    content=first, allowed_mentions=NO_MENTIONS
                )
            except discord.NotFound:
                log.info("discord: message %s is gone; sending anew", message_id)
                return await where.send(first, allowed_mentions=NO_MENTIONS)

        async with self._sending_locks[chat_id]:
            edited = await self._submit(edit)
            for piece in rest:
                await self._submit(_post(where, piece))
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


class _Unreadable(Exception):
    """An interaction whose fields are not what Discord documents."""


def command_payload(commands: Sequence[MenuEntry]) -> list[dict[str, Any]]:
    """Slash commands (CHAT_INPUT) within Discord's limits: a name Discord would refuse is
    left out (and logged) rather than failing the whole list; each takes `args`."""
    payload: list[dict[str, Any]] = []
    for entry in commands:
        name = entry.name.lower()
        if not COMMAND_NAME.fullmatch(name):
            log.warning(
                "discord: /%s cannot be a slash command (a-z, 0-9, - and _, at most 32)", name
            )
            continue
        if len(payload) == MAX_COMMANDS:
            log.warning(
                "discord: more than %d commands; /%s and later left out", MAX_COMMANDS, name
            )
            break
        summary = " ".join(entry.summary.split()) or f"/{name}"
        if len(summary) > DESCRIPTION_LIMIT:
            summary = summary[: DESCRIPTION_LIMIT - 1] + "…"
        payload.append(
            {
                "name": name,
                "type": 1,  # CHAT_INPUT: a slash command
                "description": summary,
                "options": [
                    {
                        "type": 3,  # STRING
                        "name": ARGS_OPTION,
                        "description": ARGS_DESCRIPTION,
                        "required": False,
                    }
                ],
            }
        )
    return payload


def _command_text(data: Any) -> tuple[str, str]:
    """A slash command's name and its `args` text (empty when not given)."""
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not COMMAND_NAME.fullmatch(name):
        raise _Unreadable(f"a slash command without a valid name ({name!r})")
    args = ""
    for option in data.get("options") or []:
        if isinstance(option, dict) and option.get("name") == ARGS_OPTION:
            value = option.get("value")
            if not isinstance(value, str):
                raise _Unreadable(f"/{name}: args is not text ({type(value).__name__})")
            args = value.strip()
    return name, args


def _title(channel: Any, user: Any, dm: bool) -> str:
    title = getattr(channel, "name", None)
    if isinstance(channel, discord.Thread) and channel.parent is not None:
        title = channel.parent.name
    if title:
        return str(title)
    return f"DM with {user.name}" if dm and user is not None else ""


def _uncached_guild_channel(channel: Any, plain: OrderedDict[int, None]) -> bool:
    """A guild channel discord.py knows by id only (PartialMessageable), not looked up."""
    return (
        isinstance(channel, discord.PartialMessageable)
        and channel.guild_id is not None
        and int(channel.id) not in plain
    )


def _channel_id(asked: _Asked) -> int | None:
    channel = asked.interaction.channel
    return channel.id if channel is not None else None


def _label_of(message: discord.Message, token: str) -> str | None:
    """The label of the button with custom_id `token` under a message."""
    for row in message.components:
        for item in getattr(row, "children", [row]):
            if getattr(item, "custom_id", None) == token:
                label = getattr(item, "label", None)
                return str(label) if label else None
    return None


def _other_buttons(message: discord.Message, token: str) -> list[Button]:
    """The buttons under a message but the one pressed: each still acts on its own (the
    orchestrator says "already done" for the rest of a choice)."""
    styles: dict[discord.ButtonStyle, ButtonStyleName] = {v: k for k, v in BUTTON_STYLES.items()}
    found = []
    for row in message.components:
        for item in getattr(row, "children", [row]):
            custom_id = getattr(item, "custom_id", None)
            if isinstance(item, discord.Button) and custom_id and custom_id != token:
                style = styles.get(item.style, "")
                found.append(Button(item.label or custom_id, custom_id, style))
    return found


class _Buttons(discord.ui.View):
    """The buttons under a message, only drawn: a press comes back as an interaction the
    channel hands to the inbox, so discord.py must not keep this view to dispatch to."""

    def __init__(self, buttons: Sequence[Button]) -> None:
        super().__init__(timeout=None)
        if len(buttons) > MAX_BUTTONS:
            log.warning("discord: %d buttons, only the first %d drawn", len(buttons), MAX_BUTTONS)
        for button in buttons[:MAX_BUTTONS]:
            self.add_item(
                discord.ui.Button(
                    label=button.label[:BUTTON_LABEL_LIMIT] or button.token,
                    style=BUTTON_STYLES.get(button.style, discord.ButtonStyle.secondary),
                    custom_id=button.token,
                )
            )

    def is_dispatchable(self) -> bool:
        return False


def _post(
    target: discord.PartialMessageable,
    content: str | None,
    image: tuple[str, bytes] | None = None,
    *,
    view: discord.ui.View | None = None,
) -> Callable[[], Awaitable[discord.Message]]:
    """One send, repeatable: a retry needs a fresh `File` (discord.py closes it after use)."""

    def send() -> Awaitable[discord.Message]:
        if image is None:
            if view is None:
                return target.send(content, allowed_mentions=NO_MENTIONS)
            return target.send(content, view=view, allowed_mentions=NO_MENTIONS)
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


def _remember_as(mapping: OrderedDict[int, Any], key: int, value: Any) -> None:
    """Add to a bounded mapping, the oldest entries going first."""
    mapping[key] = value
    mapping.move_to_end(key)
    while len(mapping) > REMEMBERED:
        mapping.popitem(last=False)


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
        on_interaction: Callable[[discord.Interaction[Any]], Awaitable[None]],
        on_unreadable: Callable[[str, str], None],
    ) -> None:
        self._redirect = (api_url, gateway_url)  # read by _get_state during __init__
        self._unreadable = on_unreadable  # likewise
        self._ready_callback = on_ready
        self._message_callback = on_message
        self._interaction_callback = on_interaction
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

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        await self._interaction_callback(interaction)


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


class _RedirectedWebhooks(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction callbacks, followups, edits of a response)
    sending to `api_url`; installed by `DiscordChannel._redirected` around our calls."""

    def __init__(self, api_url: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._api_url = api_url.rstrip("/")

    async def request(self, route: Route, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        if route.url.startswith(Route.BASE):
            route.url = self._api_url + route.url[len(Route.BASE) :]
        return await super().request(route, session, **kwargs)
