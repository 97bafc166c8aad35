"""The fake OpenAI server itself: routes, start-up delay, and the standalone program."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import sys
from pathlib import Path

import aiohttp
import pytest

from assistant.jobs.bench.client import BenchClient, ClientConfig, served_models, wait_healthy
from assistant.jobs.bench.engine_stats import parse_engine_line
from assistant.jobs.bench.profiles import custom_profile
from tests.fakes.openai_server import FakeOpenAIServer

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "openai_server.py"


async def test_health_waits_for_the_start_delay_and_models_are_listed() -> None:
    async with FakeOpenAIServer(start_delay_s=0.4, models=("a/b", "c"), stats_interval_s=0) as fake:
        early = await wait_healthy(fake.url, 0.1, interval_s=0.05)
        assert not early.ok and "/health -> 503" in early.detail
        later = await wait_healthy(fake.url, 5.0, interval_s=0.05)
        assert later.ok and later.detail.endswith("/health -> 200")
        assert 0.2 < early.waited_s + later.waited_s < 2.0
        assert await served_models(fake.url) == ["a/b", "c"]


async def test_non_streaming_answers_and_bad_requests() -> None:
    async with (
        FakeOpenAIServer(stats_interval_s=0) as fake,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "fake-model", "prompt": "one two three", "max_tokens": 3}
        async with session.post(fake.url + "/completions", json=body) as response:
            answer = await response.json()
        assert answer["usage"] == {
            "prompt_tokens": 3,
            "total_tokens": 6,
            "completion_tokens": 3,
            "prompt_tokens_details": None,
        }
        assert answer["choices"][0]["text"] == " t0 t1 t2"
        bad = {"model": "fake-model", "prompt": [], "max_tokens": 3}
        async with session.post(fake.url + "/completions", json=bad) as response:
            assert response.status == 400
            assert "prompt must be" in (await response.json())["message"]
        zero = {"model": "fake-model", "prompt": [1], "max_tokens": 0}
        async with session.post(fake.url + "/completions", json=zero) as response:
            assert response.status == 400


async def _line(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), 20)).decode()


async def test_standalone_program_serves_prints_stats_and_stops_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # isolated: only the standard library and site-packages, as in an image
        str(FAKE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ttft-ms",
        "5",
        "--itl-ms",
        "5",
        "--stats-interval-s",
        "0.2",
        "--model",
        "served/one",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert (await _line(proc.stdout)).startswith(
            f"fake OpenAI server on http://127.0.0.1:{port}/v1"
        )
        url = f"http://127.0.0.1:{port}/v1"
        async with BenchClient(ClientConfig(url, "served/one", warmup=0)) as client:
            run = await client.run(custom_profile(8, 40, 2, 2))
        assert [rec.output_tokens for rec in run.records] == [40, 40]
        generating = []
        for _ in range(10):  # lines come every 0.2 s; the ones covering the run say so
            stats = parse_engine_line(await _line(proc.stdout))
            assert stats is not None
            generating.append((stats.generation_throughput or 0.0) > 0)
            if generating[-1]:
                break
        assert generating[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0


async def test_jitter_spreads_gaps_around_the_configured_itl() -> None:
    spreads = []
    for jitter in (0.0, 6.0):
        async with (
            FakeOpenAIServer(itl_ms=10, jitter_ms=jitter, seed=1, stats_interval_s=0) as fake,
            BenchClient(ClientConfig(fake.url, "fake-model", warmup=0)) as client,
        ):
            run = await client.run(custom_profile(8, 30, 1, 2))
        gaps = [g * 1000 for rec in run.records for g in rec.itl]
        assert statistics.fmean(gaps) == pytest.approx(10.0, abs=0.6)
        spreads.append(statistics.pstdev(gaps))
    # uniform +-6 ms has a standard deviation of 6 / sqrt(3) = 3.5 ms, on top of the
    # noise streaming adds without any jitter (well under a millisecond on a quiet box)
    assert 2.5 < spreads[1] < 5.0 and spreads[0] < spreads[1] - 1.5
