"""A real Prometheus (Debian's package) scrapes the assistant during a run, every second;
its HTTP API then holds the run's progress and the command latency histogram."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from tests.support.metrics_service import MetricsService, metrics_service
from tests.support.prometheus import PrometheusServer


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[MetricsService]:
    update = {"gpus": "none", "monitor_interval_s": 0.1, "stop_grace_s": 30.0}
    async with metrics_service(settings.model_copy(update=update)) as running:
        yield running


async def test_prometheus_scrapes_the_run_progress_and_the_command_histogram(
    service: MetricsService, tmp_path: Path
) -> None:
    run_id = await service.launch(
        "/run train gpt steps=2000 gpus=0 sleep_per_step=0.05 log_every=1 eval_every=1000"
    )
    await service.say("/status")
    async with PrometheusServer(tmp_path / "prometheus", target=service.address) as prom:
        (sample,) = await prom.wait_for(f'assistant_run_step{{run_id="{run_id}"}} >= 2')
        assert sample["metric"]["recipe"] == "gpt"
        assert sample["metric"]["job"] == "assistant"
        assert float(sample["value"][1]) >= 2

        buckets = await prom.wait_for('assistant_command_duration_seconds_bucket{command="status"}')
        bounds = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
        assert bounds["+Inf"] == 1 and "0.001" in bounds
        latency = await prom.wait_for(
            'histogram_quantile(0.5, assistant_command_duration_seconds_bucket{command="status"})'
        )
        assert float(latency[0]["value"][1]) > 0

        (up,) = await prom.wait_for('up{job="assistant"} == 1')
        assert up["metric"]["instance"] == service.address
        (target,) = await prom.targets()
        assert target["scrapeUrl"] == f"http://{service.address}/metrics"
    await service.stop(run_id)
