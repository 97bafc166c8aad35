"""The orchestrator end to end over a real database: interception, admin rules, the chain."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.errors import ChannelError
from assistant.orchestrator import Orchestrator
from assistant.reply import Reply
from storage.ids import encode
from tests.support.recording import RecordingChannel, Running

ADMIN = "tg:1001"
STRANGER = "tg:2002"


async def test_commands_are_answered_and_never_stored(running: Running) -> None:
    replies = await running.channel.say(ADMIN, "/status")
    assert len(replies) == 1 and "Uptime:" in replies[0] and "Tasks:" in replies[0]
    db = running.orch.services.db
    assert await db.scalar("SELECT count(*) FROM messages") == 0
    assert running.orch.services.queue.status().chats == ()


async def test_commands_from_other_chats_are_ignored_and_logged(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        replies = await running.channel.say(STRANGER, "/task add every 1h /status")
    assert replies == []
    assert "ignored command from non-admin chat tg:2002" in caplog.text
    assert await running.orch.services.db.scalar("SELECT count(*) FROM tasks") == 0


async def test_unknown_command_and_bad_quotes_get_short_replies(running: Running) -> None:
    (reply,) = await running.channel.say(ADMIN, "/frobnicate now")
    assert reply == "Unknown command /frobnicate. /help lists the commands."
    (reply,) = await running.channel.say(ADMIN, '/task add cron "0 2 * * * /status')
    assert "close every quote" in reply


async def test_help_lists_every_command_with_usage(running: Running) -> None:
    (reply,) = await running.channel.say(ADMIN, "/help")
    for name in ("/help", "/status", "/task", "/debug"):
        assert name in reply
    (reply,) = await running.channel.say(ADMIN, "/help task")
    assert reply.startswith("/task:") and "/task add cron" in reply


async def test_free_text_goes_through_the_queue_and_the_chain_records_it(running: Running) -> None:
    (reply,) = await running.channel.say(ADMIN, "how is the run going?")
    assert reply.startswith("No model is configured")
    assert "/status" in reply and "/task" in reply
    await running.flush()
    db = running.orch.services.db
    stored = await db.fetchall("SELECT text, from_me FROM messages ORDER BY seq")
    assert [(r["text"], r["from_me"]) for r in stored] == [
        ("how is the run going?", 0),
        (reply, 1),
    ]
    (why,) = await running.channel.say(ADMIN, "/debug why")
    lines = why.splitlines()
    assert lines[0] == "Why message_sent (ok):"
    assert "2 event(s)" in lines[1]
    assert "event telegram" in why and "action message_stored" in why
    assert "event message_batch" in why and "action message_sent" in why
    assert why.index("event telegram") < why.index("event message_batch")


async def test_free_text_from_a_non_admin_chat_is_stored_but_not_answered(running: Running) -> None:
    assert await running.channel.say(STRANGER, "hello?") == []
    assert await running.orch.services.db.scalar("SELECT count(*) FROM messages") == 1


async def test_a_redelivered_message_is_answered_once(running: Running) -> None:
    from assistant.channels.base import IncomingMessage

    message = IncomingMessage(ADMIN, "ann", "hi", platform_id="same")
    for _ in range(2):
        await running.orch.deliver(message)
        await running.orch.settled(ADMIN)
    assert len(running.channel.sent) == 1


async def test_a_failed_send_is_a_failed_action_with_the_error(settings: Settings) -> None:
    channel = RecordingChannel(fail_with=ConnectionError("telegram unreachable"))
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say(ADMIN, "/task add every 1h /status")
        await orch.services.log.flush()
        row = await orch.services.db.fetchone(
            "SELECT ok, error FROM action_log WHERE action_type = 'message_sent'"
        )
    assert row is not None and row["ok"] == 0
    assert row["error"] == "ConnectionError: telegram unreachable"


async def test_a_reply_whose_text_fails_still_sends_its_images_and_fails_the_action(
    settings: Settings, tmp_path: Path
) -> None:
    """A channel that keeps what it could not deliver (the local outbox) gets every part:
    a run report read later must not lose its plot because its text waited."""
    channel = RecordingChannel(fail_with=ChannelError("no client attached: kept"))
    picture = tmp_path / "curves.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    async with Orchestrator(settings, channels=[channel]) as orch:
        sent = await orch.send(ADMIN, Reply("Run ab12cd succeeded", (picture,)), None)
        await orch.services.log.flush()
        row = await orch.services.db.fetchone(
            "SELECT ok, error FROM action_log WHERE action_type = 'message_sent'"
        )
    assert sent is False  # the text did not reach anyone: not told as sent
    assert channel.images == [(ADMIN, picture)]
    assert row is not None and row["ok"] == 0
    assert row["error"] == "ChannelError: no client attached: kept"


async def test_conversation_left_unprocessed_by_a_crash_is_answered_at_start(
    settings: Settings,
) -> None:
    # A message stored just before the process died: in the table, beyond the cursor.
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await orch.services.chats.seen(ADMIN, "")
        await orch.messages.store(ADMIN, "ann", "are you there?")
    assert channel.sent == []  # the queue was never told: as if the process had died
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await orch.settled(ADMIN)
    assert len(channel.sent) == 1 and channel.sent[0][1].startswith("No model is configured")


async def test_a_full_disk_tells_the_user_and_keeps_what_was_stored(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say(ADMIN, "first message")
        db = orch.services.db
        pages = await db.scalar("PRAGMA page_count")
        await db.fetchall(f"PRAGMA max_page_count = {pages}")
        (reply,) = await channel.say(ADMIN, "x" * 20000)
        await db.fetchall("PRAGMA max_page_count = 1073741823")
    assert "could not store your message" in reply and "full" in reply
    conn = sqlite3.connect(settings.db_path)
    try:
        texts = [r[0] for r in conn.execute("SELECT text FROM messages WHERE from_me = 0")]
    finally:
        conn.close()
    assert texts == ["first message"]


async def test_debug_event_and_prefixes(running: Running) -> None:
    await running.channel.say(ADMIN, "/task add every 2h /status")
    await running.flush()
    db = running.orch.services.db
    event_id = await db.scalar("SELECT id FROM event_log WHERE summary LIKE 'Command from%'")
    full = encode(event_id)
    (tree,) = await running.channel.say(ADMIN, f"/debug event {full[:-1]}")
    assert f"id {full}" in tree and "action command → /task" in tree
    (ambiguous,) = await running.channel.say(ADMIN, f"/debug event {full[:4]}")
    assert "ambiguous" in ambiguous or f"id {full}" in ambiguous
    (missing,) = await running.channel.say(ADMIN, "/debug event zzzzzzzzzzzzz")
    assert "No event or action id starts with 'zzzzzzzzzzzzz'" in missing
    (bad,) = await running.channel.say(ADMIN, "/debug event ab")
    assert "give at least 4 characters" in bad


async def test_debug_views_refuse_bad_input(running: Running) -> None:
    cases = {
        "/debug": "Say what to show.",
        "/debug last many": "/debug last takes one number",
        "/debug last 500": "/debug last takes 1 to 50, not 500.",
        "/debug nonsense": "Unknown /debug view 'nonsense'.",
        "/debug why a b": "/debug why takes at most one id.",
        "/status everything": "/status has no view 'everything'.",
    }
    for text, expected in cases.items():
        (reply,) = await running.channel.say(ADMIN, text)
        assert expected in reply, text
        assert "Usage:" in reply


async def test_debug_report_on_a_fresh_database(running: Running) -> None:
    await running.channel.say(ADMIN, "hello")
    await running.flush()
    (report,) = await running.channel.say(ADMIN, "/debug report")
    assert "Retention: 3 day(s)" in report
    assert "message_sent 1" in report and "Busiest hours (Europe/Berlin)" in report
