"""Records to vLLM-named figures: the definitions, the files, and the comparable check."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from assistant.jobs.bench.profiles import Profile, custom_profile
from assistant.jobs.bench.results import (
    ProfileRun,
    RequestRecord,
    RunMetadata,
    build_result,
    comparable,
    percentile,
    write_requests,
    write_result,
)

META = RunMetadata(
    model="Qwen/Qwen3-0.6B",
    served_model_name="qwen",
    endpoint="/v1/completions",
    hardware="8x H200",
    engine="vLLM",
    engine_version="v0.19.1",
    cluster_label="h200-a",
    server_healthy=True,
    url="http://10.0.0.5:8000/v1",
)
REFERENCE_METADATA = {
    "model",
    "served_model_name",
    "benchmark_type",
    "dataset_name",
    "input_len",
    "output_len",
    "num_prompts",
    "max_concurrency",
    "request_rate",
    "endpoint",
    "hardware",
    "engine",
    "engine_version",
    "cluster_label",
    "result_tag",
    "saved_at_utc",
    "input_lengths_exact",
}


def rec(index: int, ttft: float, itl: list[float], out: int, prompt: int = 10) -> RequestRecord:
    e2el = ttft + sum(itl)
    return RequestRecord(index, 0.01 * index, prompt, ttft, itl, e2el, out, True, None)


def sample_run(exact: bool = True) -> ProfileRun:
    records = [
        rec(0, 0.100, [0.010, 0.020, 0.030], 4),  # TPOT (0.16 - 0.1) / 3 = 20 ms
        rec(1, 0.200, [], 1),  # one token: no TPOT, as vLLM
        rec(2, 0.300, [0.050], 2),  # TPOT 50 ms
        RequestRecord(
            3, 0.04, 10, 0.05, [0.5], None, 0, False, "HTTP 500 Internal Server Error: x"
        ),
    ]
    return ProfileRun(custom_profile(10, 4, 2, 4), records, 2.0, exact)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([15.0, 20.0, 35.0, 40.0, 50.0], 40, 29.0),  # numpy.percentile's documented default
        ([15.0, 20.0, 35.0, 40.0, 50.0], 99, 49.6),
        ([50.0, 15.0, 40.0, 20.0, 35.0], 90, 46.0),  # order does not matter
        ([7.0], 99, 7.0),
        ([], 99, 0.0),
    ],
)
def test_percentile_interpolates_linearly_like_numpy(
    values: list[float], pct: float, expected: float
) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


def test_figures_follow_vllm_definitions() -> None:
    r = build_result(sample_run(), META)
    assert (r["completed"], r["failed"], r["num_prompts"]) == (3, 1, 4)
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (30, 7)  # failed ones excluded
    assert r["duration"] == 2.0
    assert r["request_throughput"] == pytest.approx(1.5)
    assert r["output_throughput"] == pytest.approx(3.5)
    assert r["total_token_throughput"] == pytest.approx(18.5)
    # TTFT over completed requests only (the failed one's 50 ms is not there)
    assert r["mean_ttft_ms"] == pytest.approx(200.0)
    assert r["median_ttft_ms"] == pytest.approx(200.0)
    assert r["std_ttft_ms"] == pytest.approx(math.sqrt(20000 / 3))  # population std
    assert r["p90_ttft_ms"] == pytest.approx(280.0)
    assert r["p99_ttft_ms"] == pytest.approx(298.0)
    # TPOT per request = (E2EL - TTFT) / (tokens - 1), one-token requests left out
    assert r["mean_tpot_ms"] == pytest.approx(35.0)
    assert r["p99_tpot_ms"] == pytest.approx(49.7)
    # ITL pooled over requests
    assert r["mean_itl_ms"] == pytest.approx(27.5)
    assert r["median_itl_ms"] == pytest.approx(25.0)
    assert r["p90_itl_ms"] == pytest.approx(44.0)
    assert r["median_e2el_ms"] == pytest.approx(200.0)
    assert r["max_concurrency"] == 2 and r["request_rate"] == "inf"
    assert r["errors"] == {"HTTP 500 Internal Server Error: x": 1}


def test_result_carries_vllm_field_names_and_the_metadata_block() -> None:
    r = build_result(sample_run(), META)
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p99"):
            assert isinstance(r[f"{stat}_{name}_ms"], float)
    meta = r["run_metadata"]
    assert set(meta) >= REFERENCE_METADATA
    assert meta["benchmark_type"] == "serve" and meta["dataset_name"] == "random"
    assert (meta["input_len"], meta["output_len"], meta["num_prompts"]) == (10, 4, 4)
    assert (meta["max_concurrency"], meta["request_rate"]) == (2, "inf")
    assert meta["result_tag"] == "custom-10x4-c2"
    assert (meta["hardware"], meta["engine"], meta["engine_version"]) == (
        "8x H200",
        "vLLM",
        "v0.19.1",
    )
    assert meta["saved_at_utc"].endswith("+00:00")
    assert meta["input_lengths_exact"] is True and meta["server_healthy"] is True
    rated = ProfileRun(custom_profile(10, 4, 2, 4, 2.5), [], 1.0, True)
    assert build_result(rated, META)["run_metadata"]["request_rate"] == 2.5


def test_no_completed_requests_gives_zeros_not_errors() -> None:
    r = build_result(ProfileRun(custom_profile(10, 4, 2, 4), [], 0.0, True), META)
    assert (r["completed"], r["output_throughput"], r["p99_itl_ms"], r["std_ttft_ms"]) == (
        0,
        0.0,
        0.0,
        0.0,
    )


def clean(profile: Profile, prompt: int | None = None) -> dict[str, Any]:
    records = [
        rec(
            i,
            0.05,
            [0.01] * (profile.output_len - 1),
            profile.output_len,
            prompt or profile.input_len,
        )
        for i in range(profile.num_prompts)
    ]
    return build_result(ProfileRun(profile, records, 1.0, True), META)


def test_a_clean_complete_run_is_comparable() -> None:
    profile = custom_profile(16, 8, 2, 6)
    assert comparable(clean(profile), profile) == (True, None)


def test_every_reason_against_comparing_is_given() -> None:
    profile = custom_profile(10, 4, 2, 4)
    ok, reason = comparable(build_result(sample_run(), META), profile)
    assert not ok and reason is not None
    assert "incomplete: 3 of 4 requests completed" in reason
    assert "1 requests failed (e.g. HTTP 500 Internal Server Error: x)" in reason
    assert "output tokens 7 != 16 expected (4 x 4)" in reason
    assert "input tokens 30 != 40 expected (4 x 10)" in reason
    assert "health" not in reason


def test_input_length_mismatch_counts_only_when_lengths_are_exact() -> None:
    profile = custom_profile(16, 8, 2, 6)
    result = clean(profile, prompt=19)  # a chat template added tokens
    result["run_metadata"]["input_lengths_exact"] = False
    assert comparable(result, profile) == (True, None)
    result["run_metadata"]["input_lengths_exact"] = True
    assert comparable(result, profile) == (False, "input tokens 114 != 96 expected (6 x 16)")


def test_unconfirmed_health_or_a_stop_is_not_comparable() -> None:
    profile = custom_profile(16, 8, 2, 6)
    result = clean(profile)
    result["run_metadata"]["server_healthy"] = False
    assert comparable(result, profile) == (False, "server health was not confirmed")
    result = clean(profile)
    result["run_metadata"]["stopped"] = True
    assert comparable(result, profile) == (False, "stopped before the profile finished")


def test_result_file_is_replaced_atomically_with_sorted_keys(tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "bench"
    first = build_result(sample_run(), META)
    path = write_result(out, first)
    assert path == out / "custom-10x4-c2.json"
    old_view = tmp_path / "old-view.json"
    os.link(path, old_view)  # a reader holding the old file
    second = build_result(sample_run(exact=False), META)
    assert write_result(out, second) == path
    text = path.read_text()
    assert json.loads(text)["run_metadata"]["input_lengths_exact"] is False
    # os.replace swapped in a new file: the old one is intact, never half-written over
    assert json.loads(old_view.read_text())["run_metadata"]["input_lengths_exact"] is True
    assert os.stat(path).st_ino != os.stat(old_view).st_ino
    assert sorted(p.name for p in out.iterdir()) == ["custom-10x4-c2.json"]  # no .tmp left
    assert text.endswith("}\n") and text.startswith('{\n  "completed": 3,')
    keys = list(json.loads(text))
    assert keys == sorted(keys)


def test_request_detail_is_one_json_line_per_request(tmp_path: Path) -> None:
    run = sample_run()
    path = write_requests(tmp_path, "custom-10x4-c2", run.records)
    assert path.name == "custom-10x4-c2.requests.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {
        "index",
        "start",
        "prompt_len",
        "ttft",
        "itl",
        "e2el",
        "output_tokens",
        "ok",
        "error",
    }
    assert rows[0]["itl"] == [0.01, 0.02, 0.03]
    assert rows[3]["ok"] is False and rows[3]["error"].startswith("HTTP 500")
