"""Schedulers over a real SQLite file, with a clock the test moves and a recording runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from assistant.access import Access
from assistant.clock import Clock, ManualClock
from assistant.observability import EventLog
from assistant.redaction import Redactor
from assistant.scheduler import TaskScheduler
from commands import build_router
from commands.task_rights import TaskRights
from storage.chats import ChatRepo
from storage.db import Database
from storage.tasks import TaskRepo
from tests.support.scheduler_harness import (
    CHAT,
    START,
    Harness,
    MakeHarness,
    RecordingRunner,
    make_settings,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def make_harness(tmp_path: Path, clock: ManualClock) -> AsyncIterator[MakeHarness]:
    """Build schedulers on `tmp_path/a.db` (two calls = two processes on one file)."""
    built: list[Harness] = []

    async def build(clock_: Clock | None = None, **settings: Any) -> Harness:
        db = await Database.open(tmp_path / "a.db")
        log = EventLog(db, Redactor(), flush_interval=0.02)
        await log.start()
        conf = make_settings(tmp_path, **settings)
        runner = RecordingRunner()
        repo = TaskRepo(db)
        used = clock_ or clock
        access = Access(ChatRepo(db), (CHAT,))  # the tasks' chat is an admin chat
        await access.load()
        rights = TaskRights(access, build_router())
        scheduler = TaskScheduler(repo, log, conf, used, runner, rights)
        harness = Harness(db, log, repo, conf, used, runner, scheduler)
        built.append(harness)
        return harness

    yield build
    for harness in reversed(built):
        if harness.runner.gate is not None:
            harness.runner.gate.set()
        await harness.scheduler.aclose(grace_s=1)
        await harness.log.aclose()
        await harness.db.aclose()


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    built: Harness = await make_harness()
    return built
