"""Serving benchmarks read the server's own Prometheus /metrics (vLLM's `vllm:` series).

The server is tests/fakes/openai_server.py, which publishes vLLM's series in the Prometheus
text format and counts what it serves; the benchmark is the real job as a process, and
through chat the real orchestrator. A server without /metrics, or with a hostile one,
leaves the profile as it was, with a reason instead of the server's figures.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from assistant.config import Settings
from assistant.jobs.bench.server_metrics import (
    MAX_BYTES,
    MetricsError,
    Snapshot,
    Watch,
    parse,
    scrape,
    server_line,
)
from assistant.orchestrator import Orchestrator
from assistant.runs.bench_report import server_text
from assistant.runs.process_runner import ProcessRunner
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.bench_flow import bench
from tests.support.recording import RecordingChannel
from tests.support.serve_job import events, run_job

PROFILE = "custom-32x16-c4"
SMALL = ("--profiles=none", "--in=32", "--out=16", "--c=4")


def result_of(run_dir: Path, profile: str = PROFILE) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / f"artifacts/bench/{profile}.json").read_text())
    return data


# ---- the exposition, parsed ----------------------------------------------------------------


@pytest.mark.parametrize("names", ["vllm", "v0"])
async def test_both_vllm_namings_are_read_from_a_live_server(names: str) -> None:
    async with (
        FakeOpenAIServer(metrics=names, stats_interval_s=0) as fake,
        aiohttp.ClientSession() as session,
    ):
        fake.counters.prompt_total, fake.counters.generation_total = 300, 70
        fake.counters.running, fake.counters.kv_tokens = 3, 250_000
        snapshot = await scrape(session, fake.root + "/metrics")
    assert snapshot.values["prompt_tokens"] == 300
    assert snapshot.values["generation_tokens"] == 70
    assert snapshot.values["running"] == 3 and snapshot.values["waiting"] == 0
    assert snapshot.values["kv_cache_usage"] == pytest.approx(0.25)
    assert snapshot.values["prefix_cache_queries"] == 300
    kv_name = "vllm:gpu_cache_usage_perc" if names == "v0" else "vllm:kv_cache_usage_perc"
    assert kv_name in snapshot.names
    assert "vllm:e2e_request_latency_seconds_count" not in snapshot.names


def test_engines_add_up_and_the_fullest_kv_cache_counts() -> None:
    text = (
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="m"} 100.0\n'
        'vllm:generation_tokens_total{engine="1",model_name="m"} 50.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 3.0\n'
    )
    snapshot = parse(text)
    assert snapshot.values == {"generation_tokens": 150, "kv_cache_usage": 0.7, "waiting": 5}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("<html>hello</html>\n", "no vLLM metrics"),
        ("process_cpu_seconds_total 3.0\n", "no vLLM metrics"),
        ('vllm:num_requests_running{engine="0"} lots\n', "not Prometheus text"),
        ('vllm:num_requests_running{engine="0 1\n', "not Prometheus text"),
    ],
)
def test_text_that_is_not_vllm_metrics_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(MetricsError, match=says):
        parse(text)


def test_counter_deltas_gauge_peaks_and_a_restarted_server() -> None:
    before = Snapshot(0.0, {"generation_tokens": 1000, "prompt_tokens": 500, "running": 0}, ())
    during = Snapshot(1.0, {"generation_tokens": 1100, "running": 7, "kv_cache_usage": 0.4}, ())
    after = Snapshot(2.0, {"generation_tokens": 1400, "prompt_tokens": 20, "running": 1}, ())
    watch = Watch("http://h/metrics", before, after, [during])
    block = watch.block()
    assert block["available"] is True and block["generation_tokens"] == 400
    assert block["prompt_tokens"] is None and "prompt_tokens" in block["note"]
    assert block["running_peak"] == 7 and block["running_end"] == 1
    assert block["kv_cache_usage_pct_peak"] == pytest.approx(40.0)
    assert block["samples"] == 3 and block["seconds"] == 2.0
    line = server_line(block, 400)
    assert "400 generated tokens (server count) vs 400 client count" in line
    assert "KV cache peak 40.0%" in line and "max running 7" in line


# ---- hostile servers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("off", "HTTP 404"),
        ("garbage", "not Prometheus text"),
        ("huge", f"more than {MAX_BYTES // (1024 * 1024)} MiB"),
    ],
)
async def test_a_bad_metrics_route_is_a_reason(mode: str, says: str) -> None:
    async with (
        FakeOpenAIServer(metrics=mode, stats_interval_s=0) as fake,
        aiohttp.ClientSession() as session,
    ):
        with pytest.raises(MetricsError, match=says):
            await scrape(session, fake.root + "/metrics")


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[str, list[str]]]:
    """/metrics answers 302 to /elsewhere, which counts its visitors."""
    visits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        visits.append(request.path)
        return web.Response(text='vllm:num_requests_running{engine="0"} 1.0\n')

    app = web.Application()
    app.router.add_get("/metrics", moved)
    app.router.add_get("/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", visits
    await runner.cleanup()


async def test_a_redirect_is_never_followed(redirecting: tuple[str, list[str]]) -> None:
    root, visits = redirecting
    async with aiohttp.ClientSession() as session:
        with pytest.raises(MetricsError, match="HTTP 302"):
            await scrape(session, root + "/metrics")
    assert visits == []


# ---- the benchmark job, against a url= --------------------------------------------------


async def test_the_job_reports_the_servers_own_counts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # 24 prompts, 4 at a time, 16 tokens 20 ms apart: about 2 s, so samples fall inside
    async with FakeOpenAIServer(
        ttft_ms=5, itl_ms=20, stats_interval_s=0, kv_capacity_tokens=1000
    ) as fake:
        code, output = await run_job(
            run_dir, f"--url={fake.url}", "--model=fake-model", *SMALL, "--n=24"
        )
        served_out, served_in = fake.counters.generation_total, fake.counters.prompt_total
    assert code == 0, output
    result = result_of(run_dir)
    block = result["server_metrics"]
    assert block["available"] is True and block["url"] == fake.root + "/metrics"
    # the difference is the profile's alone: the warm-up request came before the first read
    assert block["generation_tokens"] == result["total_output_tokens"] == 24 * 16
    assert block["prompt_tokens"] == result["total_input_tokens"] == 24 * 32
    assert served_out == 25 * 16 and served_in == 25 * 32
    assert block["prefix_cache_queries"] == 24 * 32 and block["prefix_cache_hit_pct"] == 0
    assert block["samples"] >= 3 and block["failed_samples"] == 0
    assert 1 <= block["running_peak"] <= 4
    assert 0 < block["kv_cache_usage_pct_peak"] <= 4 * (32 + 16) / 1000 * 100
    assert "vllm:generation_tokens_total" in block["names"]
    assert result["comparable"] is True
    logs = [e["message"] for e in events(run_dir, "log")]
    assert any("384 generated tokens (server count) vs 384 client count" in m for m in logs), logs
    live = {e["name"] for e in events(run_dir, "metric")}
    assert {"server_metrics_scrapes", "kv_cache_pct", "engine_running"} <= live


@pytest.mark.parametrize(("mode", "says"), [("off", "HTTP 404"), ("garbage", "not Prometheus")])
async def test_without_usable_metrics_the_profile_is_unchanged(
    tmp_path: Path, mode: str, says: str
) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(ttft_ms=2, itl_ms=1, stats_interval_s=0, metrics=mode) as fake:
        code, output = await run_job(
            run_dir, f"--url={fake.url}", "--model=fake-model", *SMALL, "--n=8"
        )
    assert code == 0, output
    result = result_of(run_dir)
    assert result["comparable"] is True and result["completed"] == 8
    block = result["server_metrics"]
    assert block["available"] is False and says in block["reason"]
    assert "server_metrics_scrapes" not in {e["name"] for e in events(run_dir, "metric")}
    warned = [e["message"] for e in events(run_dir, "log") if e["level"] == "warning"]
    assert any("no server metrics" in m and says in m for m in warned), warned
    assert server_text({PROFILE: result}) == f"{PROFILE} server: no metrics ({block['reason']})"


# ---- through chat ------------------------------------------------------------------------


@pytest.fixture
async def local(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    s = settings.model_copy(update={"monitor_interval_s": 0.1})
    channel = RecordingChannel()
    async with Orchestrator(s, channels=[channel], runner=ProcessRunner(s.runs_dir)) as orch:
        yield orch, channel


async def test_the_chat_report_shows_the_servers_counts(
    local: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = local
    async with FakeOpenAIServer(ttft_ms=5, itl_ms=2, stats_interval_s=0) as fake:
        run_id = await bench(
            channel,
            f"/run bench serve url={fake.url} model=fake-model profiles=none in=32 out=16 c=4 n=12",
        )
        report = await channel.wait_for(f"Benchmark {run_id} (fake-model) succeeded", timeout=90)
    assert (
        f"{PROFILE} server: 192 generated tokens (server count) vs 192 client count;"
        " 384 prompt tokens (server count) vs 384 client count;"
    ) in report, report
    assert "prefix hits 0%" in report and "max waiting 0" in report
    assert "log statistics" not in report


async def test_the_chat_report_says_why_there_are_no_server_counts(
    local: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = local
    async with FakeOpenAIServer(ttft_ms=2, itl_ms=1, stats_interval_s=0, metrics="off") as fake:
        run_id = await bench(
            channel,
            f"/run bench serve url={fake.url} model=fake-model profiles=none in=32 out=16 c=4 n=8",
        )
        report = await channel.wait_for(f"Benchmark {run_id} (fake-model) succeeded", timeout=90)
    assert f"{PROFILE} server: no metrics (GET {fake.root}/metrics -> HTTP 404)" in report
    assert "not comparable" not in report
