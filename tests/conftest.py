"""Shared fixtures: a real SQLite file in tmp_path, settings pointing at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.observability import EventLog
from assistant.redaction import Redactor
from storage.db import Database

# Fixtures shared across folders: each module of tests/support that defines some.
pytest_plugins = [
    "tests.support.docker_engine",
    "tests.support.slurm_cluster",
    # one session-wide second engine: imported into two modules, it was two fixtures, and
    # the second waited forever on the first one's lock
    "tests.support.ssh_engine",
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        assistant_home=tmp_path / "home",
        local_port=0,
        http_address="127.0.0.1:0",  # parallel orchestrators never collide
        tz="Europe/Berlin",
        admin_chats=("tg:1001",),
        secrets=("hunter2-secret-value",),
        runner="process",
        gpus="none",
        progress_interval_s=0,  # the live progress message has its own test
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "test.db")
    yield database
    await database.aclose()


@pytest.fixture
async def event_log(db: Database) -> AsyncIterator[EventLog]:
    log = EventLog(db, Redactor(["hunter2-secret-value"]), flush_interval=0.02)
    await log.start()
    yield log
    await log.aclose()
