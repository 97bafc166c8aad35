"""Benchmark reports from result files shaped like `vllm bench serve --save-result` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from assistant.runs import bench_report as br

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SHAPES = {
    "latency": (1024, 256, 1, 20),
    "serve": (1024, 256, 16, 200),
    "longctx": (8192, 256, 4, 50),
    "custom": (512, 128, 8, 40),
}


def result(
    profile: str,
    tok_s: float = 1378.3,
    ttft: float = 45.2,
    tpot: float = 11.6,
    itl: float = 11.4,
    *,
    comparable: bool = True,
    reason: str | None = None,
    hardware: str = "8x H200",
    model: str = "meta-llama/Llama-4-Scout",
    completed: int | None = None,
    failed: int = 0,
) -> dict[str, Any]:
    """A result dict as the bench job writes it; percentiles spread around the median."""
    in_len, out_len, conc, prompts = SHAPES[profile.split("-", 1)[0]]
    done = prompts if completed is None else completed
    e2el = ttft + tpot * (out_len - 1)
    data: dict[str, Any] = {
        "duration": done * out_len / tok_s,
        "completed": done,
        "failed": failed,
        "total_input_tokens": done * in_len,
        "total_output_tokens": done * out_len,
        "request_throughput": tok_s / out_len,
        "output_throughput": tok_s,
        "total_token_throughput": tok_s * (in_len + out_len) / out_len,
        "comparable": comparable,
        "comparable_reason": reason,
    }
    for name, median in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        data[f"mean_{name}_ms"] = median * 1.05
        data[f"median_{name}_ms"] = median
        data[f"std_{name}_ms"] = median * 0.1
        data[f"p90_{name}_ms"] = median * 1.5
        data[f"p99_{name}_ms"] = median * 2.0
    data["run_metadata"] = {
        "model": model,
        "served_model_name": model,
        "benchmark_type": "serve",
        "dataset_name": "random",
        "input_len": in_len,
        "output_len": out_len,
        "num_prompts": prompts,
        "max_concurrency": conc,
        "request_rate": "inf",
        "endpoint": "/v1/completions",
        "hardware": hardware,
        "engine": "vLLM",
        "engine_version": "0.11.0",
        "cluster_label": "h200-a",
        "result_tag": profile,
        "saved_at_utc": "2026-11-22T10:00:00+00:00",
        "input_lengths_exact": True,
        "server_healthy": True,
    }
    return data


def write_run(run_dir: Path, results: dict[str, dict[str, Any]]) -> Path:
    bench = run_dir / "artifacts" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    for name, data in results.items():
        (bench / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    return run_dir


def standard(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return {
        "latency-1024x256-c1": result("latency-1024x256-c1", 126.7, 38.1, 7.46, 7.4, **kwargs),
        "serve-1024x256-c16": result("serve-1024x256-c16", 1378.3, 112.5, 10.9, 10.2, **kwargs),
        "longctx-8192x256-c4": result("longctx-8192x256-c4", 404.41, 812.4, 8.9, 8.7, **kwargs),
    }


def is_png(path: Path | None) -> bool:
    return path is not None and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------ loading


def test_load_orders_standard_profiles_first_then_the_rest_by_name(tmp_path: Path) -> None:
    names = [
        "custom-1024x128-c8",
        "longctx-8192x256-c4",
        "custom-512x128-c8-r2.5",
        "serve-1024x256-c16",
        "latency-1024x256-c1",
    ]
    write_run(tmp_path, {n: result(n) for n in names})
    assert list(br.load_results(tmp_path)) == [
        "latency-1024x256-c1",
        "serve-1024x256-c16",
        "longctx-8192x256-c4",
        "custom-512x128-c8-r2.5",
        "custom-1024x128-c8",
    ]


def test_load_skips_request_logs_and_bad_files(tmp_path: Path) -> None:
    bench = write_run(tmp_path, standard()) / "artifacts" / "bench"
    (bench / "serve-1024x256-c16.requests.jsonl").write_text('{"index": 0}\n')
    (bench / "torn-1024x256-c2.json").write_text('{"duration": 1.')
    (bench / "list-1024x256-c2.json").write_text("[1, 2]")
    (bench / "binary-1024x256-c2.json").write_bytes(b"\xff\xfe\x00")
    (bench / "dir-1024x256-c2.json").mkdir()
    loaded = br.load_results(tmp_path)
    assert list(loaded) == ["latency-1024x256-c1", "serve-1024x256-c16", "longctx-8192x256-c4"]
    assert loaded["serve-1024x256-c16"]["output_throughput"] == 1378.3


def test_load_without_results_is_empty(tmp_path: Path) -> None:
    assert br.load_results(tmp_path) == {}


# ------------------------------------------------------------------------------- table, verdict


def test_table_shows_every_profile_with_formatted_numbers() -> None:
    text = br.table_text(standard())
    lines = text.splitlines()
    assert lines[0] == "```" and lines[-1] == "```"
    assert "TTFT ms mean/med/p90/p99" in lines[1] and "ok/fail" in lines[1]
    serve = next(line for line in lines if line.startswith("serve-1024x256-c16"))
    assert "1378.3" in serve
    # mean/median/p90/p99 of TTFT (112.5 ms median) and TPOT (10.9 ms median)
    assert "118.1/112.5/168.8/225.0" in serve
    assert "11.4/10.9/16.4/21.8" in serve
    assert serve.endswith("200/0")
    latency = next(line for line in lines if line.startswith("latency-1024x256-c1"))
    assert "126.7" in latency and "7.46" in latency
    longctx = next(line for line in lines if line.startswith("longctx-8192x256-c4"))
    assert "404.4" in longctx and "1624.8" in longctx
    assert all(len(line) < 100 for line in lines)


def test_table_keeps_long_custom_rows_short_and_marks_missing_figures() -> None:
    wide = result("custom-1024x1024-c128-r2.5", 12345.6, 23456.7, 99.9, 88.8, failed=3)
    del wide["p99_tpot_ms"]
    text = br.table_text({"custom-1024x1024-c128-r2.5": wide, **standard()})
    row = next(line for line in text.splitlines() if line.startswith("custom-"))
    assert "12346" in row and "/-" in row and row.endswith("40/3")
    assert all(len(line) < 100 for line in text.splitlines())


def test_comparable_text() -> None:
    assert br.comparable_text(standard()) == "comparable"
    results = standard()
    results["serve-1024x256-c16"] = result(
        "serve-1024x256-c16", comparable=False, reason="3 requests failed (e.g. timeout)"
    )
    text = br.comparable_text(results)
    assert text == "not comparable: serve-1024x256-c16: 3 requests failed (e.g. timeout)"
    del results["latency-1024x256-c1"]["comparable"]
    text = br.comparable_text(results)
    assert text.startswith("not comparable: latency-1024x256-c1: ")
    assert "; serve-1024x256-c16: 3 requests failed" in text
    assert br.comparable_text({}) == "not comparable: no results"


# ------------------------------------------------------------------------------------- charts


def test_profile_chart_writes_a_png(tmp_path: Path) -> None:
    results = standard()
    results["custom-512x128-c8"] = result("custom-512x128-c8", itl=0.0)  # zero on a log axis
    kept = tmp_path / "runs" / "ab12cd" / "artifacts" / "bench.png"
    kept.parents[1].mkdir(parents=True)
    out = br.profile_chart(results, kept, "run ab12cd")
    assert is_png(kept) and is_png(out)
    # the copy a chat is sent lies beside the run dirs, where only the host writes
    assert out == tmp_path / "runs" / ".outbox" / "ab12cd-bench.png"


def test_charts_are_none_when_empty(tmp_path: Path) -> None:
    assert br.profile_chart({}, tmp_path / "a.png", "empty") is None
    assert br.compare_chart([], tmp_path / "b.png") is None
    assert br.compare_chart([("ab12cd", "x", {})], tmp_path / "c.png") is None
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ changes


def by_key(found: list[br.Change]) -> dict[tuple[str, str], br.Change]:
    return {(c.profile, c.metric): c for c in found}


def test_changes_signs_and_directions() -> None:
    baseline = standard()
    current = standard()
    serve = current["serve-1024x256-c16"]
    serve["output_throughput"] = 1378.3 * 0.9  # fewer tokens: worse
    serve["median_ttft_ms"] = 112.5 * 0.8  # faster first token: better
    serve["median_tpot_ms"] = 10.9 * 1.1  # slower per token: worse
    serve["p99_itl_ms"] = baseline["serve-1024x256-c16"]["p99_itl_ms"]
    current["latency-1024x256-c1"]["output_throughput"] = 126.7 * 1.2  # better
    del current["longctx-8192x256-c4"]  # only in the baseline: left out
    current["custom-512x128-c8"] = result("custom-512x128-c8")  # only now: left out

    found = br.changes(current, baseline)
    assert {c.profile for c in found} == {"latency-1024x256-c1", "serve-1024x256-c16"}
    assert [c.profile for c in found[:4]] == ["latency-1024x256-c1"] * 4
    changed = by_key(found)
    tok = changed["serve-1024x256-c16", "output_throughput"]
    assert tok.before == 1378.3 and tok.pct == pytest.approx(-10.0) and tok.worse
    ttft = changed["serve-1024x256-c16", "median_ttft_ms"]
    assert ttft.pct == pytest.approx(-20.0) and not ttft.worse
    tpot = changed["serve-1024x256-c16", "median_tpot_ms"]
    assert tpot.pct == pytest.approx(10.0) and tpot.worse
    itl = changed["serve-1024x256-c16", "p99_itl_ms"]
    assert itl.pct == 0.0 and not itl.worse
    up = changed["latency-1024x256-c1", "output_throughput"]
    assert up.pct == pytest.approx(20.0) and not up.worse


def test_changes_skip_missing_and_zero_baselines() -> None:
    baseline = standard()
    del baseline["serve-1024x256-c16"]["p99_itl_ms"]
    baseline["serve-1024x256-c16"]["median_ttft_ms"] = 0.0
    found = by_key(br.changes(standard(), baseline))
    assert ("serve-1024x256-c16", "p99_itl_ms") not in found
    assert ("serve-1024x256-c16", "median_ttft_ms") not in found
    assert ("serve-1024x256-c16", "median_tpot_ms") in found


def test_regressions_respect_the_threshold() -> None:
    baseline = standard()
    current = standard()
    current["latency-1024x256-c1"]["output_throughput"] = 126.7 * (1 - 0.049)
    current["serve-1024x256-c16"]["output_throughput"] = 1378.3 * (1 - 0.051)
    current["longctx-8192x256-c4"]["median_ttft_ms"] = 812.4 * 1.051
    current["longctx-8192x256-c4"]["median_tpot_ms"] = 8.9 * 1.049
    current["serve-1024x256-c16"]["median_tpot_ms"] = 10.9 * 0.8  # much better: not flagged
    found = br.changes(current, baseline)
    flagged = {(c.profile, c.metric) for c in br.regressions(found, 5.0)}
    assert flagged == {
        ("serve-1024x256-c16", "output_throughput"),
        ("longctx-8192x256-c4", "median_ttft_ms"),
    }
    assert len(br.regressions(found, 4.0)) == 4
    assert br.regressions(found, 10.0) == []


def test_change_text_leads_with_regression_when_there_is_one() -> None:
    baseline = standard()
    current = standard()
    current["serve-1024x256-c16"]["output_throughput"] = 1301.0
    current["serve-1024x256-c16"]["median_tpot_ms"] = 10.9 * 1.2
    text = br.change_text(br.changes(current, baseline), "ab12cd", 5.0, "2026-11-22")
    lines = text.splitlines()
    assert lines[0] == "REGRESSION: 2 metric(s) worse than 5% against run ab12cd"
    assert lines[1] == "Against run ab12cd (2026-11-22):"
    assert "! serve-1024x256-c16 output tok/s 1378.3 -> 1301.0 (-5.6%, worse)" in lines
    assert "! serve-1024x256-c16 median TPOT ms 10.9 -> 13.1 (+20.0%, worse)" in lines
    assert lines[-1] == "  10 other metric(s) within ±1%"
    assert len(lines) == 5


def test_change_text_lists_a_small_regression_below_the_noise_floor() -> None:
    baseline = standard()
    current = standard()
    current["serve-1024x256-c16"]["output_throughput"] = 1378.3 * 0.995
    current["serve-1024x256-c16"]["median_ttft_ms"] = 112.5 * 0.995
    text = br.change_text(br.changes(current, baseline), "ab12cd", 0.4)
    assert text.startswith("REGRESSION: 1 metric(s) worse than 0.4% against run ab12cd\n")
    assert "! serve-1024x256-c16 output tok/s 1378.3 -> 1371.4 (-0.5%, worse)" in text
    assert "median TTFT" not in text
    assert text.endswith("  11 other metric(s) within ±1%")


def test_change_text_without_regression() -> None:
    baseline = standard()
    current = standard()
    current["serve-1024x256-c16"]["output_throughput"] = 1378.3 * 0.97
    current["serve-1024x256-c16"]["median_ttft_ms"] = 90.0
    text = br.change_text(br.changes(current, baseline), "ab12cd", 5.0)
    assert text.startswith("Against run ab12cd:")
    assert "REGRESSION" not in text
    assert "median TTFT ms 112.5 -> 90.0 (-20.0%, better)" in text
    assert "(-3.0%, worse)" in text
    assert "no profile in common" in br.change_text([], "ab12cd", 5.0)


# ---------------------------------------------------------------------------- side by side


def three_runs() -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    scout = standard()
    minimax = standard(hardware="8x H200", model="MiniMaxAI/MiniMax-M2.1")
    minimax["latency-1024x256-c1"]["output_throughput"] = 145.94
    del minimax["longctx-8192x256-c4"]
    pro = standard(hardware="8x H200 fallback (TP=8, eager)", model="deepseek-ai/DeepSeek-V4-Pro")
    pro["serve-1024x256-c16"] = result(
        "serve-1024x256-c16",
        90.1,
        2310.0,
        150.2,
        149.0,
        comparable=False,
        reason="incomplete: 180 of 200 requests completed",
        completed=180,
        failed=20,
    )
    return [
        ("ab12cd", "Llama 4 Scout", scout),
        ("cd34ef", "MiniMax M2.1", minimax),
        ("ef56ab", "DeepSeek V4 Pro", pro),
    ]


def test_compare_text_side_by_side() -> None:
    text = br.compare_text(three_runs())
    block, notes = text.split("\n```\n")
    lines = block.splitlines()
    assert lines[0] == "```"
    header = lines[2]
    assert header.split() == [
        "run",
        "label",
        "hardware",
        "c1",
        "tok/s",
        "c16",
        "tok/s",
        "c4",
        "tok/s",
    ]
    scout = next(line for line in lines if line.startswith("ab12cd "))
    assert "Llama 4 Scout" in scout and "8x H200" in scout
    assert scout.split()[-3:] == ["126.7", "1378.3", "404.4"]
    minimax = next(line for line in lines if line.startswith("cd34ef "))
    assert minimax.split()[-3:] == ["145.9", "1378.3", "-"]
    pro = next(line for line in lines if line.startswith("ef56ab* "))
    assert "fallback" in pro and pro.split()[-2] == "90.1"
    # second table: median TTFT/TPOT per profile
    second = lines.index("Median TTFT/TPOT ms (lower is better)")
    rows = lines[second + 2 :]
    assert rows[0].split()[-3:] == ["38.1/7.46", "112.5/10.9", "812.4/8.90"]
    assert rows[1].split()[-1] == "-"
    assert rows[2].startswith("ef56ab*") and "2310.0/150.2" in rows[2]
    assert "c1 = latency-1024x256-c1, c16 = serve-1024x256-c16" in notes
    assert (
        "* ef56ab: not comparable: serve-1024x256-c16: incomplete: 180 of 200 requests completed"
        in notes
    )
    assert "ab12cd:" not in notes and "cd34ef:" not in notes
    assert all(len(line) < 100 for line in lines)


def test_compare_text_keeps_headers_distinct() -> None:
    runs = [
        ("ab12cd", "a", {"custom-512x128-c8": result("custom-512x128-c8")}),
        ("cd34ef", "b", {"custom-1024x128-c8": result("custom-1024x128-c8")}),
    ]
    text = br.compare_text(runs)
    assert "512x128-c8 tok/s" in text and "1024x128-c8 tok/s" in text
    assert br.compare_text([]) == "No benchmark results to compare."


def test_compare_chart_writes_a_png(tmp_path: Path) -> None:
    kept = tmp_path / "runs" / "ab12cd" / "artifacts" / "compare.png"
    kept.parents[1].mkdir(parents=True)
    out = br.compare_chart(three_runs(), kept)
    assert is_png(out) and is_png(kept)


def test_server_counts_are_shown_beside_the_clients_and_odd_blocks_stay_harmless() -> None:
    good = {
        "total_output_tokens": 51200,
        "total_input_tokens": 204800,
        "server_metrics": {
            "available": True,
            "generation_tokens": 51200,
            "prompt_tokens": 204800,
            "kv_cache_usage_pct_peak": 37.04,
            "prefix_cache_hit_pct": 12.4,
            "running_peak": 16,
            "waiting_peak": 3,
            "preemptions": 0,
        },
    }
    odd = {
        "total_output_tokens": 10,
        "server_metrics": {
            "available": True,
            "generation_tokens": "lots",
            "kv_cache_usage_pct_peak": float("nan"),
            "note": "x\n" * 500,
        },
    }
    absent = {"server_metrics": {"available": False, "reason": "GET h/metrics -> HTTP 404"}}
    old = {"total_output_tokens": 10}  # a result from before /metrics was read
    text = br.server_text(
        {"serve-1024x256-c16": good, "custom-1x1-c1": odd, "custom-2x2-c1": absent, "x": old}
    )
    assert text is not None
    lines = text.splitlines()
    assert lines[0] == (
        "serve-1024x256-c16 server: 51,200 generated tokens (server count) vs 51,200 client"
        " count; 204,800 prompt tokens (server count) vs 204,800 client count;"
        " KV cache peak 37.0%; prefix hits 12%; max running 16; max waiting 3"
    )
    assert lines[1].startswith("custom-1x1-c1 server: x x x") and len(lines[1]) < 250
    assert lines[2] == "custom-2x2-c1 server: no metrics (GET h/metrics -> HTTP 404)"
    assert len(lines) == 3
    assert br.server_text({"x": old}) is None
