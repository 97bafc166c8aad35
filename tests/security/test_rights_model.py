"""The model never manages access, and what it schedules obeys what it may do directly.

The model is the fake Messages API server driven through the real SDK; the orchestrator,
scheduler, commands and SQLite file are the real ones. Time is a ManualClock.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assistant.agent_tools import TOOLS
from assistant.clock import ManualClock
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from storage.tasks import TaskRepo
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse
from tests.fakes.anthropic_server import Reply as Answer
from tests.support.model_service import model_settings
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
ROGUE = "tg:7777"
OUTSIDER = "tg:6666"


@dataclass
class Service:
    orch: Orchestrator
    channel: RecordingChannel
    clock: ManualClock
    fake: FakeAnthropic

    async def say(self, text: str, chat: str = ADMIN) -> list[str]:
        return await self.channel.say(chat, text)

    async def tick(self, seconds: float) -> None:
        self.clock.advance(timedelta(seconds=seconds))
        await self.orch.services.scheduler.run_due()
        await self.orch.services.scheduler.wait_idle()
        await self.orch.services.log.flush()

    async def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        await self.orch.services.log.flush()
        return int(await self.orch.services.db.scalar(sql, params))

    def last_tool_result(self) -> dict[str, Any]:
        last = self.fake.requests[-1].body["messages"][-1]
        assert last["role"] == "user" and isinstance(last["content"], list)
        (result,) = last["content"]
        return dict(result)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    async with FakeAnthropic() as fake:
        channel = RecordingChannel()
        async with Orchestrator(
            model_settings(settings, fake), channels=[channel], clock=clock
        ) as orch:
            yield Service(orch, channel, clock, fake)


def task_id(reply: str) -> str:
    match = re.search(r"Task (\w+) scheduled", reply)
    assert match is not None, reply
    return match.group(1)


@pytest.mark.parametrize(
    "what",
    [f"/chat admin {OUTSIDER}", f"/CHAT@assistant_bot allow {OUTSIDER}", "/chat list"],
)
async def test_the_model_cannot_schedule_access_management(service: Service, what: str) -> None:
    service.fake.add(
        Answer([ToolUse("tu_1", "add_task", {"kind": "every", "schedule": "1h", "what": what})]),
        Answer("I can't do that."),
    )
    assert await service.say("give tg:6666 admin rights every hour") == ["I can't do that."]

    result = service.last_tool_result()
    assert result.get("is_error") is True
    assert "/chat is access management" in result["content"]
    assert await service.count("SELECT count(*) FROM tasks") == 0
    assert await service.count("SELECT count(*) FROM chats WHERE id = ?", (OUTSIDER,)) == 0


def test_no_tool_manages_access() -> None:
    for tool in TOOLS.values():
        assert not re.search(r"chat|admin|allow|revoke|grant|access", tool.name), tool.name
        assert "/chat" not in f"{tool.description} {tool.properties}", tool.name


@pytest.mark.parametrize(
    ("what", "effect"),
    [
        ("/run stop ab12", "stop run ab12 for good"),
        ("/task delete {victim}", "delete task {victim} and its run history"),
    ],
)
async def test_scheduling_a_destructive_command_needs_the_same_confirmation(
    service: Service, what: str, effect: str
) -> None:
    (added,) = await service.say("/task add every 1h /status")
    victim = task_id(added)
    what, effect = what.format(victim=victim), effect.format(victim=victim)
    call = {"kind": "once", "schedule": "+1h", "what": what}
    service.fake.add(
        Answer([ToolUse("tu_1", "add_task", call)]),
        Answer("Shall I?"),
    )
    assert await service.say("schedule it for later") == ["Shall I?"]
    result = service.last_tool_result()
    assert result["content"] == (
        f"Not done: this would schedule {what}, which would {effect}. Ask the user to"
        " confirm, then call add_task again with confirmed=true."
    )
    assert await service.count("SELECT count(*) FROM tasks") == 1  # the victim only

    service.fake.add(
        Answer([ToolUse("tu_2", "add_task", {**call, "confirmed": False})]),
        Answer("Still not."),
    )
    await service.say("hmm")
    assert service.last_tool_result()["content"].startswith("Not done: this would schedule")
    assert await service.count("SELECT count(*) FROM tasks") == 1

    service.fake.add(
        Answer([ToolUse("tu_3", "add_task", {**call, "confirmed": True})]),
        Answer("Scheduled."),
    )
    assert await service.say("yes, do it") == ["Scheduled."]
    result = service.last_tool_result()
    assert not result.get("is_error") and "scheduled" in result["content"]
    assert await service.count("SELECT count(*) FROM tasks WHERE what = ?", (what,)) == 1


async def test_the_model_cannot_schedule_tasks_that_multiply(service: Service) -> None:
    call = {"kind": "every", "schedule": "10s", "what": "/task add every 10s /status"}
    service.fake.add(Answer([ToolUse("tu_1", "add_task", call)]), Answer("No."))
    await service.say("keep adding status tasks")
    result = service.last_tool_result()
    assert result.get("is_error") is True and "a task may not add tasks" in result["content"]
    assert await service.count("SELECT count(*) FROM tasks") == 0


async def test_a_prompt_task_acts_with_the_rights_its_chat_has_when_it_fires(
    service: Service,
) -> None:
    await service.say(f"/chat admin {ROGUE}")
    (added,) = await service.say("/task add every 10s stop every run that is slow", ROGUE)
    rogue = task_id(added)

    # Still admin when it fires: the model gets its tools.
    service.fake.add(Answer("Nothing is slow."))
    await service.tick(10)
    assert "tools" in service.fake.requests[-1].body

    # Talking, but no command rights: the prompt runs, the model gets no tools.
    await service.say(f"/chat revoke {ROGUE}")
    await service.say(f"/chat allow {ROGUE}")
    service.fake.add(Answer([ToolUse("tu_1", "stop_run", {"run_id": "ab12", "confirmed": True})]))
    service.fake.add(Answer("I can't here."))
    await service.tick(10)
    body = service.fake.requests[-2].body  # the call the tool_use answered
    assert "tools" not in body
    assert "no command rights" in body["system"][0]["text"]
    assert (
        await service.count("SELECT count(*) FROM tool_call_log WHERE tool_name = 'stop_run'") == 0
    )

    # No rights at all: the model is not called, the task is paused, the admins told.
    calls = len(service.fake.requests)
    await service.say(f"/chat revoke {ROGUE}")
    await service.tick(10)
    assert len(service.fake.requests) == calls
    task = await TaskRepo(service.orch.services.db).get(rogue)
    assert task is not None and task.status == "paused" and task.last_outcome == "refused"
    told = [t for c, t in service.channel.sent if c == ADMIN and f"Task {rogue} of" in t]
    assert len(told) == 1
    assert told[0].startswith(
        f"Task {rogue} of {ROGUE} was paused, not run: {ROGUE} may not talk to the assistant"
        " now, and a scheduled prompt needs that when it runs."
    )
    assert f"(/chat allow {ROGUE})" in told[0]


async def test_a_scheduled_prompt_cannot_confirm_a_destructive_tool_call(
    service: Service,
) -> None:
    """Nobody is there to say yes when a prompt task fires: the model's own yes is not one."""
    (added,) = await service.say("/task add every 10s stop run ab12 if it is slow")
    task_id(added)
    service.fake.add(Answer([ToolUse("tu_1", "stop_run", {"run_id": "ab12", "confirmed": True})]))
    service.fake.add(Answer("Could not stop it."))
    await service.tick(10)
    result = service.last_tool_result()
    assert result["content"] == (
        "Not done: this would stop run ab12 for good, and a scheduled prompt has nobody to"
        " confirm it. Say so in your reply; a person can do it, or schedule the command"
        " itself with /task add."
    )

    # The same call in a live chat, confirmed, does reach the command (no such run here).
    service.fake.add(Answer([ToolUse("tu_2", "stop_run", {"run_id": "ab12", "confirmed": True})]))
    service.fake.add(Answer("No such run."))
    await service.say("yes, stop ab12 now")
    live = service.last_tool_result()
    assert live.get("is_error") is True and "ab12" in live["content"]
    assert "Not done" not in live["content"]
