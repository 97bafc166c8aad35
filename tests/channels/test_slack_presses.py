"""Slack's slash command and buttons end to end: a real Orchestrator, the real slack-bolt
AsyncApp and slack_sdk clients, and the local Slack (Web API + Socket Mode). A slash
command is a typed command; a press is a command like a typed one, checked for the chat's
rights when pressed, acting once, recorded in the chain; a run's messages go in the thread
of the message that launched it."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from assistant.channels.slack import SlackChannel
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.reply import Action, Reply
from assistant.runs.process_runner import ProcessRunner
from commands import build_router
from commands.registry import CommandContext, ParsedCommand
from tests.fakes.slack_server import FakeSlack

ADMIN = "C0123"
GROUP = "C0456"
STRANGER = "D0STR"
RUN_ID = re.compile(r"Run ([0-9a-z]{6}):")
NOT_ALLOWED = "Not allowed here: this chat has no command rights."
ADD_TASK = Action("Remind me", '/task add once +2h "look at the loss"', "primary")
Json = dict[str, Any]


@dataclass
class Live:
    orch: Orchestrator
    slack: FakeSlack
    channel: SlackChannel

    async def command(self, channel: str, text: str, **kwargs: Any) -> str:
        """Type `/gpu <text>` in an admin chat; the reply (all its pieces), once handled."""
        before = len(self.slack.messages.get(channel, []))
        await self.slack.push_command(channel, text, **kwargs)
        await self.slack.wait_messages(channel, before + 1, timeout=30)
        await self.channel.drained()  # a long reply's later pieces
        await self.orch.settled(f"sl:{channel}")
        return "\n".join(self.slack.shown(channel)[before:])

    async def ignored(self, channel: str, text: str, **kwargs: Any) -> list[str]:
        """Type `/gpu <text>` in a chat without rights; what came back once handled."""
        before = len(self.slack.messages.get(channel, []))
        await self.slack.push_command(channel, text, **kwargs)
        await self.barrier(channel)
        return self.slack.shown(channel)[before:]

    async def barrier(self, *chats: str) -> None:
        """Everything sent before is handled: envelopes are handled in order, so once a
        later /status in the admin chat is answered, the earlier ones were too."""
        before = len(self.slack.messages.get(ADMIN, []))
        await self.slack.push_message(ADMIN, "/status", channel_type="channel")
        await self.slack.wait_for(
            "the barrier's /status",
            lambda: any("Uptime:" in t for t in self.slack.texts(ADMIN)[before:]),
            timeout=30,
        )
        for chat in (ADMIN, *chats):
            await self.orch.settled(f"sl:{chat}")

    async def offer(self, channel: str, *actions: Action) -> Json:
        """A message in `channel` with these actions as buttons, as any reply would carry."""
        assert await self.orch.send(f"sl:{channel}", Reply("What next?", actions=actions), None)
        return self.slack.messages[channel][-1]

    async def press(
        self, channel: str, label: str, user: str = "U1", seen: Json | None = None
    ) -> str:
        """Press a button; once handled to the end, the note the presser saw, or "" where
        the message was updated (the press acted)."""
        updates, notes = len(self.slack.updates[channel]), len(self.slack.ephemerals[channel])
        await self.slack.press(channel, label, user=user, seen=seen)
        await self.slack.wait_for(
            f"the answer to {label}",
            lambda: (
                len(self.slack.updates[channel]) > updates
                or len(self.slack.ephemerals[channel]) > notes
            ),
            timeout=30,
        )
        await self.channel.drained()
        await self.orch.settled(f"sl:{channel}")
        if len(self.slack.ephemerals[channel]) > notes:
            return str(self.slack.ephemerals[channel][-1]["text"])
        return ""

    async def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        await self.orch.services.log.flush()
        rows = await self.orch.services.db.fetchall(sql, args)
        return [tuple(row) for row in rows]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    settings = settings.model_copy(
        update={"admin_chats": (f"sl:{ADMIN}",), "monitor_interval_s": 0.1}
    )
    async with FakeSlack() as slack:
        slack.add_channel(ADMIN, "ml-ops")
        slack.add_channel(GROUP, "team")
        slack.add_channel(STRANGER, is_im=True)
        channel = SlackChannel(slack.bot_token, slack.app_token, api_url=slack.api_url)
        channel.ping_interval_s = 1.0
        runner = ProcessRunner(settings.runs_dir)
        async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
            yield Live(orch, slack, channel)


async def tasks(live: Live) -> int:
    return int(await live.orch.services.db.scalar("SELECT count(*) FROM tasks") or 0)


async def commands(live: Live) -> list[tuple[object, ...]]:
    return await live.rows(
        "SELECT e.summary, a.target FROM event_log e JOIN action_log a"
        " ON a.triggered_by = e.id WHERE a.action_type = 'command' ORDER BY a.id"
    )


# ---- the slash command ---------------------------------------------------------------


async def test_the_slash_command_is_answered_in_the_chat_like_a_typed_command(
    live: Live,
) -> None:
    status = await live.command(ADMIN, "status")
    assert "Uptime:" in status
    help_text = await live.command(ADMIN, "")
    assert "/status" in help_text and "/run" in help_text
    added = await live.command(ADMIN, 'task add once +2h "look at the loss"')
    assert "once" in added.lower() and await tasks(live) == 1
    (summary, target), *_ = await commands(live)
    assert str(summary).startswith('Command from U1: /task add once +2h "look at the loss"')
    assert target == "/task"


async def test_the_slash_command_from_a_chat_without_rights_does_nothing(live: Live) -> None:
    assert await live.ignored(STRANGER, 'task add once +2h "x"', channel_type="im") == []
    assert await live.ignored(GROUP, "status") == []
    assert await tasks(live) == 0 and await commands(live) == []


# ---- presses -------------------------------------------------------------------------


async def test_a_press_runs_its_command_once_in_the_chain(live: Live) -> None:
    offer = await live.offer(ADMIN, ADD_TASK, Action("Status", "/status"))
    section, actions = offer["blocks"]
    assert section["text"]["text"] == "What next?" and "/task add" not in offer["text"]
    assert [(e["text"]["text"], e.get("style")) for e in actions["elements"]] == [
        ("Remind me", "primary"),
        ("Status", None),
    ]
    assert await live.press(ADMIN, "Remind me") == ""
    assert await tasks(live) == 1
    reply = live.slack.messages[ADMIN][-1]
    assert reply["ts"] != offer["ts"] and "once" in reply["text"].lower()
    assert live.slack.shown(ADMIN)[0] == "What next?\n[Status]\nRemind me — pressed by <@U1>"
    ((summary, target),) = await commands(live)
    assert str(summary).startswith("Button from U1: /task add once")
    assert target == "/task"


async def test_a_slow_commands_press_is_acked_before_it_runs(settings: Settings) -> None:
    settings = settings.model_copy(update={"admin_chats": (f"sl:{ADMIN}",)})
    acked_first: list[bool] = []
    async with FakeSlack() as slack:

        async def slow(ctx: CommandContext, cmd: ParsedCommand) -> str:
            """Runs only once Slack has its ack for every envelope (the press's too)."""
            try:
                await slack.wait_acked(timeout=10)
                acked_first.append(True)
            except AssertionError:
                acked_first.append(False)
            return "Slow: finished"

        router = build_router()
        router.register(slow, "slow", usage="/slow", summary="waits for Slack's acks")
        slack.add_channel(ADMIN, "ml-ops")
        channel = SlackChannel(slack.bot_token, slack.app_token, api_url=slack.api_url)
        async with Orchestrator(settings, channels=[channel], router=router) as orch:
            live = Live(orch, slack, channel)
            await live.offer(ADMIN, Action("Slow", "/slow"))
            assert await live.press(ADMIN, "Slow") == ""
            assert acked_first == [True] and slack.texts(ADMIN)[-1] == "Slow: finished"


async def test_a_button_pressed_twice_acts_once(live: Live) -> None:
    offer = copy.deepcopy(await live.offer(ADMIN, ADD_TASK))
    assert await live.press(ADMIN, "Remind me") == ""
    replies = len(live.slack.messages[ADMIN])
    # the second tap, by someone whose client still showed the button
    second = await live.press(ADMIN, "Remind me", user="U7", seen=offer)
    assert second == "Already done: this button was pressed by U1 earlier."
    assert await tasks(live) == 1 and len(live.slack.messages[ADMIN]) == replies
    assert len(await commands(live)) == 1


async def test_a_press_from_a_chat_without_rights_does_nothing(live: Live) -> None:
    await live.slack.push_message(STRANGER, "hello?")  # known to the assistant, no rights
    await live.barrier(STRANGER)
    await live.offer(STRANGER, ADD_TASK)  # a button there (as if drawn earlier)
    assert await live.press(STRANGER, "Remind me", user="U9") == NOT_ALLOWED
    assert await tasks(live) == 0 and len(live.slack.messages[STRANGER]) == 1
    assert live.slack.shown(STRANGER) == ["What next?\n[Remind me]"]
    assert await commands(live) == []


async def test_a_press_after_the_chat_lost_its_rights_does_nothing(live: Live) -> None:
    granted = await live.command(ADMIN, f"chat admin sl:{GROUP}")
    assert "is an admin chat now" in granted
    await live.offer(GROUP, ADD_TASK)  # drawn while the channel may command
    revoked = await live.command(ADMIN, f"chat revoke sl:{GROUP}")
    assert "may no longer command" in revoked
    assert await live.press(GROUP, "Remind me") == NOT_ALLOWED
    assert await tasks(live) == 0 and len(live.slack.messages[GROUP]) == 1
    # given back, the same button acts: it was never used
    await live.command(ADMIN, f"chat admin sl:{GROUP}")
    assert await live.press(GROUP, "Remind me") == ""
    assert await tasks(live) == 1


# ---- typed in a thread ---------------------------------------------------------------


async def test_a_command_typed_in_a_thread_is_answered_in_that_thread(live: Live) -> None:
    slack = live.slack
    root = await slack.push_message(ADMIN, "the loss looks odd", channel_type="channel")
    await slack.push_message(ADMIN, "/status", channel_type="channel", thread_ts=root)
    await slack.wait_messages(ADMIN, 1, timeout=30)
    await live.orch.settled(f"sl:{ADMIN}")
    (answer,) = slack.messages[ADMIN]
    assert "Uptime:" in answer["text"] and answer.get("thread_ts") == root
    assert answer.get("subtype") != "thread_broadcast"  # typed there: seen there
    # free text addressed to the bot in the thread: the model's answer goes there too
    await slack.push_message(
        ADMIN, f"<@{slack.bot_user}> is it fine?", channel_type="channel", thread_ts=root
    )
    await slack.wait_messages(ADMIN, 2, timeout=30)
    assert [m.get("thread_ts") for m in slack.messages[ADMIN]] == [root, root]


async def test_a_thread_of_a_chat_without_rights_gets_nothing(live: Live) -> None:
    slack = live.slack
    root = await slack.push_message(GROUP, "a question", channel_type="channel")
    await slack.push_message(
        GROUP, '/task add once +2h "x"', channel_type="channel", thread_ts=root
    )
    await live.barrier(GROUP)
    assert slack.messages.get(GROUP, []) == [] and await tasks(live) == 0
    assert await commands(live) == []  # nothing ran (the barrier's /status is not traced)


async def test_a_run_launched_in_a_thread_tells_its_story_there(live: Live) -> None:
    slack = live.slack
    root = await slack.push_message(ADMIN, "trying the classifier", channel_type="channel")
    await slack.push_message(
        ADMIN, "/run train classifier steps=10 gpus=0", channel_type="channel", thread_ts=root
    )
    await slack.wait_messages(ADMIN, 1, timeout=30)
    launch = slack.messages[ADMIN][0]
    match = RUN_ID.search(launch["text"])
    assert match, launch["text"]
    run_id = match.group(1)
    assert launch.get("thread_ts") == root  # Slack starts no thread in a thread
    report = await wait_for(live, f"Run {run_id} (classifier) succeeded")
    assert report.get("thread_ts") == root
    assert all(m.get("thread_ts") == root for m in slack.messages[ADMIN])
    # Logs, pressed under the launch message, answers in the same thread
    assert await live.press(ADMIN, "Logs", seen=launch) == ""
    logs = slack.messages[ADMIN][-1]
    assert logs["text"].startswith(f"Run {run_id}, last ") and logs.get("thread_ts") == root


# ---- a run's thread ------------------------------------------------------------------


async def test_a_run_launched_by_slash_command_reports_in_the_thread_of_its_launch(
    live: Live,
) -> None:
    slack = live.slack
    launch = await live.command(ADMIN, "run train classifier steps=40 gpus=0")
    match = RUN_ID.search(launch)
    assert match, launch
    run_id = match.group(1)
    root = next(m for m in slack.messages[ADMIN] if RUN_ID.search(m["text"] or ""))
    labels = {e["text"]["text"]: e.get("style") for e in root["blocks"][-1]["elements"]}
    assert labels["Stop"] == "danger" and "Logs" in labels
    report = await wait_for(live, f"Run {run_id} (classifier) succeeded")
    assert report.get("thread_ts") == root["ts"]
    await slack.wait_for("the report's plot", lambda: slack.files[ADMIN], timeout=30)
    (plot, *_) = slack.files[ADMIN]
    assert plot.thread_ts == root["ts"]
    later = [m for m in slack.messages[ADMIN] if float(m["ts"]) > float(root["ts"])]
    assert later and all(m.get("thread_ts") == root["ts"] for m in later)
    # Logs, pressed under the launch message, runs /run logs once
    assert await live.press(ADMIN, "Logs", seen=root) == ""
    assert slack.messages[ADMIN][-1]["text"].startswith(f"Run {run_id}, last ")
    launch_shown = slack.shown(ADMIN)[0]
    assert launch_shown.endswith("[Stop] [Pause]\nLogs — pressed by <@U1>"), launch_shown


async def wait_for(live: Live, needle: str, timeout: float = 240) -> Json:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for message in live.slack.messages.get(ADMIN, []):
            if needle in message["text"]:
                return message
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {needle!r} in {live.slack.texts(ADMIN)}")
