"""A running service for the /metrics tests: the process runner, the fake Messages API as
its model, a recording channel, and the real HTTP listener on a free loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from tests.fakes.anthropic_server import FakeAnthropic
from tests.support.model_service import ADMIN, model_settings
from tests.support.recording import RecordingChannel

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class MetricsService:
    orch: Orchestrator
    channel: RecordingChannel
    settings: Settings

    @property
    def address(self) -> str:
        """host:port the listener bound, as it published it in ASSISTANT_HOME/http.json."""
        endpoint = json.loads((self.settings.assistant_home / "http.json").read_text())
        return f"{endpoint['host']}:{endpoint['port']}"

    async def say(self, text: str) -> list[str]:
        return await self.channel.say(ADMIN, text)

    async def scrape(self) -> tuple[str, str]:
        """GET /metrics over HTTP: the content type and the body."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{self.address}/metrics") as response,
        ):
            assert response.status == 200, await response.text()
            return response.headers["Content-Type"], await response.text()

    async def launch(self, text: str) -> str:
        (reply,) = await self.say(text)
        assert reply.startswith("Run "), reply
        return reply.split()[1].rstrip(":")

    async def wait_for_step(self, run_id: str, at_least: int, timeout: float = 120) -> int:
        repo = self.orch.services.runs.repo
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            run = await repo.get(run_id)
            assert run is not None
            if run.step >= at_least:
                return run.step
            assert run.state in ("queued", "starting", "running"), (run.state, run.error)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} at step {run.step} after {timeout}s")
            await asyncio.sleep(0.1)

    async def stop(self, run_id: str) -> None:
        (reply,) = await self.say(f"/run stop {run_id}")
        assert "stopping" in reply, reply
        await self.channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=60)


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels, parsed by the
    client library's own parser."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metrics_settings(settings: Settings, fake: FakeAnthropic) -> Settings:
    """A model-backed service that runs recipes as local processes, quick to notice stalls."""
    return model_settings(
        settings,
        fake,
        gpus="none",
        stall_timeout_s=60.0,
        monitor_interval_s=0.1,
        stop_grace_s=30.0,
    )


@asynccontextmanager
async def metrics_service(settings: Settings) -> AsyncIterator[MetricsService]:
    channel = RecordingChannel()
    runner = ProcessRunner(settings.runs_dir)
    async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
        yield MetricsService(orch, channel, settings)
