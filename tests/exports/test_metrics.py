"""/metrics over the real HTTP listener: what a running service exports, parsed by
prometheus_client's own parser and linted by `promtool check metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from assistant.channels.base import Channel, Inbox
from assistant.channels.delivery import SendQueue, TransientError, send_stats
from assistant.config import Settings
from assistant.hoststats import GpuInfo, HostStats
from assistant.metrics import (
    MAX_RUN_SERIES,
    ActiveRun,
    LiveRun,
    ScrapeCollector,
    Snapshot,
    StoredFigures,
)
from assistant.orchestrator import Orchestrator
from assistant.runs.lifecycle import RunState
from tests.fakes.anthropic_server import FakeAnthropic, Reply, Usage
from tests.support.metrics_service import (
    MetricsService,
    metrics_service,
    metrics_settings,
    samples,
)
from tests.support.model_service import ADMIN, MODEL
from tests.support.prometheus import promtool_check

USAGE = Usage(
    input_tokens=120, output_tokens=30, cache_read_input_tokens=500, cache_creation_input_tokens=40
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    script = [Reply("Hello from the model.", usage=USAGE), Reply("Again.", usage=USAGE)]
    async with FakeAnthropic(script) as server:
        yield server


@pytest.fixture
async def service(settings: Settings, fake: FakeAnthropic) -> AsyncIterator[MetricsService]:
    async with metrics_service(metrics_settings(settings, fake)) as running:
        yield running


async def test_a_running_service_exports_its_run_commands_model_and_channels(
    service: MetricsService,
) -> None:
    run_id = await service.launch(
        "/run train gpt steps=2000 gpus=0 sleep_per_step=0.05 log_every=1 eval_every=1000"
    )
    seen = await service.wait_for_step(run_id, 3)
    await service.say("/status")
    await service.say("/status")
    await service.say("/nonesuch")
    (answer,) = await service.say("hello there")
    assert "Hello from the model." in answer

    content_type, text = await service.scrape()
    assert content_type.startswith("text/plain; version=")
    found = samples(text)
    run = (("recipe", "gpt"), ("run_id", run_id))
    assert found[("assistant_run_step", run)] >= seen
    assert found[("assistant_run_total_steps", run)] == 2000
    assert ("assistant_run_loss", run) in found
    assert found[("assistant_runs", (("recipe", "gpt"), ("state", "running")))] == 1
    assert 0 <= found[("assistant_event_log_lag_seconds", ())] < 60
    assert ("assistant_trace_spans_dropped_total", ()) not in found  # tracing is off
    assert found[("assistant_run_queue_length", ())] == 0

    status = (("command", "status"),)
    assert found[("assistant_command_duration_seconds_count", status)] == 2
    assert found[("assistant_command_duration_seconds_bucket", (*status, ("le", "+Inf")))] == 2
    assert found[("assistant_command_duration_seconds_count", (("command", "run"),))] == 1
    other = (("command", "other"),)
    assert found[("assistant_command_duration_seconds_count", other)] == 1
    assert found[("assistant_command_errors_total", other)] == 1
    assert not any(dict(labels).get("command") == "nonesuch" for _, labels in found), (
        "an unknown command's name became a label value"
    )

    model = ("model", MODEL)
    for kind, expected in (
        ("input", 120),
        ("output", 30),
        ("cache_read", 500),
        ("cache_write", 40),
    ):
        assert found[("assistant_model_tokens_total", (("kind", kind), model))] == expected
    assert found[("assistant_model_calls_total", (model,))] == 1
    assert found[("assistant_model_cost_usd_total", (model,))] > 0

    assert found[("assistant_channel_connected", (("platform", "telegram"),))] == 1
    assert found[("assistant_scrape_database_up", ())] == 1
    assert found[("assistant_event_log_rows_written_total", ())] > 0
    assert ADMIN not in text, "a chat id became a label value"

    lint = promtool_check(text)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    (again,) = await service.say("and once more")  # the next scrape adds the new call only
    assert "Again." in again
    _, text = await service.scrape()
    found = samples(text)
    assert found[("assistant_model_calls_total", (model,))] == 2
    assert found[("assistant_model_tokens_total", (("kind", "input"), model))] == 240
    assert found[("assistant_command_duration_seconds_count", status)] == 2
    await service.stop(run_id)


async def test_promtool_finds_nothing_to_fix_in_an_idle_service(settings: Settings) -> None:
    async with metrics_service(settings) as service:
        _, text = await service.scrape()
    lint = promtool_check(text)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"assistant_command_duration_seconds", "assistant_runs", "process_cpu_seconds"} <= names


async def test_only_the_first_active_runs_get_series_and_queued_ones_are_counted(
    settings: Settings,
) -> None:
    async with metrics_service(settings.model_copy(update={"gpus": "none"})) as service:
        repo = service.orch.services.runs.repo
        now = "2020-01-01T00:00:00.000000+00:00"
        ids = []
        for _ in range(MAX_RUN_SERIES + 7):  # each wants a GPU this host has not: they wait
            run = await repo.create(
                kind="train",
                recipe="gpt",
                params={},
                image="assistant-run:latest",
                gpus_wanted=1,
                nproc=1,
                memory_mb=None,
                cpus=None,
                chat_id=ADMIN,
                total=10,
                now=now,
                state=RunState.QUEUED,
            )
            ids.append(run.id)
        _, text = await service.scrape()
    found = samples(text)
    stepped = {dict(labels)["run_id"] for name, labels in found if name == "assistant_run_step"}
    assert len(stepped) == MAX_RUN_SERIES and stepped <= set(ids)
    assert found[("assistant_runs_active_unlisted", ())] == 7
    assert found[("assistant_run_queue_length", ())] == MAX_RUN_SERIES + 7
    assert found[("assistant_runs", (("recipe", "gpt"), ("state", "queued")))] == MAX_RUN_SERIES + 7
    # queued since 2020 (the history's 'queued' row): years of waiting
    assert found[("assistant_run_queue_oldest_wait_seconds", ())] > 3 * 365 * 86400


async def test_a_scrape_whose_database_is_gone_still_answers_and_says_so(
    settings: Settings,
) -> None:
    async with metrics_service(settings) as service:
        await service.say("/status")
        services = service.orch.services
    text = (await services.metrics.exposition(services)).decode()  # the database is closed now
    found = samples(text)
    assert found[("assistant_scrape_database_up", ())] == 0
    assert found[("assistant_command_duration_seconds_count", (("command", "status"),))] == 1
    assert not any(name == "assistant_runs" for name, _ in found)


class QueuedChannel(Channel):
    """A platform-like channel whose sends go through a real SendQueue."""

    name = "slack"
    prefix = "sl"

    def __init__(self) -> None:
        self.queue = SendQueue("slack", attempts=2, backoff_s=0.01)
        self.connected = False
        self.flaky_tries = 0

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def start(self, inbox: Inbox) -> None:
        self.connected = True

    async def send_text(self, chat_id: str, text: str) -> str | None:
        async def send() -> str:
            if text.startswith("flaky"):
                self.flaky_tries += 1
                if self.flaky_tries == 1:
                    raise TransientError("503 from the platform")
            if text.startswith("broken"):
                raise TransientError("503 from the platform, every time")
            return "1"

        return await self.queue.submit(send)

    async def aclose(self) -> None:
        await self.queue.aclose()


async def test_send_failures_and_retries_are_counted_by_platform(settings: Settings) -> None:
    channel = QueuedChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        assert await orch.send("sl:C1", "fine", None)
        assert await orch.send("sl:C1", "flaky once", None)
        assert not await orch.send("sl:C1", "broken for good", None)
        stats = send_stats(channel)
        assert stats is not None and (stats.sent, stats.retries, stats.failures) == (2, 2, 1)
        text = (await orch.services.metrics.exposition(orch.services)).decode()
        channel.connected = False
        after = samples((await orch.services.metrics.exposition(orch.services)).decode())
    found = samples(text)
    slack = (("platform", "slack"),)
    assert found[("assistant_channel_sends_total", slack)] == 2
    assert found[("assistant_channel_send_retries_total", slack)] == 2
    assert found[("assistant_channel_send_failures_total", slack)] == 1
    assert found[("assistant_channel_connected", slack)] == 1
    assert after[("assistant_channel_connected", slack)] == 0


async def test_task_firings_that_ran_and_failed_are_counted(settings: Settings) -> None:
    async with metrics_service(settings) as service:
        ok_task = await add_task(service, "/task add every 1h /status")
        bad_task = await add_task(service, "/task add every 1h /run show zzzzzz")
        for task_id in (ok_task, bad_task, bad_task):
            await service.say(f"/task run {task_id}")
        await service.channel.wait_for(f"Task {bad_task} failed", timeout=30)
        counts = service.orch.services.scheduler.counts
        for _ in range(600):  # the manual runs finish in the background
            if (counts.fired, counts.failed) == (3, 2):
                break
            await asyncio.sleep(0.05)
        _, text = await service.scrape()
    found = samples(text)
    assert found[("assistant_tasks_fired_total", ())] == 3
    assert found[("assistant_tasks_failed_total", ())] == 2
    assert found[("assistant_tasks_missed_total", ())] == 0
    assert found[("assistant_tasks", (("status", "active"),))] == 2


async def add_task(service: MetricsService, text: str) -> str:
    (reply,) = await service.say(text)
    assert reply.startswith("Task ") and " scheduled: " in reply, reply
    return reply.split()[1]


def test_gpu_figures_are_bytes_and_ratios_per_device_and_per_run_holding_it() -> None:
    run = ActiveRun("r1", "gpt", "running", 7, 100, 2.5, (1,), None)
    stored = StoredFigures([("running", "gpt", 1)], [run], {}, [], 0)
    collector = ScrapeCollector()
    collector.snapshot = Snapshot(
        now=0.0,
        started_at=0.0,
        stored=stored,
        live={"r1": LiveRun(tokens_per_s=1234.5, steps_per_s=3.0)},
        channels=[],
        chat_queue_active=0,
        chat_queue_waiting=0,
        chat_queue_limit=3,
        tasks_fired=0,
        tasks_failed=0,
        tasks_missed=0,
        log_written=0,
        log_dropped=0,
        log_failures=0,
        log_pending=0,
        log_last_flush_s=0.0,
        log_lag_s=0.0,
        monitor_lines_skipped=0,
        trace_spans_dropped=7,
        host=HostStats(),
        gpus=[GpuInfo(0, "H200", 0, 0, 143_771), GpuInfo(1, "H200", 87, 40_960, 143_771)],
    )
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    found = samples(text)
    assert found[("assistant_trace_spans_dropped_total", ())] == 7
    device = (("gpu", "1"), ("name", "H200"))
    assert found[("assistant_gpu_memory_used_bytes", device)] == 40_960 * 1024 * 1024
    assert found[("assistant_gpu_memory_total_bytes", device)] == 143_771 * 1024 * 1024
    assert found[("assistant_gpu_utilization_ratio", device)] == 0.87
    labels = (("gpu", "1"), ("recipe", "gpt"), ("run_id", "r1"))
    assert found[("assistant_run_gpu_memory_used_bytes", labels)] == 40_960 * 1024 * 1024
    assert not any(
        name == "assistant_run_gpu_memory_used_bytes" and ("gpu", "0") in labels
        for name, labels in found
    )
    run_labels = (("recipe", "gpt"), ("run_id", "r1"))
    assert found[("assistant_run_tokens_per_second", run_labels)] == 1234.5
    assert found[("assistant_run_loss", run_labels)] == 2.5
    assert promtool_check(text).returncode == 0
