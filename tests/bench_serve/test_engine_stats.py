"""vLLM engine statistic lines: both engine generations, partial lines, and the fake's own."""

from __future__ import annotations

import asyncio

import pytest

from assistant.jobs.bench.client import BenchClient, ClientConfig
from assistant.jobs.bench.engine_stats import EngineStats, parse_engine_line
from assistant.jobs.bench.profiles import custom_profile
from tests.fakes.openai_server import FakeOpenAIServer

V1 = (
    "INFO 11-23 10:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 1234.5 tokens/s,"
    " Avg generation throughput: 56.7 tokens/s, Running: 3 reqs, Waiting: 0 reqs,"
    " GPU KV cache usage: 12.3%, Prefix cache hit rate: 45.6%"
)
V0 = (
    "INFO 08-19 12:34:56 metrics.py:455] Avg prompt throughput: 512.3 tokens/s, Avg generation"
    " throughput: 20.1 tokens/s, Running: 2 reqs, Swapped: 1 reqs, Pending: 5 reqs,"
    " GPU KV cache usage: 7.5%, CPU KV cache usage: 90.0%."
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (V1, EngineStats(1234.5, 56.7, 3, 0, 12.3, 45.6)),
        ("(APIServer pid=1) " + V1, EngineStats(1234.5, 56.7, 3, 0, 12.3, 45.6)),
        (V0, EngineStats(512.3, 20.1, 2, 5, 7.5, None, swapped=1)),
        (
            "INFO 08-19 12:34:56 metrics.py:471] Prefix cache hit rate: GPU: 32.10%, CPU: 0.00%",
            EngineStats(None, None, None, None, None, 32.1),
        ),
        (
            V1.replace("45.6%", "0.0%, External prefix cache hit rate: 55.0%"),
            EngineStats(1234.5, 56.7, 3, 0, 12.3, 0.0),
        ),
        (
            "Engine 001: Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 9.0"
            " tokens/s, Running: 1 reqs, Waiting: 2 reqs, KV cache usage: 3.0%,"
            " External prefix cache hit rate: 55.0%",
            EngineStats(0.0, 9.0, 1, 2, 3.0, None),
        ),
        (
            "Engine 000: Avg prompt throughput: 10 tokens/s, Avg generation throughput: 5 tokens/s",
            EngineStats(10.0, 5.0, None, None, None, None),
        ),
    ],
)
def test_statistic_lines_of_either_engine_parse(line: str, expected: EngineStats) -> None:
    assert parse_engine_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        'INFO:     127.0.0.1:51234 - "POST /v1/completions HTTP/1.1" 200 OK',
        "INFO 11-23 10:00:00 [api_server.py:1] Started server process [1]",
        "WARNING 11-23 10:00:00 [scheduler.py:9] Running: 3 reqs is a lot",
        "",
    ],
)
def test_unrelated_lines_are_none(line: str) -> None:
    assert parse_engine_line(line) is None


async def test_the_fake_prints_real_counts_in_vllm_format() -> None:
    lines: list[str] = []
    interval = 0.1
    async with FakeOpenAIServer(
        ttft_ms=10, itl_ms=10, stats_interval_s=interval, stats_sink=lines.append
    ) as fake:
        async with BenchClient(ClientConfig(fake.url, "fake-model", warmup=0)) as client:
            await client.run(custom_profile(32, 20, 4, 8))
        await asyncio.sleep(interval * 1.5)  # one more line after the last token
    stats = [parse_engine_line(line) for line in lines]
    assert stats and all(s is not None for s in stats)
    parsed = [s for s in stats if s is not None]
    assert max(s.running or 0 for s in parsed) == 4  # the concurrency, as the fake saw it
    assert parsed[-1].running == 0 and parsed[-1].kv_cache_usage == 0.0
    # throughput x interval adds up to what was generated: 8 prompts x 20 tokens, 8 x 32 in
    generated = sum((s.generation_throughput or 0.0) * interval for s in parsed)
    prompted = sum((s.prompt_throughput or 0.0) * interval for s in parsed)
    assert generated == pytest.approx(160, rel=0.25)
    assert prompted == pytest.approx(256, rel=0.25)
