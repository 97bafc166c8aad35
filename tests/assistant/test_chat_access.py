"""Who may talk and who may command: grants from chat, kept across restarts."""

from __future__ import annotations

from assistant.channels.base import IncomingMessage
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel, Running

ADMIN = "tg:1001"
GROUP = "tg:3003"


async def say(running: Running, chat: str, text: str, addressed: bool = True) -> list[str]:
    channel = running.channel
    before = len(channel.sent)
    channel._ids += 1
    await running.orch.deliver(
        IncomingMessage(chat, "bob", text, platform_id=f"x{channel._ids}", addressed=addressed)
    )
    await running.orch.settled(chat)
    return [t for c, t in channel.sent[before:] if c == chat]


async def test_allow_admin_mode_and_revoke(running: Running) -> None:
    assert await say(running, GROUP, "hello") == []
    (reply,) = await running.channel.say(ADMIN, f"/chat allow {GROUP}")
    assert "may talk to the assistant now" in reply
    (answer,) = await say(running, GROUP, "hello again")
    assert answer.startswith("No model is configured")
    assert await say(running, GROUP, "/status") == []  # allowed is not admin
    assert await say(running, GROUP, "chatter between people", addressed=False) == []
    await running.channel.say(ADMIN, f"/chat mode {GROUP} all")
    assert len(await say(running, GROUP, "anyone?", addressed=False)) == 1
    await running.channel.say(ADMIN, f"/chat admin {GROUP}")
    (status,) = await say(running, GROUP, "/status")
    assert "Uptime:" in status and f"{GROUP} (admin)" in status
    await running.channel.say(ADMIN, f"/chat revoke {GROUP}")
    assert await say(running, GROUP, "/status") == []
    assert await say(running, GROUP, "hello?") == []


async def test_refusals(running: Running) -> None:
    cases = {
        "/chat admin 12345": "'12345' is not a chat id",
        f"/chat revoke {ADMIN}": "is an admin by configuration",
        "/chat mode tg:5 loud": "mode is addressed or all",
        "/chat promote tg:5": "Unknown /chat action 'promote'",
    }
    for text, expected in cases.items():
        (reply,) = await running.channel.say(ADMIN, text)
        assert expected in reply, text


async def test_grants_survive_a_restart_and_context_is_not_replayed(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say(ADMIN, f"/chat admin {GROUP}")
        # A group message not addressed to the assistant: stored as context only.
        await orch.deliver(
            IncomingMessage(GROUP, "bob", "lunch?", platform_id="p1", addressed=False)
        )
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await orch.settled(GROUP)
        assert channel.sent == []  # the unaddressed message is not answered after restart
        (listing,) = await channel.say(ADMIN, "/chat list")
        assert f"{GROUP}" in listing and "admin" in listing
        (status,) = await channel.say(GROUP, "/status")
        assert "Uptime:" in status
