"""A running service whose model is the fake Messages API server, through the real SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from tests.fakes.anthropic_server import FakeAnthropic
from tests.support.model_service import Service, model_settings, open_service


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def service(settings: Settings, fake: FakeAnthropic) -> AsyncIterator[Service]:
    async with open_service(model_settings(settings, fake), fake) as running:
        yield running
