"""The Slack adapter against a local Slack (Web API + Socket Mode), with a real Orchestrator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.channels.base import IncomingMessage
from assistant.channels.slack import LIMIT, SlackChannel, from_mrkdwn, to_mrkdwn
from assistant.config import Settings
from assistant.errors import ChannelError
from assistant.orchestrator import Orchestrator
from tests.fakes.slack_server import FakeSlack

ADMIN = "C0123"
OTHER = "C0999"
BOT = "<@U0BOT>"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(ADMIN, "ml-ops")
        yield server


def make_channel(slack: FakeSlack, **tokens: str) -> SlackChannel:
    channel = SlackChannel(
        tokens.get("bot", slack.bot_token),
        tokens.get("app", slack.app_token),
        api_url=slack.api_url,
    )
    channel.ping_interval_s = 1.0
    return channel


@dataclass
class Service:
    orch: Orchestrator
    channel: SlackChannel
    slack: FakeSlack

    async def ask(self, channel: str, text: str, channel_type: str = "channel") -> list[str]:
        """Post as a person; the replies once at least one arrived and the chat settled."""
        before = len(self.slack.messages.get(channel, []))
        await self.slack.push_message(channel, text, channel_type=channel_type)
        await self.slack.wait_messages(channel, before + 1)
        await self.orch.settled(f"sl:{channel}")
        return self.slack.texts(channel)[before:]

    async def barrier(self, *chats: str) -> None:
        """Everything posted before is handled: events are delivered in order, so once a
        later /status is answered the earlier ones were delivered; then the queues settle."""
        await self.ask(ADMIN, "/status")
        for chat in chats:
            await self.orch.settled(f"sl:{chat}")


@pytest.fixture
async def service(settings: Settings, slack: FakeSlack) -> AsyncIterator[Service]:
    channel = make_channel(slack)
    admin_settings = settings.model_copy(update={"admin_chats": (f"sl:{ADMIN}",)})
    async with Orchestrator(admin_settings, channels=[channel]) as orch:
        yield Service(orch, channel, slack)


async def stored(service: Service) -> list[tuple[str, str, int]]:
    rows = await service.orch.services.db.fetchall(
        "SELECT chat_id, text, from_me FROM messages ORDER BY seq"
    )
    return [(r["chat_id"], r["text"], r["from_me"]) for r in rows]


# ---- through the orchestrator ------------------------------------------------------------


async def test_status_from_the_admin_channel_is_answered(service: Service) -> None:
    assert service.channel.is_connected
    (reply,) = await service.ask(ADMIN, "/status")
    assert "Uptime:" in reply
    (reply,) = await service.ask(ADMIN, f"{BOT} /status")
    assert "Uptime:" in reply
    await service.slack.wait_acked()  # every envelope, the bot's own echoes included


async def test_status_from_another_channel_gets_no_answer(service: Service) -> None:
    await service.slack.push_message(OTHER, "/status", channel_type="channel")
    await service.slack.push_message("D0ANN", "/status", channel_type="im")
    await service.barrier(OTHER, "D0ANN")
    assert OTHER not in service.slack.messages and "D0ANN" not in service.slack.messages


async def test_free_text_from_the_admin_gets_the_offline_reply(service: Service) -> None:
    (reply,) = await service.ask(ADMIN, f"{BOT} how is the run going? a < b & c")
    assert reply.startswith("No model is configured")
    await service.orch.services.log.flush()
    # the mention stripped, Slack's escaping undone; the bot's echoed post is not a message
    assert await stored(service) == [
        (f"sl:{ADMIN}", "how is the run going? a < b & c", 0),
        (f"sl:{ADMIN}", reply.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"), 1),
    ]
    chat = await service.orch.services.chats.get(f"sl:{ADMIN}")
    assert chat is not None and chat.title == "#ml-ops"


async def test_channel_text_without_a_mention_is_stored_but_not_answered(
    service: Service,
) -> None:
    await service.slack.push_message(ADMIN, "just chatting among ourselves", channel_type="channel")
    await service.barrier(ADMIN)
    assert not any("No model" in t for t in service.slack.texts(ADMIN))
    assert (f"sl:{ADMIN}", "just chatting among ourselves", 0) in await stored(service)
    replies = await service.ask(ADMIN, f"{BOT} are you there?")
    assert len(replies) == 1 and replies[0].startswith("No model is configured")


async def test_a_redelivered_envelope_is_answered_once(service: Service) -> None:
    slack = service.slack
    ts = await slack.push_message(ADMIN, f"{BOT} hello", channel_type="channel")
    await slack.wait_messages(ADMIN, 1)
    command_ts = await slack.push_message(ADMIN, "/status", channel_type="channel")
    await slack.wait_messages(ADMIN, 2)
    await slack.redeliver(ts)
    await slack.redeliver(command_ts)
    await service.barrier(ADMIN)
    texts = slack.texts(ADMIN)
    assert sum(t.startswith("No model") for t in texts) == 1
    assert sum("Uptime:" in t for t in texts) == 2  # the original and the barrier's
    await slack.wait_acked()


async def test_a_dropped_socket_reconnects_and_the_next_message_is_answered(
    service: Service,
) -> None:
    slack, channel = service.slack, service.channel
    await slack.drop_socket()
    await slack.wait_for("the channel to notice", lambda: not channel.is_connected, 2)
    await slack.push_message(ADMIN, "/status", channel_type="channel")  # waits for the socket
    (reply,) = await slack.wait_messages(ADMIN, 1)
    assert "Uptime:" in reply["text"]
    assert slack.connections == 2 and channel.is_connected
    await slack.send_disconnect("refresh_requested")  # Slack moving the app elsewhere
    await slack.wait_for("a third connection", lambda: slack.connections == 3, 3)
    assert "Uptime:" in (await service.ask(ADMIN, "/status"))[0]


async def test_a_rejected_bot_token_stops_the_start_with_a_clear_error(
    settings: Settings, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    channel = make_channel(slack, bot="xoxb-revoked-secret")
    with caplog.at_level(logging.DEBUG), pytest.raises(ChannelError) as raised:
        async with Orchestrator(settings, channels=[channel]):
            pass
    assert str(raised.value) == (
        "slack: the bot token was rejected (invalid_auth); check SLACK_BOT_TOKEN"
    )
    assert "xoxb-revoked-secret" not in caplog.text
    assert not channel.is_connected


async def test_a_rejected_app_token_stops_the_start_with_a_clear_error(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    for app_token, error in (("xapp-wrong", "invalid_auth"), (slack.bot_token, "not_allowed")):
        channel = make_channel(slack, app=app_token)
        with caplog.at_level(logging.DEBUG), pytest.raises(ChannelError) as raised:
            await channel.start(NullInbox())
        assert f"app token was rejected ({error}" in str(raised.value)
        assert "check SLACK_APP_TOKEN" in str(raised.value)
        assert app_token not in str(raised.value) + caplog.text
        await channel.aclose()


# ---- sending -----------------------------------------------------------------------------


@pytest.fixture
async def channel(slack: FakeSlack) -> AsyncIterator[SlackChannel]:
    channel = make_channel(slack)
    await channel.start(NullInbox())
    yield channel
    await channel.aclose()


class NullInbox:
    def __init__(self) -> None:
        self.received: list[IncomingMessage] = []

    async def deliver(self, message: IncomingMessage) -> None:
        self.received.append(message)

    async def settled(self, chat_id: str) -> None:
        return None


async def test_a_long_text_arrives_split_within_the_limit_with_balanced_fences(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    prose = [f"line {i}: loss went from {i} to {i - 1} & stayed < 5" for i in range(60)]
    code = [f"    step({i}) -> {{'loss': {i}}}" for i in range(180)]
    text = "\n".join([*prose, "```python", *code, "```", *prose])
    assert len(text) >= 10_000
    await channel.send_text(f"sl:{ADMIN}", text)
    pieces = slack.texts(ADMIN)
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece) <= LIMIT
        assert sum(line.strip().startswith("```") for line in piece.split("\n")) % 2 == 0
    joined = "\n".join(pieces)
    assert "step(179) -&gt; {'loss': 179}" in joined and "&amp; stayed &lt; 5" in joined
    assert [line for line in joined.split("\n") if line.startswith("line ")] == [
        to_mrkdwn(line) for line in prose + prose
    ]


async def test_an_image_arrives_as_a_file(
    channel: SlackChannel, slack: FakeSlack, tmp_path: Path
) -> None:
    image = tmp_path / "loss.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    file_id = await channel.send_image(f"sl:{ADMIN}", image, caption="**loss** curve")
    (upload,) = slack.files[ADMIN]
    assert upload.file_id == file_id and upload.content == image.read_bytes()
    assert upload.filename == "loss.png" and upload.initial_comment == "*loss* curve"
    assert slack.calls[-2:] == ["files.getUploadURLExternal", "files.completeUploadExternal"]


async def test_a_rate_limit_is_waited_out_and_the_message_arrives_once(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    slack.fail_next("chat.postMessage", 429, retry_after=1)
    started = asyncio.get_running_loop().time()
    ts = await channel.send_text(f"sl:{ADMIN}", "hello after the wait")
    assert asyncio.get_running_loop().time() - started >= 0.95
    assert slack.texts(ADMIN) == ["hello after the wait"]
    assert ts == slack.messages[ADMIN][0]["ts"]
    assert slack.calls.count("chat.postMessage") == 2


async def test_server_errors_are_retried_and_refusals_name_slacks_error(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    slack.fail_next("chat.postMessage", 503)
    await channel.send_text(f"sl:{ADMIN}", "through a hiccup")
    assert slack.texts(ADMIN) == ["through a hiccup"]
    with pytest.raises(ChannelError, match=r"chat\.postMessage failed: channel_not_found"):
        await channel.send_text("sl:C404", "nobody here")


async def test_edits_update_in_place_or_send_anew(channel: SlackChannel, slack: FakeSlack) -> None:
    ts = await channel.send_text(f"sl:{ADMIN}", "training: 10%")
    assert ts is not None
    assert await channel.edit_text(f"sl:{ADMIN}", ts, "training: 90%") == ts
    (update,) = slack.updates[ADMIN]
    assert (update["ts"], update["text"]) == (ts, "training: 90%")
    assert slack.texts(ADMIN) == slack.shown(ADMIN) == ["training: 90%"]
    other = await channel.edit_text(f"sl:{ADMIN}", "1.000001", "training: done")
    assert other != "1.000001" and slack.texts(ADMIN)[-1] == "training: done"


async def test_incoming_messages_carry_what_the_orchestrator_needs(
    slack: FakeSlack,
) -> None:
    inbox = NullInbox()
    channel = make_channel(slack)
    await channel.start(inbox)
    try:
        await slack.push_message("D0ANN", "hi there", user="U7")
        await slack.push_message(ADMIN, "assistant /status", channel_type="channel")
        await slack.push_message(ADMIN, "Assistant is slow today", channel_type="channel")
        threaded = await slack.push_message(ADMIN, f"{BOT}: look at <#C0999|ops>", "U2", "channel")
        await slack.push_message(ADMIN, "reply", channel_type="channel", thread_ts=threaded)
        await slack.push_message(ADMIN, BOT, channel_type="channel")  # nothing to answer
        await slack.push_message(ADMIN, "not for the bot", channel_type="channel")
        await slack.wait_for(
            "the last message",
            lambda: inbox.received[-1:] and inbox.received[-1].text == "not for the bot",
        )
        await slack.wait_acked()
    finally:
        await channel.aclose()
    dm, command, named, mention, reply, unaddressed = inbox.received
    assert (dm.chat_id, dm.sender, dm.text, dm.addressed) == ("sl:D0ANN", "U7", "hi there", True)
    assert dm.chat_title == "direct message with U1" and dm.platform_id
    assert (command.text, command.addressed) == ("/status", True)
    assert (named.text, named.addressed) == ("Assistant is slow today", True)
    assert (mention.text, mention.addressed, mention.chat_title) == (
        "look at #ops",
        True,
        "#ml-ops",
    )
    assert mention.platform_id == threaded and reply.reply_to == threaded
    assert (unaddressed.text, unaddressed.addressed) == ("not for the bot", False)


def test_mrkdwn_both_ways() -> None:
    assert to_mrkdwn("**bold** [docs](https://x.io/a?b=1&c=2) a<b") == (
        "*bold* <https://x.io/a?b=1&amp;c=2|docs> a&lt;b"
    )
    assert to_mrkdwn("## Results\n`**x** < 1`") == "*Results*\n`**x** &lt; 1`"
    assert to_mrkdwn("```\n**kept**\n```") == "```\n**kept**\n```"
    assert from_mrkdwn("<@U1> <!here> <https://x.io|x.io> <https://y.io|docs> &lt;&amp;&gt;") == (
        "@U1 @here https://x.io docs (https://y.io) <&>"
    )
