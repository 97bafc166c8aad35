"""One test per weak spot seen in the reference design and its users' reports.

Scheduled tasks running twice after restarts is covered at the scheduler level in
tests/scheduler/test_scheduler.py (double trigger, two schedulers on one file, restart
mid-run); a timestamp cursor skipping messages in tests/storage/test_messages.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from assistant.clock import ManualClock
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from storage.messages import StoredMessage
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class RecordingAgent:
    """An `Agent` (the injected interface) that remembers each batch it was given."""

    description = "recording agent"

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def respond(
        self, chat_id: str, messages: Sequence[StoredMessage], event_id: int | None
    ) -> list[str]:
        self.batches.append([m.text for m in messages])
        if self.fail:
            raise RuntimeError("model overloaded (529)")
        return [f"answer to {messages[-1].text}"]


async def test_the_tool_call_table_fills_in_ordinary_use(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say(ADMIN, "/task add every 1h /status")
        await orch.services.log.flush()
        rows = await orch.services.db.fetchall(
            "SELECT t.tool_name, t.ok, a.action_type FROM tool_call_log t"
            " JOIN action_log a ON a.id = t.action_id ORDER BY t.id"
        )
        (why,) = await channel.say(ADMIN, "/debug why")
    assert [(r["tool_name"], r["ok"], r["action_type"]) for r in rows] == [
        ("task.add", 1, "command"),
        ("telegram.send", 1, "message_sent"),
    ]
    assert re.search(r"tool telegram\.send · \d+\.\d ms · ok", why)


async def test_failures_are_columns_not_words(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        # An ordinary reply that merely mentions "error" is not a failure ...
        await channel.say(ADMIN, "/task add once +1h print the error rate")
        # ... and a refused command whose message never says "error" is one.
        await channel.say(ADMIN, "/task pause zzzzzzzz")
        await orch.services.log.flush()
        (report,) = await channel.say(ADMIN, "/debug report")
    failed_section = report.split("Recent failed actions")[1]
    assert "no task with id starting 'zzzzzzzz'" in failed_section
    assert "error rate" not in failed_section
    assert "command 2 (1 failed)" in report


async def test_failures_reach_the_user(settings: Settings) -> None:
    channel = RecordingChannel()
    agent = RecordingAgent(fail=True)
    async with Orchestrator(settings, channels=[channel], agent=agent) as orch:
        (reply,) = await channel.say(ADMIN, "summarise last night's run")
        await orch.services.log.flush()
        failed = await orch.services.db.fetchone(
            "SELECT error FROM action_log WHERE action_type = 'agent_reply'"
        )
    assert reply.startswith("Sorry, I could not answer that: model overloaded (529)")
    assert failed is not None and failed["error"] == "model overloaded (529)"


async def test_a_failing_scheduled_task_reports_to_its_chat(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 11, 23, 8, tzinfo=UTC))
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], clock=clock) as orch:
        await channel.say(ADMIN, "/task add every 1h /debug event nope")
        clock.advance(timedelta(hours=1))
        assert await orch.services.scheduler.run_due() == 1
        await orch.services.scheduler.wait_idle()
    last = channel.sent[-1][1]
    assert last.startswith("Task ") and " failed: No event or action id starts with 'nope'" in last


async def test_a_scheduled_prompt_gets_its_own_context(settings: Settings) -> None:
    clock = ManualClock(datetime(2026, 11, 23, 8, tzinfo=UTC))
    channel = RecordingChannel()
    agent = RecordingAgent()
    async with Orchestrator(settings, channels=[channel], agent=agent, clock=clock) as orch:
        await channel.say(ADMIN, "earlier chat message")
        await channel.say(ADMIN, "/task add every 1h how did the night run go?")
        clock.advance(timedelta(hours=1))
        await orch.services.scheduler.run_due()
        await orch.services.scheduler.wait_idle()
    assert agent.batches == [["earlier chat message"], ["how did the night run go?"]]
    assert channel.sent[-1] == (ADMIN, "answer to how did the night run go?")


async def test_every_stored_time_has_one_format(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say(ADMIN, "hello")
        await channel.say(ADMIN, "/task add once 2030-01-01T09:00 /status")
        await channel.say(ADMIN, "/task add every 1h /status")
        task_id = (await orch.services.scheduler.list_tasks())[0].id
        await channel.say(ADMIN, f"/task run {task_id}")
        await orch.services.scheduler.wait_idle()
        await orch.services.log.flush()
        db = orch.services.db
        columns = {
            "chats": ("first_seen", "last_seen"),
            "messages": ("ts",),
            "tasks": ("created_at", "next_run_at", "last_run_at"),
            "task_runs": ("scheduled_for", "started_at", "finished_at"),
            "event_log": ("ts",),
            "action_log": ("ts",),
            "tool_call_log": ("ts",),
        }
        seen = 0
        for table, names in columns.items():
            for name in names:
                for row in await db.fetchall(
                    f"SELECT {name} FROM {table} WHERE {name} IS NOT NULL"
                ):
                    assert ISO.match(row[0]), f"{table}.{name} = {row[0]!r}"
                    seen += 1
        once = [t for t in await orch.services.scheduler.list_tasks() if t.kind == "once"]
    assert seen > 20
    assert once and once[0].schedule == "2030-01-01T08:00:00.000Z"  # Berlin 09:00, stored UTC
