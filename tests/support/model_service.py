"""A service whose model is the fake Anthropic server: settings and a running one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from commands import build_router
from tests.fakes.anthropic_server import FakeAnthropic
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
API_KEY = "sk-ant-api03-fake-key-for-tests-0123456789"
# The settings' default, claude-sonnet-4-5, retires on 2026-11-30: the SDK warns about it.
MODEL = "claude-sonnet-5-5"


@dataclass
class Service:
    orch: Orchestrator
    channel: RecordingChannel
    settings: Settings
    fake: FakeAnthropic

    async def say(self, text: str, chat_id: str = ADMIN) -> list[str]:
        return await self.channel.say(chat_id, text)

    async def flush(self) -> None:
        await self.orch.services.log.flush()

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        await self.flush()
        return [dict(r) for r in await self.orch.services.db.fetchall(sql, params)]


def model_settings(settings: Settings, fake: FakeAnthropic, **overrides: Any) -> Settings:
    """The test settings with a key and the fake's URL (and any other field overridden)."""
    return settings.model_copy(
        update={
            "anthropic_api_key": SecretStr(API_KEY),
            "anthropic_base_url": fake.url,
            "model": MODEL,
            **overrides,
        }
    )


@asynccontextmanager
async def open_service(settings: Settings, fake: FakeAnthropic) -> AsyncIterator[Service]:
    router = build_router()
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], router=router) as orch:
        yield Service(orch, channel, settings, fake)
