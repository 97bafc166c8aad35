"""An orchestrator over a real SQLite file, with a channel that records what it is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel, Running


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        yield Running(orch, channel, settings)
