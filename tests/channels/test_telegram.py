"""The Telegram channel end to end: a real Orchestrator, the real python-telegram-bot client,
and a fake Bot API server speaking the wire format over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from assistant.channels.base import IncomingMessage, Press, PressResult
from assistant.channels.telegram import (
    OFFSET_KEY,
    TOKEN_REJECTED,
    TelegramChannel,
    file_url,
    to_html,
)
from assistant.config import Settings
from assistant.errors import ChannelError
from assistant.orchestrator import Orchestrator
from assistant.reply import Reply
from storage.db import Database
from storage.kv import KeyValue
from tests.fakes.telegram_server import BOT_USER, DROP, FakeTelegram, Sent, visible_text

ADMIN = 1001
STRANGER = 2002
GROUP = -3003
BOT = f"@{BOT_USER['username']}"


@dataclass
class Live:
    orch: Orchestrator
    channel: TelegramChannel
    fake: FakeTelegram
    last_update: int = 0

    async def say(self, chat: int, text: str, **kwargs: object) -> list[Sent]:
        """Push a message, wait until it is handled, return what the bot sent back."""
        before = len(self.fake.sent.get(chat, []))
        update_id = self.fake.push_message(chat, text, **kwargs)  # type: ignore[arg-type]
        self.last_update = update_id
        await self.fake.wait_confirmed(update_id)
        await self.orch.settled(f"tg:{chat}")
        return self.fake.sent.get(chat, [])[before:]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def kv(settings: Settings) -> AsyncIterator[KeyValue]:
    """The offset store, on the same SQLite file the orchestrator opens."""
    db = await Database.open(settings.db_path)
    yield KeyValue(db)
    await db.aclose()


def make_channel(fake: FakeTelegram, kv: KeyValue) -> TelegramChannel:
    channel = TelegramChannel(fake.token, api_url=fake.base_url, kv=kv, poll_timeout=1.0)
    channel.backoff_s = 0.05
    return channel


@pytest.fixture
async def live(settings: Settings, fake: FakeTelegram, kv: KeyValue) -> AsyncIterator[Live]:
    settings = settings.model_copy(update={"admin_chats": (f"tg:{ADMIN}", f"tg:{GROUP}")})
    channel = make_channel(fake, kv)
    async with Orchestrator(settings, channels=[channel]) as orch:
        yield Live(orch, channel, fake)


class NullInbox:
    async def deliver(self, message: IncomingMessage) -> None:
        raise AssertionError(f"unexpected {message}")

    async def press(self, press: Press) -> PressResult:
        raise AssertionError(f"unexpected {press}")

    async def settled(self, chat_id: str) -> None:
        return None


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


# ---- commands and conversation ---------------------------------------------------------


async def test_status_from_the_admin_chat_is_answered(live: Live) -> None:
    (reply,) = await live.say(ADMIN, "/status")
    assert "Uptime:" in reply.text and "Tasks:" in reply.text
    assert reply.parse_mode == "HTML"
    assert live.channel.is_connected
    calls = [c.method for c in live.fake.calls]
    assert calls[:2] == ["getMe", "deleteWebhook"] and "getUpdates" in calls


async def test_status_from_another_chat_gets_no_answer(live: Live) -> None:
    assert await live.say(STRANGER, "/status") == []
    assert STRANGER not in live.fake.sent


async def test_free_text_from_the_admin_is_queued_and_answered(live: Live) -> None:
    (reply,) = await live.say(ADMIN, "how is the run going?")
    assert reply.text.startswith("No model is configured")
    row = await live.orch.services.db.fetchone(
        "SELECT sender, text, platform_id FROM messages WHERE from_me = 0"
    )
    assert row is not None and (row["sender"], row["text"]) == ("ann", "how is the run going?")
    assert row["platform_id"].isdigit()


async def test_a_photo_caption_is_read_as_text(live: Live) -> None:
    (reply,) = await live.say(ADMIN, "/status", caption=True)
    assert "Uptime:" in reply.text


async def test_a_sender_without_username_is_named_by_full_name(live: Live) -> None:
    user = {"id": 5, "is_bot": False, "first_name": "Bo", "last_name": "Lee"}
    await live.say(ADMIN, "hi there", from_user=user)
    assert await live.orch.services.db.scalar("SELECT sender FROM messages") == "Bo Lee"


async def test_messages_from_other_bots_are_ignored(live: Live) -> None:
    other = {"id": 6, "is_bot": True, "first_name": "CI", "username": "ci_bot"}
    assert await live.say(ADMIN, "/status", from_user=other) == []


# ---- groups: stored always, answered when addressed ------------------------------------


async def test_group_text_not_addressed_is_stored_but_not_answered(live: Live) -> None:
    assert await live.say(GROUP, "the loss looks flat", chat_type="group") == []
    db = live.orch.services.db
    assert await db.scalar("SELECT text FROM messages") == "the loss looks flat"
    title = await db.scalar("SELECT title FROM chats WHERE id = ?", (f"tg:{GROUP}",))
    assert title == "ML team"


async def test_group_text_addressed_to_the_bot_is_answered(live: Live) -> None:
    (mention,) = await live.say(GROUP, f"{BOT} hello", chat_type="group")
    assert mention.text.startswith("No model is configured")
    reply_to = mention.message_id
    (answer,) = await live.say(GROUP, "and now?", chat_type="group", reply_to_message_id=reply_to)
    assert answer.text.startswith("No model is configured")
    (named,) = await live.say(GROUP, "Assistant, any news?", chat_type="group")
    assert named.text.startswith("No model is configured")
    replies = await live.say(GROUP, "assistants are overrated", chat_type="group")
    assert replies == []


async def test_commands_in_a_group_reach_the_orchestrator_as_sent(live: Live) -> None:
    (reply,) = await live.say(GROUP, f"/status{BOT}", chat_type="group")
    assert "Uptime:" in reply.text
    assert await live.say(GROUP, "/status@some_other_bot", chat_type="group") == []


async def test_replying_to_someone_else_is_not_addressing_the_bot(live: Live) -> None:
    await live.say(GROUP, "first", chat_type="group")
    first_id = live.fake.message_id(live.last_update)
    assert await live.say(GROUP, "second", chat_type="group", reply_to_message_id=first_id) == []
    reply_to = await live.orch.services.db.scalar("SELECT count(*) FROM messages")
    assert reply_to == 2


# ---- outgoing: splitting, HTML, images, edits ----------------------------------------


async def test_a_long_text_arrives_split_with_code_blocks_balanced(live: Live) -> None:
    prose = [f"line {i}: loss & <acc> went {'up' if i % 2 else 'down'}" for i in range(150)]
    code = ["```python", *[f"x_{i} = compute({i}) < limit  # step {i}" for i in range(180)], "```"]
    text = "\n".join([*prose, *code, *prose])
    assert len(text) > 10_000
    last = await live.channel.send_text(f"tg:{ADMIN}", text)
    sent = live.fake.sent[ADMIN]
    assert len(sent) >= 3 and last == str(sent[-1].message_id)
    for piece in sent:
        assert len(piece.text) <= 4096
        assert piece.raw.count("<pre") == piece.raw.count("</pre>")
        assert "```" not in piece.raw
    seen = "\n".join(p.text for p in sent)
    assert "line 149: loss & <acc> went up" in seen and "x_179 = compute(179) < limit" in seen
    assert seen.index("x_0 =") < seen.index("x_179 =")


async def test_markup_is_escaped_and_code_rendered() -> None:
    raw = to_html("a < b && c > d\n`x<1>` and **bold**\n```sh\nrm -rf <dir>\n```")
    assert raw == (
        "a &lt; b &amp;&amp; c &gt; d\n<code>x&lt;1&gt;</code> and <b>bold</b>\n"
        '<pre><code class="language-sh">rm -rf &lt;dir&gt;</code></pre>'
    )
    assert visible_text(raw, "HTML") == "a < b && c > d\nx<1> and bold\nrm -rf <dir>"
    assert to_html("```\nopen block") == "<pre>open block</pre>"
    assert file_url("https://api.telegram.org/bot") == "https://api.telegram.org/file/bot"


async def test_refused_html_is_sent_again_as_plain_text(live: Live) -> None:
    live.fake.fail_next("sendMessage", 400, description="Bad Request: can't parse entities: x")
    await live.channel.send_text(f"tg:{ADMIN}", "**bold** text")
    (sent,) = live.fake.sent[ADMIN]
    assert sent.parse_mode is None and sent.text == "**bold** text"


async def test_a_plot_arrives_as_a_photo(live: Live, tmp_path: Path) -> None:
    plot = tmp_path / "loss.png"
    plot.write_bytes(png())
    message_id = await live.channel.send_image(f"tg:{ADMIN}", plot, caption="loss <per> step")
    (photo,) = live.fake.photos[ADMIN]
    assert photo.data == png() and photo.caption == "loss <per> step"
    assert message_id == str(photo.message_id)
    # and through the orchestrator, as a command's reply with an image
    assert await live.orch.send(f"tg:{ADMIN}", Reply("the plot:", (plot,)), None)
    assert len(live.fake.photos[ADMIN]) == 2 and live.fake.sent[ADMIN][-1].text == "the plot:"


async def test_a_long_caption_follows_the_photo_as_text(live: Live, tmp_path: Path) -> None:
    plot = tmp_path / "loss.png"
    plot.write_bytes(png())
    caption = "c" * 1500
    await live.channel.send_image(f"tg:{ADMIN}", plot, caption=caption)
    (photo,) = live.fake.photos[ADMIN]
    assert photo.caption == "" and live.fake.sent[ADMIN][0].text == caption
    assert photo.message_id < live.fake.sent[ADMIN][0].message_id


async def test_edits_in_place_tolerate_no_change_and_fall_back_to_sending(live: Live) -> None:
    chat = f"tg:{ADMIN}"
    first = await live.channel.send_text(chat, "epoch 1/3")
    assert first is not None
    assert await live.channel.edit_text(chat, first, "epoch 2/3") == first
    assert await live.channel.edit_text(chat, first, "epoch 2/3") == first  # not modified
    assert [e.text for e in live.fake.edits[ADMIN]] == ["epoch 2/3"]
    again = await live.channel.edit_text(chat, "999999", "epoch 3/3")  # no such message
    assert again == str(live.fake.sent[ADMIN][-1].message_id) and again != first


# ---- failures: rate limits, errors, dropped connections --------------------------------


async def test_a_429_is_waited_out_and_the_message_arrives_once(live: Live) -> None:
    live.fake.fail_next("sendMessage", 429, retry_after=1)
    started = asyncio.get_running_loop().time()
    (reply,) = await live.say(ADMIN, "/status")
    attempts = live.fake.calls_of("sendMessage")
    assert len(attempts) == 2 and len(live.fake.sent[ADMIN]) == 1
    assert attempts[1].at - attempts[0].at >= 0.95
    assert asyncio.get_running_loop().time() - started >= 0.95
    assert "Uptime:" in reply.text


async def test_platform_refusals_are_channel_errors_with_its_message(live: Live) -> None:
    live.fake.fail_next("sendMessage", 403)
    with pytest.raises(ChannelError, match="Forbidden: bot was blocked by the user"):
        await live.channel.send_text(f"tg:{ADMIN}", "hello")
    live.fake.fail_next("sendMessage", 400)
    with pytest.raises(ChannelError, match=r"(?i)chat not found"):
        await live.channel.send_text(f"tg:{ADMIN}", "hello")
    live.fake.fail_next("sendMessage", 502)  # transient: retried by the send queue
    assert await live.channel.send_text(f"tg:{ADMIN}", "hello") is not None
    assert [s.text for s in live.fake.sent[ADMIN]] == ["hello"]


async def test_a_dropped_connection_is_retried_with_backoff(live: Live) -> None:
    live.channel.max_backoff_s = 0.1
    live.fake.fail_next("getUpdates", DROP)
    live.fake.fail_next("getUpdates", 502, times=1000)
    start = len(live.fake.calls_of("getUpdates"))  # the long poll waiting now is the last
    live.fake.push_message(ADMIN, "/help")  # ends it; the polls after it fail
    polls = await live.fake.wait_calls("getUpdates", start + 6)
    assert not live.channel.is_connected
    assert len(live.fake.sent[ADMIN]) == 1  # /help was answered before the line dropped
    gaps = [b.at - a.at for a, b in zip(polls[start:], polls[start + 1 :], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # doubling from backoff_s
    assert gaps[-1] < 0.4  # capped at max_backoff_s (uncapped it would be 0.8)
    live.fake.clear_failures()
    (reply,) = await live.say(ADMIN, "/status")
    assert "Uptime:" in reply.text and live.channel.is_connected


async def test_a_rejected_token_stops_start_with_a_clear_error(
    settings: Settings, fake: FakeTelegram, kv: KeyValue, caplog: pytest.LogCaptureFixture
) -> None:
    fake.reject_token = True
    channel = make_channel(fake, kv)
    with caplog.at_level(logging.DEBUG), pytest.raises(ChannelError) as info:
        async with Orchestrator(settings, channels=[channel]):
            pass
    assert str(info.value) == TOKEN_REJECTED
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert fake.token not in caplog.text
    assert [c.method for c in fake.calls] == ["getMe"]
    assert not channel.is_connected


# ---- at-least-once delivery and restarts ------------------------------------------------


async def test_a_redelivered_update_is_answered_once(live: Live) -> None:
    update_id = live.fake.push_message(ADMIN, "/status")
    await live.fake.wait_sent(ADMIN)
    await live.fake.wait_confirmed(update_id)
    live.fake.redeliver(update_id)  # same update_id: the channel's offset skips it
    await live.fake.wait_redelivered()
    assert len(live.fake.sent[ADMIN]) == 1


async def test_a_message_delivered_twice_is_answered_once(live: Live) -> None:
    (reply,) = await live.say(ADMIN, "are you there?")
    # the same message under a new update_id: the orchestrator's (chat, platform_id) check
    again = live.fake.redeliver(live.last_update, as_new=True)
    await live.fake.wait_confirmed(again)
    await live.orch.settled(f"tg:{ADMIN}")
    assert [s.text for s in live.fake.sent[ADMIN]] == [reply.text]
    db = live.orch.services.db
    assert await db.scalar("SELECT count(*) FROM messages WHERE from_me = 0") == 1


async def test_a_restart_answers_what_arrived_meanwhile_and_replays_nothing(
    settings: Settings, fake: FakeTelegram, kv: KeyValue
) -> None:
    async with Orchestrator(settings, channels=[make_channel(fake, kv)]):
        first = fake.push_message(ADMIN, "/status")
        await fake.wait_sent(ADMIN)
        await fake.wait_confirmed(first)
    assert await kv.get(OFFSET_KEY) == str(first + 1)
    fake.unconfirm(first)  # as if the process died before its next getUpdates
    second = fake.push_message(ADMIN, "what happened while you were away?")
    before = len(fake.calls)
    async with Orchestrator(settings, channels=[make_channel(fake, kv)]) as orch:
        await fake.wait_confirmed(second)
        await orch.settled(f"tg:{ADMIN}")
    texts = [s.text for s in fake.sent[ADMIN]]
    assert len(texts) == 2 and texts[1].startswith("No model is configured")
    polls = [c for c in fake.calls[before:] if c.method == "getUpdates"]
    assert polls[0].params["offset"] == str(first + 1)
    assert await kv.get(OFFSET_KEY) == str(second + 1)


async def test_an_empty_token_is_refused_at_start(kv: KeyValue) -> None:
    channel = TelegramChannel("", api_url="http://127.0.0.1:9/bot", kv=kv)
    with pytest.raises(ChannelError, match="TELEGRAM_BOT_TOKEN is empty"):
        await channel.start(NullInbox())
    await channel.aclose()


async def test_an_unreachable_api_stops_start_with_the_address(kv: KeyValue) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "999:secret-token-value"
    channel = TelegramChannel(token, api_url=f"http://127.0.0.1:{port}/bot", kv=kv)
    with pytest.raises(ChannelError) as info:
        await channel.start(NullInbox())
    assert f"cannot reach the Bot API at http://127.0.0.1:{port}:" in str(info.value)
    assert token not in str(info.value) and not channel.is_connected
    await channel.aclose()
    with pytest.raises(ChannelError, match="closed"):
        await channel.send_text(f"tg:{ADMIN}", "late")


@pytest.mark.parametrize("form", ["root", "root/", "bot/"])
async def test_the_api_url_may_be_the_servers_root_or_end_in_bot(
    settings: Settings, fake: FakeTelegram, form: str
) -> None:
    """A self-hosted Bot API server's root, as its own docs give it, works like `.../bot`
    (it failed at start with `Invalid port: '8081<token>'`)."""
    root = fake.base_url.removesuffix("/bot")
    api_url = {"root": root, "root/": root + "/", "bot/": fake.base_url + "/"}[form]
    settings = settings.model_copy(
        update={"telegram_bot_token": SecretStr(fake.token), "telegram_api_url": api_url}
    )
    async with Orchestrator(settings, platforms=True) as orch:
        (channel,) = [c for c in orch.channels if isinstance(c, TelegramChannel)]
        assert channel.is_connected and channel.username == BOT_USER["username"]
        fake.push_message(ADMIN, "/status")
        (reply,) = await fake.wait_sent(ADMIN)
        assert "Uptime:" in reply.text


async def test_the_command_menu_lists_the_registrys_commands_in_admin_chats_and_help_elsewhere(
    settings: Settings, fake: FakeTelegram
) -> None:
    """setMyCommands at start: the `/` button shows every command in an admin chat, and
    only /help in others (whose commands are refused anyway)."""
    settings = settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(fake.token),
            "telegram_api_url": fake.base_url,
            "admin_chats": (f"tg:{ADMIN}", "slack:C1"),
        }
    )
    async with Orchestrator(settings, platforms=True) as orch:
        registry = {spec.name: spec.summary for spec in orch.router.commands.values()}
    admin = fake.menus[json.dumps({"chat_id": ADMIN, "type": "chat"}, sort_keys=True)]
    assert {c["command"]: c["description"] for c in admin} == registry
    default = fake.menus[json.dumps({"type": "default"}, sort_keys=True)]
    assert [c["command"] for c in default] == ["help"]
    assert len(fake.menus) == 2  # the Slack admin chat is not Telegram's to draw


async def test_settings_with_a_token_start_the_channel(
    settings: Settings, fake: FakeTelegram
) -> None:
    settings = settings.model_copy(
        update={"telegram_bot_token": SecretStr(fake.token), "telegram_api_url": fake.base_url}
    )
    async with Orchestrator(settings, platforms=True) as orch:
        (channel,) = [c for c in orch.channels if isinstance(c, TelegramChannel)]
        assert channel.is_connected and channel.username == BOT_USER["username"]
        first = fake.push_message(ADMIN, "/status")
        (reply,) = await fake.wait_sent(ADMIN)
        assert "Uptime:" in reply.text
        await fake.wait_confirmed(first)
    assert fake.calls_of("getUpdates")[0].params["timeout"] == "30"
