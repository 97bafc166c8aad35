"""`python -m assistant.jobs.bench.serve` as a real process against the fake server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from assistant.jobs.bench.serve import BENCH_SERVE, build_job, parse_args
from assistant.jobs.protocol import EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from assistant.jobs.recipes import ParamError, resolve_params, to_cli_args
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.serve_job import REPO, TIMEOUT, command, events, run_job

MODEL = "Qwen/Qwen3-0.6B"


async def first_event(run_dir: Path, type_: str) -> None:
    """Return once the run has written an event of this type (a wait, not a check)."""
    while True:
        if events(run_dir, type_):
            return
        await asyncio.sleep(0.05)


def only(run_dir: Path, type_: str) -> dict[str, Any]:
    found = events(run_dir, type_)
    assert len(found) == 1, found
    return found[0]


async def test_custom_profile_alone_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(ttft_ms=5, itl_ms=2, stats_interval_s=0) as fake:
        code, output = await run_job(
            run_dir,
            f"--url={fake.url}",
            f"--model={MODEL}",
            "--served_model_name=fake-model",
            "--profiles=none",
            "--in=32",
            "--out=8",
            "--c=4",
            "--n=12",
            "--hardware=CPU test box",
            "--engine_version=fake-1",
        )
        served = {r.body["model"] for r in fake.requests}
        received = fake.counters.requests
    assert code == EXIT_OK, output
    assert served == {"fake-model"} and received == 13  # one warm-up, twelve timed
    started = only(run_dir, "started")
    assert (started["step"], started["total"]) == (0, 12)
    assert started["params"]["in"] == 32 and started["params"]["profiles"] == "none"
    progress = events(run_dir, "progress")
    assert progress[-1]["step"] == 12 and progress[-1]["total"] == 12
    assert progress[-1]["profile"] == "custom-32x8-c4"
    assert (progress[-1]["profile_done"], progress[-1]["profile_total"]) == (12, 12)
    assert progress[-1]["tokens_per_s"] > 0 and progress[-1]["elapsed_s"] > 0
    metrics = {e["name"]: e["value"] for e in events(run_dir, "metric")}
    for name in ("output_throughput", "median_ttft_ms", "median_tpot_ms", "p99_itl_ms"):
        assert f"custom-32x8-c4/{name}" in metrics
    assert metrics["custom-32x8-c4/completed"] == 12
    assert metrics["custom-32x8-c4/median_tpot_ms"] == pytest.approx(2.0, abs=1.5)
    summaries = [e["message"] for e in events(run_dir, "log") if "output tok/s" in e["message"]]
    assert len(summaries) == 1
    assert summaries[0].startswith("custom-32x8-c4: 12/12 ok (0 failed)")
    assert summaries[0].endswith("[comparable]")
    result = only(run_dir, "result")
    assert result["status"] == "succeeded" and result["step"] == 12
    assert result["best"] == {} and result["checkpoint"] is None
    assert (
        result["final"]["custom-32x8-c4/output_throughput"]
        == metrics["custom-32x8-c4/output_throughput"]
    )
    assert result["bench"] == {
        "dir": "artifacts/bench",
        "profiles": ["custom-32x8-c4"],
        "comparable": True,
        "reason": None,
    }
    files = sorted(p.name for p in (run_dir / "artifacts" / "bench").iterdir())
    assert files == ["custom-32x8-c4.json", "custom-32x8-c4.requests.jsonl"]
    saved = json.loads((run_dir / "artifacts" / "bench" / "custom-32x8-c4.json").read_text())
    assert (saved["completed"], saved["total_output_tokens"], saved["total_input_tokens"]) == (
        12,
        96,
        384,
    )
    assert saved["comparable"] is True and saved["comparable_reason"] is None
    meta = saved["run_metadata"]
    assert (meta["model"], meta["served_model_name"]) == (MODEL, "fake-model")
    assert (meta["hardware"], meta["engine"], meta["engine_version"]) == (
        "CPU test box",
        "vLLM",
        "fake-1",
    )
    assert (meta["endpoint"], meta["result_tag"], meta["request_rate"]) == (
        "/v1/completions",
        "custom-32x8-c4",
        "inf",
    )
    assert meta["server_healthy"] is True and meta["input_lengths_exact"] is True
    lines = (run_dir / "artifacts" / "bench" / "custom-32x8-c4.requests.jsonl").read_text()
    assert len(lines.splitlines()) == 12


async def test_standard_profile_first_then_the_custom_extra(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(stats_interval_s=0) as fake:
        code, output = await run_job(
            run_dir,
            f"--url={fake.root}",  # no /v1: added
            "--model=fake-model",
            "--profiles=latency-1024x256-c1",
            "--in=16",
            "--out=4",
            "--c=2",
            "--n=10",
            "--rate=200",
            "--warmup=0",
        )
    assert code == EXIT_OK, output
    assert only(run_dir, "started")["total"] == 30
    result = only(run_dir, "result")
    assert result["bench"]["profiles"] == ["latency-1024x256-c1", "custom-16x4-c2-r200"]
    assert result["bench"]["comparable"] is True and result["step"] == 30
    latency = json.loads((run_dir / "artifacts/bench/latency-1024x256-c1.json").read_text())
    assert (latency["total_input_tokens"], latency["total_output_tokens"]) == (20_480, 5_120)
    custom = json.loads((run_dir / "artifacts/bench/custom-16x4-c2-r200.json").read_text())
    assert custom["run_metadata"]["request_rate"] == 200.0 and custom["request_rate"] == 200.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("server", ["starting", "absent"])
async def test_a_server_that_never_gets_healthy_fails_clearly_in_time(
    tmp_path: Path, server: str
) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(start_delay_s=3600, stats_interval_s=0) as fake:
        url = fake.url if server == "starting" else f"http://127.0.0.1:{free_port()}/v1"
        began = time.monotonic()
        code, output = await run_job(
            run_dir, f"--url={url}", "--model=fake-model", "--health_timeout_s=1"
        )
        took = time.monotonic() - began
        generated = fake.counters.requests
    assert code == EXIT_FAILED, output
    assert took < 15
    error = only(run_dir, "error")
    assert error["kind"] == "exception"
    assert (
        f"the server at {url} did not answer 200 on /health or /v1/models within 1 s"
        in (error["message"])
    )
    assert ("-> 503" if server == "starting" else "ClientConnectorError") in error["message"]
    result = only(run_dir, "result")
    assert result["status"] == "failed" and result["bench"]["comparable"] is False
    assert generated == 0 and not (run_dir / "artifacts").exists()


async def test_every_request_failing_fails_the_run_but_keeps_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(fail_every=1, stats_interval_s=0) as fake:
        code, output = await run_job(
            run_dir,
            f"--url={fake.url}",
            "--model=fake-model",
            "--profiles=none",
            "--in=8",
            "--out=2",
            "--c=2",
            "--n=6",
        )
    assert code == EXIT_FAILED, output
    message = only(run_dir, "error")["message"]
    assert message.startswith("custom-8x2-c2: all 6 requests failed (HTTP 500")
    result = only(run_dir, "result")
    assert result["status"] == "failed"
    assert result["bench"]["comparable"] is False
    assert "incomplete: 0 of 6 requests completed" in result["bench"]["reason"]
    saved = json.loads((run_dir / "artifacts/bench/custom-8x2-c2.json").read_text())
    assert (saved["failed"], saved["comparable"]) == (6, False)


async def test_sigterm_stops_during_a_profile_and_keeps_partial_results(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(ttft_ms=5, itl_ms=5, stats_interval_s=0) as fake:
        proc = await asyncio.create_subprocess_exec(
            *command(
                run_dir,
                f"--url={fake.url}",
                "--model=fake-model",
                "--profiles=none",
                "--in=8",
                "--out=50",
                "--c=2",
                "--n=40",
                "--warmup=0",
            ),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.wait_for(first_event(run_dir, "progress"), TIMEOUT)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == EXIT_STOPPED, out.decode()
    result = only(run_dir, "result")
    assert result["status"] == "stopped"
    assert 0 < result["step"] < 40
    assert result["bench"]["comparable"] is False
    assert result["bench"]["reason"].startswith("custom-8x50-c2: stopped before the profile")
    saved = json.loads((run_dir / "artifacts/bench/custom-8x50-c2.json").read_text())
    assert saved["run_metadata"]["stopped"] is True and saved["comparable"] is False
    assert saved["completed"] < 40
    # a stop does not wait on the server's /metrics: the cut-off profile has no counts
    assert saved["server_metrics"]["available"] is False
    assert saved["server_metrics"]["reason"] == "stopped before the profile finished"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url=http://u:p@h:8000/v1", "--model=m"], "credentials"),
        (["--url=file:///etc/passwd", "--model=m"], "http:// or https://"),
        (["--url=http://h:8000/v1", "--model=--rm"], "must not start with '-'"),
        (["--url=http://h:8000/v1", "--model=m", "--moddel=x"], "did you mean 'model'"),
        (["--url=http://h:8000/v1", "--model=m", "--c=2000"], "above the maximum 1024"),
        (["--url=http://h:8000/v1", "--model=m", "--in=64"], "missing: out, c, n"),
        (["--url=http://h:8000/v1"], "model is required"),
        (["--model=m"], "url is required"),
    ],
)
async def test_bad_parameters_exit_2_with_an_error_event(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    code, output = await run_job(run_dir, *args)
    assert code == 2
    assert message in output
    error = only(run_dir, "error")
    assert error["message"].startswith("invalid parameters: ") and message in error["message"]
    assert only(run_dir, "result")["status"] == "failed"


@pytest.mark.parametrize(
    "params",
    [
        {"model": MODEL, "url": "http://10.0.0.5:8000/v1"},
        {
            "model": MODEL,
            "url": "http://10.0.0.5:8000/v1",
            "served_model_name": "qwen",
            "profiles": "latency-1024x256-c1,serve-1024x256-c16",
            "in": 2048,
            "out": "128",
            "c": 8,
            "n": 40,
            "rate": 2.5,
            "endpoint": "chat",
            "hardware": "8x H200",
            "engine_version": "v0.19.1",
            "warmup": 0,
            "health_timeout_s": 30,
            "seed": 3,
        },
    ],
)
def test_the_job_reads_exactly_what_the_host_validated(params: dict[str, Any]) -> None:
    argv = ["--run-dir", "/tmp/x", *to_cli_args(BENCH_SERVE, params)]
    run_dir, given = parse_args(argv)
    job = build_job(run_dir, given)
    assert job.config == resolve_params(BENCH_SERVE, params)
    assert job.run_dir == Path("/tmp/x").resolve()
    assert job.served_model_name == (params.get("served_model_name") or MODEL)


def test_registry_entry() -> None:
    info = BENCH_SERVE
    assert (info.name, info.module) == ("serve", "assistant.jobs.bench.serve")
    assert (info.total_param, info.key_metric, info.key_metric_mode) == (
        "",
        "output_throughput",
        "max",
    )
    assert info.supports_resume is False
    assert [p.name for p in info.params] == [
        "model",
        "url",
        "served_model_name",
        "profiles",
        "in",
        "out",
        "c",
        "n",
        "rate",
        "endpoint",
        "hardware",
        "engine",
        "engine_version",
        "cluster_label",
        "warmup",
        "health_timeout_s",
        "seed",
    ]
    for p in info.params:
        assert re.fullmatch(r"[a-z][a-z_]*", p.name) and p.help
        assert p.coerce(p.default) == p.default
    assert info.param("endpoint").choices == ("completions", "chat")
    with pytest.raises(ParamError, match="above the maximum 131072"):
        resolve_params(info, {"in": 131_073})
