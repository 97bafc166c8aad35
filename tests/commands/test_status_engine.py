"""/status names an engine that does not answer, and stays quick while it does not.

The engine is this machine's real Docker engine behind tests/support/engine_proxy.py,
which the test cuts, black-holes (accepts, never answers) and restores.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.engine_proxy import EngineProxy, engine_proxy
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
BOUND_S = 10.0  # "a few seconds", generous: the point is that it is not 60


@pytest.fixture
async def proxy() -> AsyncIterator[EngineProxy]:
    async with engine_proxy() as running:
        yield running


async def status(channel: RecordingChannel) -> tuple[str, float]:
    started = time.monotonic()
    (reply,) = await channel.say(ADMIN, "/status")
    return reply, time.monotonic() - started


async def until_engine_line(channel: RecordingChannel, shown: bool) -> str:
    """/status until its Engine line is (or is not) there: the probe keeps answers 2 s."""
    deadline = time.monotonic() + 30
    while True:
        reply, took = await status(channel)
        assert took < BOUND_S, f"/status took {took:.1f} s"
        if ("Engine: " in reply) == shown:
            return reply
        assert time.monotonic() < deadline, reply


@pytest.mark.parametrize("fault", ["cut", "black_hole"])
async def test_status_shows_the_engine_unreachable_while_it_is(
    settings: Settings, proxy: EngineProxy, fault: str
) -> None:
    configured = settings.model_copy(update={"runner": "docker", "docker_host": proxy.url})
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel]):
        reply, _ = await status(channel)
        assert f"Runner: docker at {proxy.url}" in reply and "Engine: " not in reply

        await getattr(proxy, fault)()
        reply = await until_engine_line(channel, shown=True)
        line = next(x for x in reply.splitlines() if x.startswith("Engine: "))
        assert line.startswith("Engine: unreachable: ") and proxy.url in line, line

        await proxy.restore()
        await until_engine_line(channel, shown=False)
