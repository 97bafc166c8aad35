"""A scheduled task acts with the rights its chat has when it fires, not when it was added.

The whole service runs (real orchestrator, scheduler, SQLite file, /chat and /task through
the command parser); time is a ManualClock the tests move, and `run_due()` is what the
timer calls. One test lets the real APScheduler timer fire.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from assistant.clock import ManualClock, SystemClock
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from storage.ids import short_random_id
from storage.tasks import Task, TaskRepo
from storage.timestamps import to_iso
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"  # an admin by configuration (tests/conftest.py)
ROGUE = "tg:7777"  # made admin from chat, then revoked


@dataclass
class Service:
    orch: Orchestrator
    channel: RecordingChannel
    clock: ManualClock

    async def say(self, chat: str, text: str) -> list[str]:
        return await self.channel.say(chat, text)

    async def one(self, chat: str, text: str) -> str:
        (reply,) = await self.say(chat, text)
        return reply

    async def tick(self, seconds: float) -> None:
        """Let `seconds` pass and fire what came due, as the timer would."""
        self.clock.advance(timedelta(seconds=seconds))
        await self.orch.services.scheduler.run_due()
        await self.orch.services.scheduler.wait_idle()
        await self.orch.services.log.flush()

    def sent_to(self, chat: str) -> list[str]:
        return [text for c, text in self.channel.sent if c == chat]

    @property
    def tasks(self) -> TaskRepo:
        return TaskRepo(self.orch.services.db)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], clock=clock) as orch:
        yield Service(orch, channel, clock)


def task_id(reply: str) -> str:
    match = re.search(r"Task (\w+) scheduled", reply)
    assert match is not None, reply
    return match.group(1)


async def stored_before_the_rule(service: Service, chat: str, every_s: int, what: str) -> Task:
    """A task as `/task add every ... <what>` stored it before <what> was refused there."""
    now = service.clock.now()
    task = Task(
        id=short_random_id(),
        chat_id=chat,
        kind="every",
        schedule=str(every_s),
        what=what,
        status="active",
        created_at=to_iso(now),
        next_run_at=to_iso(now + timedelta(seconds=every_s)),
    )
    await service.tasks.create(task)
    return task


async def test_a_revoked_chat_does_not_make_itself_admin_again(service: Service) -> None:
    """The reported attack: `/task add every 10s /chat admin tg:7777`, then a revoke."""
    await service.say(ADMIN, f"/chat admin {ROGUE}")
    task = await stored_before_the_rule(service, ROGUE, 10, f"/chat admin {ROGUE}")
    assert "may no longer command" in await service.one(ADMIN, f"/chat revoke {ROGUE}")

    await service.tick(12)

    listing = await service.one(ADMIN, "/chat list")
    assert f"{ROGUE} · no rights" in listing, listing
    row = await service.orch.services.db.fetchone(
        "SELECT is_admin, allowed FROM chats WHERE id = ?", (ROGUE,)
    )
    assert row is not None and (row["is_admin"], row["allowed"]) == (0, 0)
    paused = await service.tasks.get(task.id)
    assert paused is not None and paused.status == "paused" and paused.next_run_at is None
    assert paused.last_outcome == "refused"
    (run,) = await service.tasks.runs(task.id)
    assert run.state == "failed" and run.error is not None and "refused" in run.error
    (told,) = [t for t in service.sent_to(ADMIN) if f"Task {task.id}" in t]
    assert told.startswith(f"Task {task.id} of {ROGUE} was paused, not run: /chat is access")
    assert f"/task delete {task.id}" in told
    assert service.sent_to(ROGUE) == []

    # Even while the chat is an admin, /chat never runs from a task.
    await service.say(ADMIN, f"/chat admin {ROGUE}")
    await service.say(ADMIN, f"/chat revoke {ROGUE}")
    resumed = await service.say(ADMIN, f"/task resume {task.id}")
    assert "access management" in resumed[0] and "\n" not in resumed[0].split("\nUsage")[0]
    assert (await service.tasks.get(task.id)).status == "paused"  # type: ignore[union-attr]


async def test_a_command_task_is_paused_when_its_chat_loses_admin(service: Service) -> None:
    victim = task_id(await service.one(ADMIN, "/task add every 1h /status"))
    await service.say(ADMIN, f"/chat admin {ROGUE}")
    rogue = task_id(await service.one(ROGUE, f"/task add every 10s /task pause {victim}"))
    await service.say(ADMIN, f"/chat revoke {ROGUE}")
    before = len(service.sent_to(ROGUE))

    await service.tick(11)

    assert (await service.tasks.get(victim)).status == "active"  # type: ignore[union-attr]
    task = await service.tasks.get(rogue)
    assert task is not None and task.status == "paused" and task.last_outcome == "refused"
    (told,) = [t for t in service.sent_to(ADMIN) if f"Task {rogue} of" in t]
    action = re.search(r"/debug why (\w+)", told)
    assert action is not None
    assert told == (
        f"Task {rogue} of {ROGUE} was paused, not run: {ROGUE} is not an admin chat now,"
        " and a scheduled command needs one when it runs.\n"
        f"It does: /task pause {victim}\n"
        f"To run it again: give {ROGUE} the rights back (/chat admin {ROGUE}), then"
        f" /task resume {rogue}; /task delete {rogue} removes it."
        f" /debug why {action.group(1)} shows the chain."
    )
    assert len(service.sent_to(ROGUE)) == before  # a revoked chat is told nothing

    why = await service.one(ADMIN, f"/debug why {action.group(1)}")
    assert why.startswith(f"Why task_refused (FAILED: {ROGUE} is not an admin chat now"), why
    assert "event scheduled_task" in why

    listing = await service.one(ADMIN, "/task list")
    assert f"refused: {ROGUE} is not an admin chat now" in listing, listing

    # Later firings do not happen while it is paused.
    await service.tick(60)
    assert (await service.tasks.get(victim)).status == "active"  # type: ignore[union-attr]
    assert len(await service.tasks.runs(rogue)) == 1

    # Resuming needs the rights back first; with them, it acts again.
    refused = await service.one(ADMIN, f"/task resume {rogue}")
    assert refused.startswith(f"{ROGUE} is not an admin chat now"), refused
    await service.say(ADMIN, f"/chat admin {ROGUE}")
    assert f"Task {rogue} resumed" in await service.one(ADMIN, f"/task resume {rogue}")
    await service.tick(11)
    assert (await service.tasks.get(victim)).status == "paused"  # type: ignore[union-attr]


async def test_a_manual_run_of_such_a_task_is_refused_too(service: Service) -> None:
    victim = task_id(await service.one(ADMIN, "/task add every 1h /status"))
    await service.say(ADMIN, f"/chat admin {ROGUE}")
    rogue = task_id(await service.one(ROGUE, f"/task add every 1h /task delete {victim}"))
    await service.say(ADMIN, f"/chat revoke {ROGUE}")

    await service.say(ADMIN, f"/task run {rogue}")
    await service.orch.services.scheduler.wait_idle()

    assert await service.tasks.get(victim) is not None
    assert (await service.tasks.get(rogue)).status == "paused"  # type: ignore[union-attr]
    assert any(f"Task {rogue} of {ROGUE} was paused" in t for t in service.sent_to(ADMIN))


async def test_access_management_and_self_multiplying_tasks_are_never_scheduled(
    service: Service,
) -> None:
    cases = {
        f"/task add every 10s /chat admin {ROGUE}": "/chat is access management",
        "/task add every 1h /chat list": "/chat is access management",
        f'/task add once +1m "/Chat@assistant_bot admin {ROGUE}"': "/chat is access management",
        "/task add every 1h /task add every 1h /status": "a task may not add tasks",
        "/task add every 1h /task run abcd": "a task may not start tasks",
    }
    for text, expected in cases.items():
        reply = await service.one(ADMIN, text)
        problem = reply.split("\nUsage:\n")[0]
        assert problem.startswith(expected) and "\n" not in problem, (text, reply)
    assert await service.tasks.list_all() == []
    assert (
        await service.orch.services.db.scalar("SELECT count(*) FROM chats WHERE id = ?", (ROGUE,))
        == 0
    )


async def test_the_real_timer_fires_into_the_rights_check(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], clock=SystemClock()) as orch:
        (added,) = await channel.say(ADMIN, "/task add every 1h /status")
        victim = task_id(added)
        await channel.say(ADMIN, f"/chat admin {ROGUE}")
        (added,) = await channel.say(ROGUE, f"/task add once +1s /task pause {victim}")
        rogue = task_id(added)
        await channel.say(ADMIN, f"/chat revoke {ROGUE}")

        told = await channel.wait_for(f"Task {rogue} of {ROGUE} was paused", timeout=15)

        assert "is not an admin chat now" in told
        repo = TaskRepo(orch.services.db)
        assert (await repo.get(victim)).status == "active"  # type: ignore[union-attr]
        (run,) = await repo.runs(rogue)
        assert (run.trigger, run.state) == ("schedule", "failed")
