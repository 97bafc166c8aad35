"""/task through the real parser, scheduler and SQLite file; replies are what users read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from assistant.access import Access
from assistant.clock import Clock, ManualClock
from assistant.config import Settings
from assistant.errors import CommandError, Refused
from assistant.observability import EventLog
from assistant.redaction import Redactor
from assistant.scheduler import TaskScheduler
from commands import build_router
from commands.registry import CommandContext, parse_command
from commands.task_rights import TaskRights
from commands.tasks import USAGE, format_task_list, task_command
from storage.chats import ChatRepo
from storage.db import Database
from storage.tasks import Task, TaskRepo

CHAT = "local:console"
START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # Monday 07:00 in Berlin
BERLIN = ZoneInfo("Europe/Berlin")


class RecordingRunner:
    """A real TaskRunner that keeps what it is asked to run and to send."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.sent: list[tuple[str, str]] = []

    async def run_task(self, task: Task, event_id: int) -> str:
        self.ran.append(task.what)
        return f"done: {task.what}"

    async def notify(self, chat_id: str, text: str, caused_by: int | None) -> None:
        self.sent.append((chat_id, text))


@dataclass
class TaskServices:
    """The part of `Services` that /task uses."""

    scheduler: TaskScheduler
    settings: Settings
    clock: Clock


@dataclass
class Env:
    say: Callable[[str], Awaitable[str]]
    refused: Callable[[str], Awaitable[str]]
    declined: Callable[[str], Awaitable[str]]
    scheduler: TaskScheduler
    tasks: TaskRepo
    runner: RecordingRunner
    clock: ManualClock


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = await Database.open(tmp_path / "a.db")
    log = EventLog(db, Redactor(), flush_interval=0.02)
    await log.start()
    settings = Settings(
        assistant_home=tmp_path / "home",
        tz="Europe/Berlin",
        _env_file=None,  # type: ignore[call-arg]
    )
    clock = ManualClock(START)
    runner = RecordingRunner()
    repo = TaskRepo(db)
    access = Access(ChatRepo(db), ())  # CHAT, the console, is an admin by configuration
    await access.load()
    scheduler = TaskScheduler(
        repo, log, settings, clock, runner, TaskRights(access, build_router())
    )
    ctx = CommandContext(
        chat_id=CHAT,
        sender="admin",
        services=TaskServices(scheduler, settings, clock),  # type: ignore[arg-type]
        router=build_router(),
        event_id=None,
    )

    async def say(text: str) -> str:
        reply = await task_command(ctx, parse_command(text))
        assert isinstance(reply, str)
        return reply

    async def refused(text: str) -> str:
        """The one-line problem of a refused command; checks the usage came with it and
        that nothing changed."""
        before = await repo.list_all()
        with pytest.raises(CommandError) as err:
            await say(text)
        problem, usage = str(err.value).split("\nUsage:\n")
        assert usage == USAGE
        assert "\n" not in problem
        assert await repo.list_all() == before
        return problem

    async def declined(text: str) -> str:
        """The one line a well-formed request the tasks say no to gets (no usage); checks
        nothing changed."""
        before = await repo.list_all()
        with pytest.raises(Refused) as err:
            await say(text)
        assert "\n" not in str(err.value)
        assert await repo.list_all() == before
        return str(err.value)

    yield Env(say, refused, declined, scheduler, repo, runner, clock)
    await scheduler.aclose()
    await log.aclose()
    await db.aclose()


async def test_add_each_kind_confirms_id_and_next_run(env: Env) -> None:
    reply = await env.say('/task add cron "0 2 * * *" /status')
    (task,) = await env.tasks.list_all()
    assert reply == (
        f"Task {task.id} scheduled: /status — cron: 0 2 * * *."
        " Next run in 19h (2026-11-24 02:00 CET)."
    )
    reply = await env.say("/task add every 2h15m /status tasks")
    assert reply.endswith(
        ": /status tasks — every 2h 15m. Next run in 2h 15m (2026-11-23 09:15 CET)."
    )
    reply = await env.say('/task add once +30m check the "big" run')
    assert reply.endswith(
        ': check the "big" run — once at 2026-11-23 07:30 CET.'
        " Next run in 30m (2026-11-23 07:30 CET)."
    )
    reply = await env.say("/task add once 2026-11-24T09:00 /status")  # Berlin time
    assert "once at 2026-11-24 09:00 CET. Next run in 1d 2h (2026-11-24 09:00 CET)." in reply
    await env.say('/task add every 1h "/status tasks"')  # one quoted what is unwrapped
    await env.say("/task add cron “30 6 * * 1-5” morning summary")  # phone quotes
    whats = sorted(t.what for t in await env.tasks.list_all())
    assert whats == [
        "/status",
        "/status",
        "/status tasks",
        "/status tasks",
        'check the "big" run',
        "morning summary",
    ]


async def test_every_wrong_input_gets_a_problem_and_the_usage_a_refusal_one_line(
    env: Env,
) -> None:
    await env.tasks.create(_task("ab12cd34"))
    await env.tasks.create(_task("ab12ef56"))
    await env.tasks.create(_task("k7m2p9q4", status="paused", next_run_at=None))
    cases = {
        "/task": "say what to do with tasks",
        "/task frobnicate": "unknown subcommand 'frobnicate'",
        "/task add": "missing the kind: cron, every or once",
        "/task add hourly 1h /status": "unknown kind 'hourly'; use cron, every or once",
        "/task add every": "missing the interval, e.g. 2h or 1h30m",
        "/task add cron": 'missing the cron expression, e.g. "0 2 * * *"',
        "/task add every 1h": ("missing what the task should do: a command like /status, or text"),
        '/task add cron "0 2 * *" /status': (
            "a cron expression has 5 fields (minute hour day month weekday), '0 2 * *' has 4;"
            ' e.g. "0 2 * * *" (02:00 every day) or "*/15 9-17 * * 1-5"'
        ),
        '/task add cron "61 2 * * *" /status': (
            "bad cron expression '61 2 * * *': Error validating expression '61': the last"
            " value (61) is higher than the maximum value (59);"
            ' e.g. "0 2 * * *" (02:00 every day) or "*/15 9-17 * * 1-5"'
        ),
        "/task add cron 0 2 * * * /status": (
            'put the cron expression in quotes, e.g. /task add cron "0 2 * * *" /status'
        ),
        "/task add every 5s /status": "5s is too short; the shortest is 10s",
        "/task add every soon /status": (
            "'soon' is not a duration; use a number and a unit: 30s, 5m, 2h, 1d, 1w,"
            " or combined like 1h30m"
        ),
        "/task add once 2026-11-22T09:00 /status": (
            "that time is in the past (2026-11-22 09:00 CET, 22h ago)"
        ),
        "/task add once +1x /status": "'1x' is not a duration; use a number and a unit: 30s,"
        " 5m, 2h, 1d, 1w, or combined like 1h30m",
        "/task list all": "/task list takes no arguments",
        "/task pause": "missing the task id: /task pause <id>; /task list shows ids",
        "/task pause ab12cd34 k7": "/task pause takes one id, got 2 words",
    }
    for text, problem in cases.items():
        assert await env.refused(text) == problem, text
    refusals = {
        "/task pause zz": "no task with id starting 'zz'; /task list shows ids",
        "/task delete ab12": (
            "id prefix 'ab12' is ambiguous: ab12cd34, ab12ef56. Give more characters."
        ),
        "/task pause k7": "task k7m2p9q4 is already paused",
        "/task resume ab12c": "task ab12cd34 is not paused",
        "/task run nope": "no task with id starting 'nope'; /task list shows ids",
    }
    for text, problem in refusals.items():
        assert await env.declined(text) == problem, text


async def test_pause_resume_run_delete_replies(env: Env) -> None:
    await env.say("/task add every 1h /status")
    (task,) = await env.tasks.list_all()
    assert await env.say(f"/task pause {task.id[:4]}") == (
        f"Task {task.id} paused (/status). /task resume {task.id} starts it again."
    )
    env.clock.advance(timedelta(minutes=90))
    assert await env.say(f"/task resume {task.id}") == (
        f"Task {task.id} resumed (/status). Next run in 30m (2026-11-23 09:00 CET)."
    )
    assert await env.say(f"/task run {task.id}") == (
        f"Running task {task.id} now (/status); its reply follows."
    )
    await env.scheduler.wait_idle()
    assert env.runner.ran == ["/status"]
    assert env.runner.sent == [(CHAT, "done: /status")]
    assert await env.say(f"/task delete {task.id}") == (
        f"Task {task.id} deleted (/status), with its run history."
    )
    assert await env.tasks.list_all() == []
    assert await env.say("/task list") == "No tasks. Add one: /task add every 1h /status"


async def test_list_groups_and_shows_next_last_and_ids(env: Env) -> None:
    await env.say('/task add cron "0 2 * * *" /status')
    await env.say("/task add every 10m " + "summarise the training logs of every run " * 3)
    await env.say("/task add once +5m /debug report")
    cron, every, once = sorted(await env.tasks.list_all(), key=lambda t: t.kind)
    env.runner.ran.clear()
    env.clock.advance(timedelta(minutes=10))
    await env.scheduler.run_due()
    await env.say(f"/task pause {every.id}")
    env.clock.advance(timedelta(minutes=3))
    listing = await env.say("/task list")
    assert listing == "\n".join(
        [
            "Active (1)",
            "• /status — cron: 0 2 * * *",
            f"  Next: in 18h 47m (2026-11-24 02:00 CET) | Last: never | ID: {cron.id}",
            "Paused (1)",
            "• summarise the training logs of every run summaris… — every 10m",
            f"  Last: 3m ago, ok | ID: {every.id}",
            "Done (1)",
            "• /debug report — once at 2026-11-23 07:05 CET",
            f"  Last: 3m ago, ok | ID: {once.id}",
        ]
    )


def test_format_task_list_shows_failures_and_misses() -> None:
    now = START
    tasks = [
        _task(
            "f1",
            last_run_at="2026-11-23T05:57:00.000Z",
            last_outcome="failed",
            last_error="GPU 0 is busy",
            next_run_at="2026-11-23T06:00:30.000Z",
        ),
        _task("m1", last_run_at="2026-11-23T03:00:00.000Z", last_outcome="missed"),
    ]
    assert format_task_list(tasks, now, BERLIN).splitlines()[2::2] == [
        "  Next: in 30s (2026-11-23 07:00 CET) | Last: 3m ago, failed: GPU 0 is busy | ID: f1",
        "  Next: in 1h (2026-11-23 08:00 CET) | Last: 3h ago, missed | ID: m1",
    ]


def _task(task_id: str, **changes: str | None) -> Task:
    fields: dict[str, str | None] = {
        "chat_id": CHAT,
        "kind": "every",
        "schedule": "3600",
        "what": "/status",
        "status": "active",
        "created_at": "2026-11-23T06:00:00.000Z",
        "next_run_at": "2026-11-23T07:00:00.000Z",
        **changes,
    }
    return Task(id=task_id, **fields)  # type: ignore[arg-type]


async def test_replies_do_not_wait_for_the_run(env: Env) -> None:
    await env.say("/task add every 1h /status")
    (task,) = await env.tasks.list_all()
    reply = await asyncio.wait_for(env.say(f"/task run {task.id}"), 1)
    assert reply.startswith("Running task")
    await env.scheduler.wait_idle()
