"""The Discord channel end to end: a real discord.py client against the fake Discord
(REST + gateway over 127.0.0.1), a real Orchestrator behind it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from assistant.channels.base import Inbox, IncomingMessage
from assistant.channels.discord import NO_CONTENT_INTENT, REJECTED, DiscordChannel
from assistant.config import Settings
from assistant.errors import ChannelError
from assistant.orchestrator import Orchestrator
from tests.fakes.discord_server import ADMIN_CHANNEL, OTHER_CHANNEL, TOKEN, FakeDiscord

ADMIN = f"dc:{ADMIN_CHANNEL}"
DM_CHANNEL = 4242
MESSAGES = "POST /channels/{channel_id}/messages"


@dataclass
class _Tap:
    """The orchestrator as inbox, noting each message once it was handed over."""

    inner: Inbox
    delivered: asyncio.Queue[IncomingMessage]

    async def deliver(self, message: IncomingMessage) -> None:
        await self.inner.deliver(message)
        self.delivered.put_nowait(message)

    async def settled(self, chat_id: str) -> None:
        await self.inner.settled(chat_id)


class TappedDiscord(DiscordChannel):
    """The real channel; tests learn when a pushed message has reached the orchestrator."""

    def __init__(self, fake: FakeDiscord) -> None:
        super().__init__(TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url)
        self.delivered: asyncio.Queue[IncomingMessage] = asyncio.Queue()

    async def start(self, inbox: Inbox) -> None:
        await super().start(_Tap(inbox, self.delivered))


@dataclass
class Env:
    fake: FakeDiscord
    channel: TappedDiscord
    orch: Orchestrator
    pushed: list[int] = field(default_factory=list)

    async def say(
        self,
        channel_id: int,
        text: str,
        *,
        guild: bool = True,
        mentions_bot: bool = False,
        reply_to: int | None = None,
    ) -> IncomingMessage:
        """Push a user message, wait until it is delivered and its chat has settled."""
        pushed = await self.fake.push_message(
            channel_id, text, guild=guild, mentions_bot=mentions_bot, reply_to=reply_to
        )
        self.pushed.append(pushed)
        message = await asyncio.wait_for(self.channel.delivered.get(), 5)
        assert message.platform_id == str(pushed)
        await self.orch.settled(message.chat_id)
        return message

    def texts(self, channel_id: int) -> list[str]:
        return [m.content for m in self.fake.sent[channel_id]]


def _admin_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_chats": (ADMIN, f"dc:{DM_CHANNEL}")})


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def env(settings: Settings, fake: FakeDiscord) -> AsyncIterator[Env]:
    channel = TappedDiscord(fake)
    async with Orchestrator(_admin_settings(settings), channels=[channel]) as orch:
        assert channel.is_connected
        yield Env(fake, channel, orch)
    assert not channel.is_connected


async def test_status_is_answered_in_the_admin_channel_only(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.say(ADMIN_CHANNEL, "/status")
    (reply,) = env.fake.sent[ADMIN_CHANNEL]
    assert "Uptime:" in reply.content and reply.allowed_mentions == {"parse": []}
    with caplog.at_level(logging.WARNING):
        await env.say(OTHER_CHANNEL, "/status")
    assert env.fake.sent[OTHER_CHANNEL] == []
    assert f"ignored command from non-admin chat dc:{OTHER_CHANNEL}" in caplog.text


async def test_free_text_mentioning_the_bot_gets_the_offline_reply(env: Env) -> None:
    message = await env.say(ADMIN_CHANNEL, "how is the run going?", mentions_bot=True)
    assert message.addressed and message.text == "how is the run going?"
    assert (message.chat_id, message.chat_title, message.sender) == (ADMIN, "ops", "ann")
    (reply,) = env.texts(ADMIN_CHANNEL)
    assert reply.startswith("No model is configured")
    stored = await env.orch.services.db.fetchall("SELECT text FROM messages WHERE from_me = 0")
    assert [r["text"] for r in stored] == ["how is the run going?"]


async def test_a_direct_message_from_an_admin_dm_is_answered(env: Env) -> None:
    message = await env.say(DM_CHANNEL, "anything running?", guild=False)
    assert message.addressed and message.chat_id == f"dc:{DM_CHANNEL}"
    assert message.chat_title == "DM with ann"
    (reply,) = env.texts(DM_CHANNEL)
    assert reply.startswith("No model is configured")


async def test_guild_text_not_addressed_to_the_bot_is_stored_but_not_answered(env: Env) -> None:
    message = await env.say(ADMIN_CHANNEL, "lunch at noon?")
    assert not message.addressed
    assert env.fake.sent[ADMIN_CHANNEL] == []
    assert await env.orch.services.db.scalar("SELECT count(*) FROM messages") == 1


async def test_replies_to_the_bot_and_its_name_address_it(env: Env) -> None:
    await env.say(ADMIN_CHANNEL, "/status")
    bot_message = env.fake.sent[ADMIN_CHANNEL][0].id
    reply = await env.say(OTHER_CHANNEL, "and the GPUs?", reply_to=bot_message)
    assert reply.addressed and reply.reply_to == str(bot_message)
    named = await env.say(OTHER_CHANNEL, "Assistant, what is queued?")
    assert named.addressed and named.text == "Assistant, what is queued?"
    other = await env.say(OTHER_CHANNEL, "assistants are overrated")
    assert not other.addressed


async def test_a_long_text_arrives_split_with_balanced_fences(env: Env) -> None:
    lines = [f"line {i}: " + "x" * 60 for i in range(40)]
    code = ["```python", *(f"print({i}, {'y' * 60!r})" for i in range(60)), "```"]
    text = "\n".join([*lines, *code, *lines])[:10_000]
    assert len(text) == 10_000 and text.count("```") == 2
    first_id = await env.channel.send_text(ADMIN, text)
    pieces = env.fake.sent[ADMIN_CHANNEL]
    # the first piece's id: what an edit or a thread starts from
    assert len(pieces) >= 5 and first_id == str(pieces[0].id)
    assert all(len(p.content) <= 2000 and p.content.count("```") % 2 == 0 for p in pieces)
    joined = "\n".join(p.content for p in pieces)
    assert all(line in joined for line in text.splitlines())


async def test_an_image_arrives_as_an_attachment(env: Env, tmp_path: Path) -> None:
    image = tmp_path / "loss.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    message_id = await env.channel.send_image(ADMIN, image, "loss curve")
    (sent,) = env.fake.sent[ADMIN_CHANNEL]
    assert message_id == str(sent.id) and sent.content == "loss curve"
    assert sent.attachments == [("loss.png", image.read_bytes())]


@pytest.mark.parametrize("via", [True, False], ids=["discordpy-waits", "queue-waits"])
async def test_a_rate_limit_is_waited_out_and_the_message_sent_once(env: Env, via: bool) -> None:
    # With Via (as Discord sends) discord.py sleeps and retries inside the request;
    # without it discord.py raises and the SendQueue waits (RetryAfter).
    env.fake.fail_next(MESSAGES, 429, retry_after=0.2, via=via)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await env.channel.send_text(ADMIN, "checkpoint saved")
    assert loop.time() - started >= 0.2
    assert env.texts(ADMIN_CHANNEL) == ["checkpoint saved"]
    assert env.fake.count(MESSAGES, 429) == 1 and env.fake.count(MESSAGES, 200) == 1


async def test_a_message_event_delivered_twice_is_answered_once(env: Env) -> None:
    await env.say(ADMIN_CHANNEL, "/status")
    await env.fake.redeliver(env.pushed[0])
    await env.say(ADMIN_CHANNEL, "/help task")  # handled after the redelivery was dropped
    replies = env.texts(ADMIN_CHANNEL)
    assert len(replies) == 2 and "Uptime:" in replies[0] and replies[1].startswith("/task:")


async def test_edits_happen_in_place_and_a_vanished_message_is_sent_anew(env: Env) -> None:
    message_id = await env.channel.send_text(ADMIN, "epoch 1/3")
    assert message_id is not None
    assert await env.channel.edit_text(ADMIN, message_id, "epoch 2/3") == message_id
    assert [e.content for e in env.fake.edits[ADMIN_CHANNEL]] == ["epoch 2/3"]
    fresh = await env.channel.edit_text(ADMIN, "123", "epoch 3/3")
    assert fresh != "123" and env.texts(ADMIN_CHANNEL) == ["epoch 1/3", "epoch 3/3"]


async def test_a_refused_send_is_a_channel_error(env: Env) -> None:
    env.fake.fail_next(MESSAGES, 403)
    with pytest.raises(ChannelError, match=r"not allowed \(403 Missing Permissions\)"):
        await env.channel.send_text(ADMIN, "hello")
    with pytest.raises(ChannelError, match="not a Discord chat"):
        await env.channel.send_text("dc:general", "hello")


async def test_the_gateway_resumes_after_a_drop(env: Env) -> None:
    await env.fake.drop_connections()
    await env.say(ADMIN_CHANNEL, "/status")  # pushed once the fake has a session again
    assert env.channel.is_connected
    assert (env.fake.identifies, env.fake.resumes) == (1, 1)
    assert len(env.fake.sent[ADMIN_CHANNEL]) == 1


async def test_the_redirection_stays_with_this_client(env: Env) -> None:
    # imported here: the channel module imports discord first, quieting its audioop warning
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    assert Route.BASE == "https://discord.com/api/v10"
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "wss://gateway.discord.gg/"
    assert env.fake.count("GET /users/@me", 200) == 1


async def test_a_rejected_token_is_a_clear_error_at_start(
    settings: Settings, fake: FakeDiscord
) -> None:
    fake.reject_token()
    channel = DiscordChannel(TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url)
    with pytest.raises(ChannelError) as caught:
        async with Orchestrator(_admin_settings(settings), channels=[channel]):
            pass
    assert str(caught.value) == REJECTED and TOKEN not in str(caught.value)
    assert not channel.is_connected


async def test_a_missing_message_content_intent_is_named_at_start(
    settings: Settings, fake: FakeDiscord
) -> None:
    fake.message_content_enabled = False
    channel = DiscordChannel(TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url)
    with pytest.raises(ChannelError) as caught:
        async with Orchestrator(_admin_settings(settings), channels=[channel]):
            pass
    assert str(caught.value) == NO_CONTENT_INTENT
