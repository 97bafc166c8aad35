"""`/run bench serve` through chat: against a given url=, and with its server in a container.

The server is tests/fakes/openai_server.py: in this process for url=, and as the
"server image" (the run image plus that one file) on a real engine, where the host starts
it, the benchmark container reaches it over the host network, and both are labelled and
removed at the end.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.serving import SERVER_OF_LABEL
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.bench_flow import bench
from tests.support.docker_engine import build_test_image, docker_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN

RUN_IMAGE = "assistant-run:latest"
SERVER_IMAGE = "assistant-test-fake-vllm:latest"
FAKE = Path(__file__).resolve().parents[1] / "fakes" / "openai_server.py"
SMALL = "profiles=none in=32 out=16 c=4 n=12"


@pytest.fixture
async def local(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    s = settings.model_copy(update={"monitor_interval_s": 0.1, "cluster_label": "lab-1"})
    channel = RecordingChannel()
    async with Orchestrator(s, channels=[channel], runner=ProcessRunner(s.runs_dir)) as orch:
        yield orch, channel


async def test_a_url_benchmark_reports_compares_and_flags_a_regression(
    local: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = local
    async with FakeOpenAIServer(ttft_ms=20, itl_ms=2, stats_interval_s=0) as fast:
        first = await bench(channel, f"/run bench serve url={fast.url} model=fake-model {SMALL}")
        report = await channel.wait_for(f"Benchmark {first} (fake-model) succeeded", timeout=90)
    assert "custom-32x16-c4" in report and "comparable" in report and "not comparable" not in report
    assert "First comparable benchmark of fake-model" in report
    result = json.loads(
        (orch.services.runs.run_dir(first) / "artifacts/bench/custom-32x16-c4.json").read_text()
    )
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["total_output_tokens"] == 12 * 16 and result["total_input_tokens"] == 12 * 32
    meta = result["run_metadata"]
    assert meta["model"] == "fake-model" and meta["cluster_label"] == "lab-1"
    assert meta["max_concurrency"] == 4 and meta["result_tag"] == "custom-32x16-c4"
    assert 15 <= result["median_ttft_ms"] <= 60
    assert channel.images[-1][1].read_bytes()[:4] == b"\x89PNG"

    async with FakeOpenAIServer(ttft_ms=20, itl_ms=6, stats_interval_s=0) as slow:
        second = await bench(channel, f"/run bench serve url={slow.url} model=fake-model {SMALL}")
        report = await channel.wait_for(f"Benchmark {second} (fake-model)", timeout=90)
    assert report.startswith("REGRESSION"), report
    assert f"against run {first}" in report

    (reply,) = await channel.say(ADMIN, f"/run compare {first} {second}")
    assert first in reply and second in reply and "c4" in reply
    assert channel.images[-1][1].read_bytes()[:4] == b"\x89PNG"


async def test_failed_requests_make_a_run_not_comparable(
    local: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = local
    async with FakeOpenAIServer(ttft_ms=5, itl_ms=1, fail_every=4, stats_interval_s=0) as fake:
        run_id = await bench(channel, f"/run bench serve url={fake.url} model=fake-model {SMALL}")
        report = await channel.wait_for(f"Benchmark {run_id} (fake-model)", timeout=90)
    assert "not comparable" in report and "failed" in report, report


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("/run bench serve", "say which model"),
        ("/run bench serve model=--help url=http://x:1/v1", "model"),
        ("/run bench serve model=m url=file:///etc/passwd", "url"),
        ("/run bench serve model=m url=http://u:p@h:1/v1", "url"),
        ("/run bench serve model=m url=http://h:1/v1 c=0 in=5 out=5 n=5", "c"),
        ("/run bench serve model=m url=http://h:1/v1 tp=2", "with url= the endpoint"),
        ("/run bench serve model=m", "needs a Docker engine"),
        ("/run bench train model=m", "/run bench serve"),
        ("/run compare abc", "name 2 to 12"),
    ],
)
async def test_bad_benchmark_requests_start_nothing(
    local: tuple[Orchestrator, RecordingChannel], text: str, says: str
) -> None:
    orch, channel = local
    (reply,) = await channel.say(ADMIN, text)
    assert says in reply and "Usage:" in reply, reply
    assert await orch.services.runs.repo.recent(5) == []


# ---- the server in a container ---------------------------------------------------------


@pytest.fixture(scope="module")
def server_image(docker_engine: docker.DockerClient) -> str:
    """The run image plus the fake server, started like vLLM's image: options only."""
    dockerfile = (
        f"FROM {RUN_IMAGE}\n"
        "COPY openai_server.py /opt/fake_vllm.py\n"
        'ENTRYPOINT ["python3", "/opt/fake_vllm.py", "--ttft-ms", "15", "--itl-ms", "20"]\n'
    )
    return build_test_image(
        docker_engine, SERVER_IMAGE, dockerfile, {"openai_server.py": FAKE.read_bytes()}
    )


@pytest.fixture
def docker_settings(settings: Settings, server_image: str) -> Settings:
    return settings.model_copy(
        update={
            "runner": "docker",
            "monitor_interval_s": 0.1,
            "run_image": RUN_IMAGE,
            "bench_image": server_image,
            "bench_shm_size": "64m",
        }
    )


async def test_the_server_runs_in_a_container_and_goes_with_the_run(
    docker_settings: Settings, docker_engine: docker.DockerClient
) -> None:
    channel = RecordingChannel()
    runner = docker_runner(RUN_IMAGE)
    async with Orchestrator(docker_settings, channels=[channel], runner=runner) as orch:
        run_id = await bench(
            channel, "/run bench serve model=fake-model profiles=none in=32 out=16 c=2 n=40 gpus=0"
        )
        report = await channel.wait_for(f"Benchmark {run_id} (fake-model) succeeded", timeout=120)
        run = await orch.services.runs.repo.get(run_id)
        assert run is not None and run.server is not None and run.server["ref"]
        assert "--served-model-name" in run.server["args"]
        # the live figures come from the server's /metrics, read by the benchmark itself
        assert run.metrics.get("server_metrics_scrapes", 0) > 0, run.metrics
        assert "engine_gen_tok_s" in run.metrics, run.metrics
        log = (orch.services.runs.run_dir(run_id) / "artifacts/server.log").read_text()
        assert "Avg generation throughput" in log
    assert "comparable" in report and "custom-32x16-c2" in report
    assert (
        "custom-32x16-c2 server: 640 generated tokens (server count) vs 640 client count"
    ) in report, report
    assert "log statistics" not in report
    left = docker_engine.containers.list(all=True, filters={"label": f"{SERVER_OF_LABEL}={run_id}"})
    assert left == []


async def test_without_metrics_the_servers_log_lines_are_read(
    docker_settings: Settings, docker_engine: docker.DockerClient
) -> None:
    """A server started with /metrics off (vLLM behind a proxy that hides it): log lines."""
    s = docker_settings.model_copy(update={"bench_server_args": "--metrics off"})
    channel = RecordingChannel()
    runner = docker_runner(RUN_IMAGE)
    async with Orchestrator(s, channels=[channel], runner=runner) as orch:
        run_id = await bench(
            channel, "/run bench serve model=fake-model profiles=none in=32 out=16 c=2 n=40 gpus=0"
        )
        report = await channel.wait_for(f"Benchmark {run_id} (fake-model) succeeded", timeout=120)
        run = await orch.services.runs.repo.get(run_id)
        assert run is not None
        assert "server_metrics_scrapes" not in run.metrics, run.metrics
        assert "engine_gen_tok_s" in run.metrics, run.metrics
    assert "custom-32x16-c2 server: no metrics (" in report and "HTTP 404" in report, report
    assert "Server (its last log statistics, no /metrics): generation" in report, report
    assert "not comparable" not in report
    left = docker_engine.containers.list(all=True, filters={"label": f"{SERVER_OF_LABEL}={run_id}"})
    assert left == []


async def test_a_server_that_never_gets_healthy_is_reported_with_its_log(
    docker_settings: Settings, docker_engine: docker.DockerClient
) -> None:
    s = docker_settings.model_copy(update={"bench_server_args": "--start-delay-s 600"})
    channel = RecordingChannel()
    runner = docker_runner(RUN_IMAGE)
    async with Orchestrator(s, channels=[channel], runner=runner):
        run_id = await bench(
            channel, f"/run bench serve model=fake-model {SMALL} gpus=0 health_timeout_s=3"
        )
        report = await channel.wait_for(f"Run {run_id} (serve) failed", timeout=90)
    assert re.search(r"health|healthy", report) and "Server's last lines:" in report
    assert "fake OpenAI server on" in report
    left = docker_engine.containers.list(all=True, filters={"label": f"{SERVER_OF_LABEL}={run_id}"})
    assert left == []
