"""Each chat channel against hostile input from its platform, through the fake servers.

Telegram updates, Slack events and frames, Discord gateway messages with odd text, odd
entities, missing fields and fields of the wrong type, lone surrogates, NULs and huge
strings: the channel's loop keeps going, a message that can be read is stored with its
text made valid, one that cannot is skipped and counted, the admin's next command is
answered, and the event log keeps committing.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from assistant.channels.discord import DiscordChannel
from assistant.channels.slack import SlackChannel
from assistant.channels.telegram import TelegramChannel
from assistant.config import Settings
from assistant.observability import EventLog
from assistant.orchestrator import Orchestrator
from storage.db import Database
from storage.kv import KeyValue
from tests.fakes.discord_server import ADMIN_CHANNEL, USER_ID, FakeDiscord
from tests.fakes.discord_server import TOKEN as DISCORD_TOKEN
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import ANN, FakeTelegram

SEED = 411
ODD: list[Any] = [None, 0, -1, 2**70, 1.5, True, "", "x", "\udcff", "\x00", "é" * 50_000, [], {}]


async def rows_written(log: EventLog) -> int:
    """Rows the writer has stored once everything logged so far is written."""
    await log.flush()
    return log.stats.written


async def received_texts(orch: Orchestrator) -> list[str]:
    """The stored text of every message received, oldest first."""
    rows = await orch.services.db.fetchall(
        "SELECT text FROM messages WHERE from_me = 0 ORDER BY seq"
    )
    return [r["text"] for r in rows]


async def committing(log: EventLog, before: int) -> None:
    """The writer took every row so far, dropped none, and has written more than `before`."""
    assert await log.flush()
    assert log.pending == 0 and log.stats.dropped == 0
    assert log.stats.written > before


# ---- Telegram ----------------------------------------------------------------------------

TG_ADMIN = 1001


@pytest.fixture
async def telegram(
    settings: Settings,
) -> AsyncIterator[tuple[Orchestrator, TelegramChannel, FakeTelegram]]:
    fake = FakeTelegram()
    await fake.start()
    db = await Database.open(settings.db_path)
    channel = TelegramChannel(fake.token, api_url=fake.base_url, kv=KeyValue(db), poll_timeout=1.0)
    channel.backoff_s = 0.05
    admin = settings.model_copy(update={"admin_chats": (f"tg:{TG_ADMIN}",)})
    try:
        async with Orchestrator(admin, channels=[channel]) as orch:
            yield orch, channel, fake
    finally:
        await db.aclose()
        await fake.aclose()


_tg_ids = itertools.count(1)


def tg_message(text: Any, **fields: Any) -> dict[str, Any]:
    chat = {"id": TG_ADMIN, "type": "private", "first_name": "Ann"}
    message = {"message_id": next(_tg_ids), "from": dict(ANN), "chat": chat, "date": 1}
    return {**message, "text": text, **fields}


async def tg_status(fake: FakeTelegram, orch: Orchestrator) -> str:
    before = len(fake.sent.get(TG_ADMIN, []))
    update_id = fake.push_message(TG_ADMIN, "/status")
    await fake.wait_confirmed(update_id, timeout=30)
    await orch.settled(f"tg:{TG_ADMIN}")
    sent = [str(m.text) for m in fake.sent.get(TG_ADMIN, [])[before:]]
    assert sent, "the admin's /status after the hostile updates was not answered"
    return "\n".join(sent)


async def test_telegram_hostile_updates_are_skipped_and_polling_goes_on(
    telegram: tuple[Orchestrator, TelegramChannel, FakeTelegram],
) -> None:
    orch, channel, fake = telegram
    log = orch.services.log
    written = await rows_written(log)
    unreadable = [
        {"message": {"message_id": 7}},  # no chat, no date: PTB cannot build it
        {"message": "a string"},
        {"message": {**tg_message("x"), "date": "yesterday"}},
        {"message": tg_message(5)},  # PTB lets it through; the text is not text
        {"message": tg_message({"a": 1})},
    ]
    readable = [
        {
            "message": tg_message(
                "odd entities", entities=[{"type": "zz", "offset": 99, "length": -1}]
            )
        },
        {"something_else": {"id": 1}},  # not a message: ignored, not an error
        {
            "message": tg_message(
                "poison \udcff here \x00",
                **{"from": {**ANN, "first_name": "A\udcff", "username": None}},
            )
        },
    ]
    for body in unreadable[:2] + readable + unreadable[2:]:
        fake.push_update(body)
    status = await tg_status(fake, orch)
    assert "Uptime:" in status
    assert channel.skipped == len(unreadable)
    assert f"telegram (connected, {len(unreadable)} unreadable skipped)" in status
    texts = await received_texts(orch)
    assert "odd entities" in texts and "poison \ufffd here \ufffd" in texts
    await committing(log, written)


async def test_telegram_seeded_random_updates_never_stop_polling(
    telegram: tuple[Orchestrator, TelegramChannel, FakeTelegram],
) -> None:
    orch, channel, fake = telegram
    log = orch.services.log
    written = await rows_written(log)
    rng = random.Random(SEED)
    keys = ["message_id", "from", "chat", "date", "text", "entities", "caption", "reply_to_message"]
    for _ in range(40):
        message = tg_message("/help" if rng.random() < 0.2 else "hi")
        for key in rng.sample(keys, rng.randrange(1, 4)):
            if rng.random() < 0.3:
                message.pop(key, None)
            else:
                message[key] = rng.choice(ODD)
        fake.push_update({"message": message})
    assert "Uptime:" in await tg_status(fake, orch)
    assert channel.skipped > 0 and channel.is_connected
    await committing(log, written)


# ---- Slack -------------------------------------------------------------------------------

SL_ADMIN = "C0123"


@pytest.fixture
async def slack(settings: Settings) -> AsyncIterator[tuple[Orchestrator, SlackChannel, FakeSlack]]:
    async with FakeSlack() as fake:
        fake.add_channel(SL_ADMIN, "ml-ops")
        channel = SlackChannel(fake.bot_token, fake.app_token, api_url=fake.api_url)
        channel.reconnect_delay_s = 0.2
        admin = settings.model_copy(update={"admin_chats": (f"sl:{SL_ADMIN}",)})
        async with Orchestrator(admin, channels=[channel]) as orch:
            yield orch, channel, fake


async def sl_status(fake: FakeSlack, orch: Orchestrator) -> str:
    before = len(fake.messages.get(SL_ADMIN, []))
    await fake.push_message(SL_ADMIN, "/status", channel_type="channel")
    await fake.wait_for(
        "the /status reply",
        lambda: any("Uptime:" in t for t in fake.texts(SL_ADMIN)[before:]),
        timeout=30,
    )
    await orch.settled(f"sl:{SL_ADMIN}")
    return "\n".join(fake.texts(SL_ADMIN)[before:])


def sl_event(**fields: Any) -> dict[str, Any]:
    base = {"type": "message", "user": "U1", "channel": SL_ADMIN, "ts": "1.000001", "text": "hi"}
    return {**base, **fields}


async def test_slack_hostile_frames_and_events_are_skipped_and_reading_goes_on(
    slack: tuple[Orchestrator, SlackChannel, FakeSlack],
) -> None:
    orch, channel, fake = slack
    log = orch.services.log
    written = await rows_written(log)
    for frame in ("not json", "[1, 2]", '{"type": "events_api", "payload": 5}', b"\x00\xff"):
        await fake.push_frame(frame)
    for event in ("a string", 5, None, ["x"]):
        await fake.push_event(event)
    await fake.push_event(sl_event(subtype=["unhashable"], ts="1.1"))
    await fake.push_event(sl_event(text={"a": 1}, user=["U1"], ts="1.2", thread_ts={"x": 1}))
    await fake.push_event(sl_event(text="poison \udcff here \x00", ts="1.3"))
    await fake.push_event(sl_event(text="é" * 100_000, ts="1.4"))
    await fake.push_event(sl_event(channel=None, ts="1.5"))
    assert "Uptime:" in await sl_status(fake, orch)
    assert channel.skipped >= 6  # two frames that are not objects, four events, one subtype
    texts = await received_texts(orch)
    assert "poison \ufffd here \ufffd" in texts
    await committing(log, written)


async def test_slack_seeded_random_events_never_stop_reading(
    slack: tuple[Orchestrator, SlackChannel, FakeSlack],
) -> None:
    orch, channel, fake = slack
    log = orch.services.log
    written = await rows_written(log)
    rng = random.Random(SEED)
    keys = ["type", "subtype", "user", "channel", "ts", "text", "thread_ts", "channel_type"]
    for i in range(40):
        event = sl_event(ts=f"2.{i:06d}")
        for key in rng.sample(keys, rng.randrange(1, 4)):
            event[key] = rng.choice(ODD)
        await fake.push_event(event)
    assert "Uptime:" in await sl_status(fake, orch)
    assert channel.is_connected
    await committing(log, written)


# ---- Discord -----------------------------------------------------------------------------

DC_ADMIN = f"dc:{ADMIN_CHANNEL}"


@pytest.fixture
async def discord(
    settings: Settings,
) -> AsyncIterator[tuple[Orchestrator, DiscordChannel, FakeDiscord]]:
    fake = FakeDiscord()
    await fake.start()
    channel = DiscordChannel(DISCORD_TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url)
    admin = settings.model_copy(update={"admin_chats": (DC_ADMIN,)})
    try:
        async with Orchestrator(admin, channels=[channel]) as orch:
            yield orch, channel, fake
    finally:
        await fake.aclose()


async def dc_status(fake: FakeDiscord, orch: Orchestrator) -> str:
    before = len(fake.sent[ADMIN_CHANNEL])
    await fake.push_message(ADMIN_CHANNEL, "/status")
    count = before
    while not any("Uptime:" in m.content for m in fake.sent[ADMIN_CHANNEL][before:]):
        count += 1
        await fake.wait_sent(ADMIN_CHANNEL, count, timeout=30)
    await orch.settled(DC_ADMIN)
    return "\n".join(m.content for m in fake.sent[ADMIN_CHANNEL][before:])


def dc_message(fake: FakeDiscord, content: Any, **fields: Any) -> dict[str, Any]:
    author = fake._user(USER_ID, "ann")  # the fake's own payload shape
    data = fake._message(ADMIN_CHANNEL, author, "x", guild=True)
    data["content"] = content
    data.update(fields)
    return data


async def test_discord_hostile_messages_are_skipped_and_the_gateway_goes_on(
    discord: tuple[Orchestrator, DiscordChannel, FakeDiscord],
) -> None:
    orch, channel, fake = discord
    log = orch.services.log
    written = await rows_written(log)
    await fake.dispatch("MESSAGE_CREATE", {"id": "1"})  # nothing else
    await fake.dispatch("MESSAGE_CREATE", dc_message(fake, "x", author=None))
    await fake.dispatch("MESSAGE_CREATE", dc_message(fake, 5))
    await fake.dispatch("MESSAGE_CREATE", dc_message(fake, "x", mentions="everyone"))
    await fake.dispatch("MESSAGE_CREATE", dc_message(fake, "x", attachments=[{"id": "a"}]))
    await fake.dispatch(
        "MESSAGE_CREATE",
        dc_message(fake, "poison \udcff here \x00", author={**fake._user(USER_ID, "a\udcff")}),
    )
    assert "Uptime:" in await dc_status(fake, orch)
    assert channel.is_connected and channel.skipped >= 3
    texts = await received_texts(orch)
    assert "poison \ufffd here \ufffd" in texts
    await committing(log, written)


async def test_discord_seeded_random_messages_never_stop_the_gateway(
    discord: tuple[Orchestrator, DiscordChannel, FakeDiscord],
) -> None:
    orch, channel, fake = discord
    log = orch.services.log
    written = await rows_written(log)
    rng = random.Random(SEED)
    keys = ["id", "channel_id", "author", "content", "mentions", "attachments", "type", "guild_id"]
    for i in range(40):
        data = dc_message(fake, "hi", id=str(900_000 + i))
        for key in rng.sample(keys, rng.randrange(1, 3)):
            data[key] = rng.choice(ODD)
        await fake.dispatch("MESSAGE_CREATE", data)
        await asyncio.sleep(0)
    assert "Uptime:" in await dc_status(fake, orch)
    assert channel.is_connected
    await committing(log, written)
