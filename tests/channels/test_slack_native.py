"""Slack's slash command, Block Kit buttons, presses and threads at the channel's edge: the
real slack-bolt AsyncApp and slack_sdk clients against the local Slack (Web API + Socket
Mode), commands and presses handed to a recording inbox. What the orchestrator decides
about a press (rights, once only, the chain) is tested end to end in
test_slack_presses.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.channels.base import Button, IncomingMessage, Press, PressResult
from assistant.channels.slack import LIMIT, SECTION_LIMIT, SlackChannel
from tests.fakes.slack_server import FakeSlack
from tests.support.recording import RecordingInbox

CHAT = "C0123"
DM = "D0ANN"
STOP = Button("Stop", "tok_stop-1", "danger")
RESUME = Button("Resume", "tok_resume", "primary")
LOGS = Button("Logs", "tok_logs")


@dataclass
class Edge:
    channel: SlackChannel
    slack: FakeSlack
    inbox: RecordingInbox

    async def received(self, count: int) -> list[str]:
        await self.slack.wait_for(
            f"{count} message(s); have {self.inbox.texts()}",
            lambda: len(self.inbox.messages) >= count,
        )
        return self.inbox.texts()

    async def pressed(self, count: int) -> list[Press]:
        await self.slack.wait_for(f"{count} press(es)", lambda: len(self.inbox.presses) >= count)
        return self.inbox.presses


def make_channel(slack: FakeSlack, command: str = "/gpu") -> SlackChannel:
    channel = SlackChannel(slack.bot_token, slack.app_token, api_url=slack.api_url, command=command)
    channel.ping_interval_s = 1.0
    return channel


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with FakeSlack() as slack:
        slack.add_channel(CHAT, "ml-ops")
        slack.add_channel(DM, is_im=True)
        channel = make_channel(slack)
        inbox = RecordingInbox()
        await channel.start(inbox)
        try:
            yield Edge(channel, slack, inbox)
        finally:
            await channel.aclose()


# ---- the slash command ---------------------------------------------------------------


async def test_the_slash_command_is_the_registry_command(edge: Edge) -> None:
    slack = edge.slack
    await slack.push_command(CHAT, "status")
    await slack.push_command(CHAT, "run stop 3r6wfv", user="U7")
    await slack.push_command(CHAT, "")
    await slack.push_command(DM, "/runs", channel_type="im")
    await slack.push_command(CHAT, 'task add cron "0 2 * * *" a &lt; b')
    texts = await edge.received(5)
    assert texts == [
        "/status",
        "/run stop 3r6wfv",
        "/help",
        "/runs",
        '/task add cron "0 2 * * *" a < b',
    ]
    status, stop, _, runs, _ = edge.inbox.messages
    assert (status.chat_id, status.sender, status.addressed) == (f"sl:{CHAT}", "U1", True)
    assert status.chat_title == "#ml-ops" and status.platform_id
    assert (stop.sender, runs.chat_id) == ("U7", f"sl:{DM}")
    await slack.wait_acked()  # every envelope acked, the commands' included


async def test_another_command_name_is_configurable(edge: Edge) -> None:
    channel = make_channel(edge.slack, command="/ops")
    inbox = RecordingInbox()
    await edge.channel.aclose()  # one socket at a time, as a single-socket app
    await channel.start(inbox)
    try:
        await edge.slack.push_command(CHAT, "status", command="/gpu")  # not ours: ignored
        await edge.slack.push_command(CHAT, "runs", command="/ops")
        await edge.slack.wait_for("the /ops command", lambda: inbox.messages)
        await edge.slack.wait_acked()
    finally:
        await channel.aclose()
    assert [m.text for m in inbox.messages] == ["/runs"]


async def test_a_slash_command_where_the_bot_is_not_a_member_says_how_to_invite_it(
    edge: Edge,
) -> None:
    slack = edge.slack
    slack.add_channel("C0OUT", "elsewhere", member=False)
    await slack.push_command("C0OUT", "status", user="U7")
    await slack.wait_for("the answer", lambda: slack.responses["C0OUT"])
    (response,) = slack.responses["C0OUT"]
    assert response["response_type"] == "ephemeral"
    assert "invite me with `/invite <@U0BOT>`" in response["text"]
    slack.add_channel("C0OUT", "elsewhere", member=True)  # invited
    await slack.push_command("C0OUT", "status", user="U7")
    assert await edge.received(1) == ["/status"]
    assert len(slack.responses["C0OUT"]) == 1


# ---- buttons and presses -------------------------------------------------------------


async def test_buttons_are_a_section_and_an_actions_block_carrying_the_token(
    edge: Edge,
) -> None:
    ts = await edge.channel.send_message(
        f"sl:{CHAT}", "Run **3r6wfv** queued", buttons=[STOP, RESUME, LOGS]
    )
    (message,) = edge.slack.messages[CHAT]
    assert message["ts"] == ts and message["text"] == "Run *3r6wfv* queued"
    section, actions = message["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": message["text"]}}
    assert [
        (e["text"]["text"], e["action_id"], e["value"], e.get("style")) for e in actions["elements"]
    ] == [
        ("Stop", "press:tok_stop-1", "tok_stop-1", "danger"),
        ("Resume", "press:tok_resume", "tok_resume", "primary"),
        ("Logs", "press:tok_logs", "tok_logs", None),
    ]
    assert edge.slack.shown(CHAT) == ["Run *3r6wfv* queued\n[Stop] [Resume] [Logs]"]


async def test_a_press_that_acted_replaces_the_buttons_with_who_pressed(edge: Edge) -> None:
    slack = edge.slack
    ts = await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv: running", buttons=[STOP, LOGS])
    action_ts = await slack.press(CHAT, "Stop", user="U7")
    (press,) = await edge.pressed(1)
    assert press == Press(
        chat_id=f"sl:{CHAT}",
        sender="U7",
        token="tok_stop-1",
        platform_id=action_ts,
        message_id=ts,
        chat_title="#ml-ops",
    )
    await slack.wait_for("the update", lambda: slack.updates[CHAT])
    # the pressed button goes, the others stay (Logs is still useful after a Stop)
    assert slack.shown(CHAT) == ["Run 3r6wfv: running\n[Logs]\nStop — pressed by <@U7>"]
    assert not slack.ephemerals[CHAT]
    # a later edit of that message (live progress) keeps the pressed line
    assert ts is not None
    await edge.channel.edit_text(f"sl:{CHAT}", ts, "Run 3r6wfv: stopping")
    assert slack.shown(CHAT) == ["Run 3r6wfv: stopping\n[Logs]\nStop — pressed by <@U7>"]
    await slack.press(CHAT, "Logs", user="U7")
    await slack.wait_for("the second update", lambda: len(slack.updates[CHAT]) == 3)
    assert slack.shown(CHAT) == [
        "Run 3r6wfv: stopping\nStop — pressed by <@U7>\nLogs — pressed by <@U7>"
    ]
    await slack.wait_acked()


async def test_a_used_up_choice_loses_every_button(edge: Edge) -> None:
    slack = edge.slack
    yes, no = Button("Yes, stop", "tok_yes", "danger"), Button("No", "tok_no")
    await edge.channel.send_message(f"sl:{CHAT}", "Stop run 3r6wfv?", buttons=[yes, no])
    edge.inbox.result = PressResult(True, "No: nothing was done.", spent_all=True)
    await slack.press(CHAT, "No")
    await slack.wait_for("the update", lambda: slack.updates[CHAT])
    assert slack.shown(CHAT) == ["Stop run 3r6wfv?\nNo — pressed by <@U1>"]


async def test_a_press_that_did_not_act_gets_an_ephemeral_note_and_keeps_the_buttons(
    edge: Edge,
) -> None:
    slack = edge.slack
    edge.inbox.result = PressResult(False, "Not allowed here: this chat has no command rights.")
    root = await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv queued")
    assert root is not None
    await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv: done", buttons=[LOGS], thread=root)
    await slack.press(CHAT, "Logs", user="U9")
    await slack.wait_for("the note", lambda: slack.ephemerals[CHAT])
    assert slack.ephemerals[CHAT] == [
        {
            "user": "U9",
            "text": "Not allowed here: this chat has no command rights.",
            "thread_ts": root,
        }
    ]
    assert not slack.updates[CHAT]
    assert slack.shown(CHAT)[-1] == "Run 3r6wfv: done\n[Logs]"


async def test_a_redelivered_press_reaches_the_inbox_once_and_a_failing_inbox_stops_nothing(
    edge: Edge,
) -> None:
    slack = edge.slack
    await edge.channel.send_message(f"sl:{CHAT}", "Stop run 3r6wfv?", buttons=[STOP])
    edge.inbox.fail = True
    await slack.press(CHAT, "Stop")
    await edge.pressed(1)
    edge.inbox.fail = False
    await slack.push_command(CHAT, "status")
    assert await edge.received(1) == ["/status"]  # the loop read on
    await slack.press(CHAT, "Stop")  # a second press, a new action_ts: the inbox decides
    await edge.pressed(2)
    await slack.wait_acked()


async def test_a_long_text_with_buttons_is_split_at_the_section_limit_buttons_last(
    edge: Edge,
) -> None:
    text = "\n".join(f"line {i}: " + "x" * 60 for i in range(120))
    assert SECTION_LIMIT < len(text) < 3 * LIMIT
    first = await edge.channel.send_message(f"sl:{CHAT}", text, buttons=[STOP])
    messages = edge.slack.messages[CHAT]
    assert len(messages) >= 3 and first == messages[0]["ts"]
    assert all(len(m["text"]) <= SECTION_LIMIT for m in messages)
    assert [bool(m.get("blocks")) for m in messages] == [False] * (len(messages) - 1) + [True]
    assert "\n".join(m["text"] for m in messages).split("\n") == text.split("\n")


# ---- threads -------------------------------------------------------------------------


async def test_thread_replies_and_files_go_under_the_root(edge: Edge, tmp_path: Path) -> None:
    slack = edge.slack
    root = await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv queued", buttons=[STOP])
    assert root is not None
    await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv: step 10/100", thread=root)
    image = tmp_path / "loss.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    await edge.channel.send_image(f"sl:{CHAT}", image, caption="loss", thread=root)
    await edge.channel.send_text(f"sl:{CHAT}", "top level")
    assert [m["text"] for m in slack.in_thread(CHAT, root)] == ["Run 3r6wfv: step 10/100"]
    (upload,) = slack.files[CHAT]
    assert upload.thread_ts == root and upload.initial_comment == "loss"
    assert "thread_ts" not in slack.messages[CHAT][-1]


async def test_an_edit_slack_refuses_is_sent_anew_in_its_thread(edge: Edge) -> None:
    root = await edge.channel.send_message(f"sl:{CHAT}", "Run 3r6wfv queued")
    assert root is not None
    sent = await edge.channel.edit_text(f"sl:{CHAT}", "1.000009", "Run 3r6wfv: step 5", thread=root)
    (progress,) = edge.slack.in_thread(CHAT, root)
    assert progress["ts"] == sent and progress["text"] == "Run 3r6wfv: step 5"


async def test_a_slash_commands_answer_in_a_thread_shows_in_the_channel_too(edge: Edge) -> None:
    slack = edge.slack
    await edge.channel.aclose()  # one socket at a time: this test's channel answers
    channel = make_channel(slack)
    root: list[str] = []

    class Answering(RecordingInbox):
        async def deliver(self, message: IncomingMessage) -> None:
            await super().deliver(message)  # the orchestrator answers in the run's thread
            await channel.send_message(message.chat_id, "Run 3r6wfv: stopping", thread=root[0])

    inbox = Answering()
    await channel.start(inbox)
    try:
        sent = await channel.send_message(f"sl:{CHAT}", "Run 3r6wfv queued", buttons=[STOP])
        assert sent is not None
        root.append(sent)
        await slack.push_command(CHAT, "run stop 3r6wfv")
        await slack.wait_for("the answer", lambda: slack.in_thread(CHAT, sent))
        await channel.send_message(f"sl:{CHAT}", "Run 3r6wfv: step 10", thread=sent)  # the run's
    finally:
        await channel.aclose()
    answer, progress = slack.in_thread(CHAT, sent)
    assert [m.text for m in inbox.messages] == ["/run stop 3r6wfv"]
    assert answer.get("subtype") == "thread_broadcast"  # seen in the channel as well
    assert "subtype" not in progress


# ---- the socket ----------------------------------------------------------------------


async def test_envelopes_are_handled_in_the_order_they_arrived(edge: Edge) -> None:
    for i in range(30):
        if i % 3 == 0:
            await edge.slack.push_command(CHAT, f"debug last {i}")
        else:
            await edge.slack.push_message(DM, f"message {i}")
    texts = await edge.received(30)
    assert texts == [f"/debug last {i}" if i % 3 == 0 else f"message {i}" for i in range(30)]


async def test_a_reconnect_loses_no_envelope(edge: Edge) -> None:
    slack, channel = edge.slack, edge.channel
    before = await slack.push_message(DM, "before")
    await edge.received(1)
    await slack.drop_socket()
    await slack.wait_for("the channel to notice", lambda: not channel.is_connected)
    await slack.push_message(DM, "while down 1")
    await slack.push_command(CHAT, "status")
    await slack.push_message(DM, "while down 2")
    assert await edge.received(4) == ["before", "while down 1", "/status", "while down 2"]
    assert slack.connections == 2
    await slack.wait_for("reconnected", lambda: channel.is_connected)
    # Slack moving the app to a new socket, messages sent around the move
    await slack.send_disconnect("refresh_requested")
    for i in range(5):
        await slack.push_message(DM, f"around the move {i}")
    await slack.wait_for("a third connection", lambda: slack.connections == 3, timeout=10)
    texts = await edge.received(9)
    assert texts[4:] == [f"around the move {i}" for i in range(5)]
    await slack.redeliver(before)  # Slack retrying an event on the new connection
    await slack.push_message(DM, "after")
    assert (await edge.received(10))[-1] == "after"
    await slack.wait_acked()
    assert len(edge.inbox.messages) == 10  # a retried event is not handled twice


async def test_a_socket_that_fails_to_open_is_retried_with_a_new_url(edge: Edge) -> None:
    slack, channel = edge.slack, edge.channel
    slack.refuse_sockets = 2  # each refused try uses its URL's ticket up
    await slack.drop_socket()
    await slack.push_message(DM, "after the outage")
    assert await edge.received(1) == ["after the outage"]
    await slack.wait_for("connected", lambda: channel.is_connected)
    assert slack.refuse_sockets == 0 and slack.connections == 2
    assert slack.calls.count("apps.connections.open") >= 4  # start, and a URL per try


async def test_malformed_envelopes_are_skipped_and_the_loop_goes_on(edge: Edge) -> None:
    slack, channel = edge.slack, edge.channel
    hostile = [
        ("slash_commands", {"command": "/gpu"}),  # no channel, no user
        ("slash_commands", {"command": "/gpu", "channel_id": CHAT, "user_id": "U1", "text": 5}),
        ("interactive", {"type": "block_actions", "actions": "press:x"}),
        ("interactive", {"type": "block_actions", "actions": [{"value": "x"}], "user": {}}),
        ("interactive", {"type": "block_actions", "actions": [{"action_id": "press:x"}]}),
        ("interactive", "a string"),
        ("events_api", {"type": "event_callback", "event": {"type": "message", "channel": 5.5}}),
        ("hello_there", {}),
    ]
    for kind, payload in hostile:
        await slack.push_envelope(kind, payload)
    await slack.push_command(CHAT, "status")
    assert await edge.received(1) == ["/status"]
    assert channel.skipped >= 7 and channel.is_connected
    assert not edge.inbox.presses
    await slack.wait_acked()  # acked all the same: Slack does not send them again
