"""Shared by the scheduler tests: a recording runner, settings, and the harness type.

The runner is a real `TaskRunner`: it records what the scheduler asks of it and can be
told to fail or to block (to catch a run in the middle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant.clock import Clock
from assistant.config import Settings
from assistant.observability import EventLog
from assistant.scheduler import TaskScheduler
from storage.db import Database
from storage.tasks import Task, TaskRepo

CHAT = "tg:1001"
START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


class RecordingRunner:
    """Runs nothing: returns "done: <what>", or raises `fail_with`; waits on `gate` if set."""

    def __init__(self) -> None:
        self.ran: list[tuple[Task, int]] = []
        self.sent: list[tuple[str, str, int | None]] = []
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.delivered = asyncio.Event()

    async def run_task(self, task: Task, event_id: int) -> str:
        self.ran.append((task, event_id))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return f"done: {task.what}"

    async def notify(self, chat_id: str, text: str, caused_by: int | None) -> None:
        self.sent.append((chat_id, text, caused_by))
        self.delivered.set()

    @property
    def texts(self) -> list[str]:
        return [text for _, text, _ in self.sent]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "assistant_home": tmp_path / "home",
        "tz": "Europe/Berlin",
        "missed_run_policy": "grace",
        "missed_run_grace_s": 3600,
        **overrides,
    }
    return Settings(**values, _env_file=None)  # type: ignore[call-arg]


@dataclass
class Harness:
    """One scheduler and what it was built from; `tasks` is the repo over the same file."""

    db: Database
    log: EventLog
    tasks: TaskRepo
    settings: Settings
    clock: Clock
    runner: RecordingRunner
    scheduler: TaskScheduler


MakeHarness = Callable[..., Awaitable[Harness]]
