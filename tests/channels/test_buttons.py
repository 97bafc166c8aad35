"""Buttons and threads, platform by platform the same: a press is a command like a typed
one (rights at the moment of the press, in the chain, acting once), and a run's messages
go under the reply that launched it.

The platforms' own wiring (Telegram's callback queries, Slack's block actions, Discord's
components) is tested against their fakes in the channel tests; here a recording channel
that draws buttons and threads drives the real orchestrator, a real database and real
runs through the local-process runner.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from assistant.channels.local import LocalChannel
from assistant.channels.local_protocol import LOCAL_CHAT
from assistant.clock import ManualClock
from assistant.config import Settings
from assistant.local_client import Incoming, LocalClient
from assistant.orchestrator import Orchestrator
from assistant.reply import Action, Reply
from assistant.runs.process_runner import ProcessRunner
from storage.tasks import TaskRepo
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse
from tests.fakes.anthropic_server import Reply as Answer
from tests.support.model_service import model_settings
from tests.support.recording import ButtonChannel, RecordingChannel
from tests.support.run_flow import ADMIN, launch, step_of, wait_until

OTHER = "tg:2002"  # a chat without rights until granted
ADD = Action("Add", "/task add every 1h /status")


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, ButtonChannel]]:
    channel = ButtonChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        yield orch, channel


async def _rows(orch: Orchestrator, sql: str) -> list[tuple[object, ...]]:
    await orch.services.log.flush()
    return [tuple(r) for r in await orch.services.db.fetchall(sql)]


async def test_a_press_runs_its_command_once_and_is_in_the_chain(
    service: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = service
    await orch.send(ADMIN, Reply("Check every hour?", actions=(ADD,)), None)
    add = channel.button("Add")
    assert len(add.token) >= 16 and "task" not in add.token  # opaque to the platform

    first = await channel.press(ADMIN, add, sender="ann")
    second = await channel.press(ADMIN, add, sender="bob")

    assert first.acted and first.note.startswith("Add: ")
    assert not first.spent_all  # a lone action: only the pressed button goes
    assert not second.acted and "pressed by ann" in second.note
    tasks = await TaskRepo(orch.services.db).list_all()
    assert [t.what for t in tasks] == ["/status"]  # one task, not two
    events = await _rows(orch, "SELECT source, summary, raw_content FROM event_log")
    pressed = [e for e in events if e[0] == "button"]
    assert len(pressed) == 1, events
    assert pressed[0][1].startswith("Button from ann: /task add every 1h")
    assert json.loads(str(pressed[0][2]))["pressed"] is True
    actions = await _rows(orch, "SELECT action_type, target, ok FROM action_log")
    assert ("command", "/task", 1) in actions


async def test_a_press_in_a_chat_without_rights_does_nothing(
    service: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = service
    await orch.services.access.load()
    await orch.send(ADMIN, Reply("Check every hour?", actions=(ADD,)), None)
    add = channel.button("Add")
    before = await _rows(orch, "SELECT id FROM event_log")

    # The same token pressed from another chat (a forwarded message): not its chat, and
    # that chat has no rights anyway.
    result = await channel.press(OTHER, add)

    assert not result.acted and "Not allowed" in result.note
    assert await TaskRepo(orch.services.db).list_all() == []
    assert await _rows(orch, "SELECT id FROM event_log") == before
    # The button is still usable where it was drawn.
    assert (await channel.press(ADMIN, add)).acted


async def test_a_press_after_the_chat_lost_its_rights_does_nothing(
    service: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = service
    await channel.say(ADMIN, f"/chat admin {OTHER}")
    await orch.send(OTHER, Reply("Check every hour?", actions=(ADD,)), None)
    add = channel.button("Add")
    await channel.say(ADMIN, f"/chat revoke {OTHER}")

    result = await channel.press(OTHER, add)

    assert not result.acted and "Not allowed" in result.note
    assert await TaskRepo(orch.services.db).list_all() == []


async def test_the_menus_follow_the_registry_and_the_rights(
    service: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = service
    registry = list(orch.router.commands)
    (at_start,) = channel.menus
    assert at_start == (["local:console", ADMIN], registry)  # exactly the registry's

    await channel.say(ADMIN, f"/chat admin {OTHER}")
    granted = channel.menus[-1]
    await channel.say(ADMIN, f"/chat revoke {OTHER}")
    revoked = channel.menus[-1]

    assert OTHER in granted[0] and granted[1] == registry
    assert OTHER not in revoked[0]


async def test_a_choice_is_used_by_its_first_press(
    service: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = service
    no = Action("No", "/help")
    await orch.send(ADMIN, Reply("Add it?", actions=(ADD, no), choice=True), None)

    no_pressed = await channel.press(ADMIN, channel.button("No"))
    late = await channel.press(ADMIN, channel.button("Add"))

    assert no_pressed.acted and no_pressed.spent_all  # the channel takes both off
    assert not late.acted and "a choice here was pressed" in late.note
    assert await TaskRepo(orch.services.db).list_all() == []


async def test_a_forged_or_expired_button_says_so(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 12, 2, 12, 0, tzinfo=UTC))
    channel = ButtonChannel()
    async with Orchestrator(settings, channels=[channel], clock=clock) as orch:
        await orch.send(ADMIN, Reply("Check every hour?", actions=(ADD,)), None)
        forged = await channel.press(ADMIN, channel.button("Add").__class__("Add", "x" * 16))
        clock.advance(timedelta(days=8))
        expired = await channel.press(ADMIN, channel.button("Add"))

        assert not forged.acted and "no longer valid" in forged.note
        assert not expired.acted and "expired" in expired.note
        assert "/task add every 1h /status" in expired.note  # what to type instead
        assert await TaskRepo(orch.services.db).list_all() == []

        clock.advance(timedelta(days=21))  # four weeks: the pruner forgets it
        await orch.pruner.prune()
        assert await orch.services.db.scalar("SELECT count(*) FROM buttons") == 0
        gone = await channel.press(ADMIN, channel.button("Add"))
        assert not gone.acted and "no longer valid" in gone.note


async def test_a_channel_without_buttons_lists_the_commands(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await orch.send(ADMIN, Reply("Check every hour?", actions=(ADD,)), None)
    (text,) = [t for _, t in channel.sent]
    assert text == "Check every hour?\n\n→ /task add every 1h /status"


@pytest.fixture
async def runs(settings: Settings) -> AsyncIterator[tuple[Orchestrator, ButtonChannel]]:
    run_settings = settings.model_copy(
        update={"gpus": "0", "monitor_interval_s": 0.1, "stop_grace_s": 30.0}
    )
    channel = ButtonChannel()
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
        yield orch, channel


async def test_a_runs_messages_go_under_its_launch_and_offer_its_next_steps(
    runs: tuple[Orchestrator, ButtonChannel],
) -> None:
    orch, channel = runs
    run_id = await launch(channel, "/run train gpt steps=2000 gpus=0 sleep_per_step=0.05")
    launched = next(d for d in channel.drawn if d.text.startswith(f"Run {run_id}:"))
    assert [b.label for b in launched.buttons] == ["Stop", "Pause", "Logs"]
    assert launched.thread is None  # it opens the thread
    await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 3, timeout=240)

    stop = channel.button("Stop", under=f"Run {run_id}:")
    first = await channel.press(ADMIN, stop, sender="ann")
    # A second stop button (a copy of the launch message's) pressed: it does not kill.
    await orch.send(ADMIN, Reply("again", actions=(Action("Stop", f"/run stop {run_id}"),)), None)
    again = await channel.press(ADMIN, channel.button("Stop", under="again"), sender="bob")

    assert first.acted and "stopping" in first.note
    assert again.acted  # it ran, and said so, without escalating
    assert any(f"run {run_id} is already stopping" in t for _, t in channel.sent)
    report = await channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=120)
    ended = next(d for d in channel.drawn if d.text == report)
    assert ended.thread == launched.id  # under the launch reply
    assert [b.label for b in ended.buttons] == ["Logs", "Retry"]
    assert channel.image_threads and set(channel.image_threads) == {launched.id}
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.wanted != "kill"  # the second press did not kill it
    stopped = [d for d in channel.drawn if d.text.startswith(f"Run {run_id}: stopping")]
    assert stopped and stopped[0].thread == launched.id

    logs = await channel.press(ADMIN, channel.button("Logs", under=report))
    shown = next(d for d in reversed(channel.drawn) if d.text.startswith(f"Run {run_id}, last"))
    assert logs.acted and shown.thread == launched.id  # a pressed answer stays in the thread
    drawn_before = len(channel.drawn)
    (typed,) = await channel.say(ADMIN, f"/run logs {run_id}")
    assert typed.startswith(f"Run {run_id}, last")
    assert len(channel.drawn) == drawn_before  # plain send_text: no thread, where it was typed

    retry = await channel.press(ADMIN, channel.button("Retry", under=report))
    assert retry.acted and f"retries {run_id}" in retry.note


async def test_the_local_console_offers_numbered_choices(settings: Settings) -> None:
    """`assistant chat` shows "[1] Add" and typing 1 presses it, through the real client."""
    local = LocalChannel(settings.endpoint_path, ack_wait_s=0.5)
    async with Orchestrator(settings, channels=[local]) as orch:
        async with LocalClient(settings.endpoint_path) as client:
            stream = client.incoming()
            await orch.send(LOCAL_CHAT, Reply("Check hourly?", actions=(ADD,)), None)
            shown = await anext(stream)
            await client.send("1")
            first = await _until_settled(stream)
            await client.send("1")
            again = await _until_settled(stream)
            await client.send("7")  # not offered: plain text, stored for the agent
            plain = await _until_settled(stream)
        tasks = await TaskRepo(orch.services.db).list_all()

    assert shown.text == "Check hourly?\n[1] Add"
    assert [t.what for t in tasks] == ["/status"]
    assert any("/status" in text for text in first), first
    assert any("Already done" in text for text in again), again
    assert not any("Already done" in text for text in plain), plain


async def _until_settled(stream: AsyncIterator[Incoming]) -> list[str]:
    texts = []
    async for item in stream:
        if item.kind == "settled":
            return texts
        texts.append(item.text)
    raise AssertionError("the connection closed")


async def test_the_models_destructive_call_becomes_a_yes_no_choice(settings: Settings) -> None:
    """The model asks to delete a task without the user's yes: the chat gets a Yes / No
    choice; the model is told so; Yes (pressed by a person) deletes it, once."""
    channel = ButtonChannel()
    async with FakeAnthropic() as fake:
        model = model_settings(settings, fake)
        async with Orchestrator(model, channels=[channel]) as orch:
            (added,) = await channel.say(ADMIN, "/task add every 1h /status")
            task_id = added.split()[1]
            fake.add(
                Answer([ToolUse("tu_1", "delete_task", {"task_id": task_id, "confirmed": False})]),
                Answer("I put a button for it in the chat."),
            )
            said = await channel.say(ADMIN, "delete that task")
            tasks = TaskRepo(orch.services.db)
            assert len(await tasks.list_all()) == 1  # nothing done on the model's word

            yes = channel.button(f"Yes, delete task {task_id} and its run history")
            pressed = await channel.press(ADMIN, yes)
            late_no = await channel.press(ADMIN, channel.button("No", under="Confirm: delete"))
            remaining = await tasks.list_all()

    assert said == [
        f"Confirm: delete task {task_id} and its run history?",
        "I put a button for it in the chat.",
    ]
    result = fake.requests[-1].body["messages"][-1]["content"][0]
    assert result["content"].startswith(f"Not done yet: this would delete task {task_id}")
    assert "shown a button" in result["content"]
    assert pressed.acted and remaining == []
    assert not late_no.acted  # the choice was used by Yes
