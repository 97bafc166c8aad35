"""Per-request records to the figures `vllm bench serve` saves, the files, and comparability.

Field names and definitions follow vLLM's `calculate_metrics`, so a result from here sits
beside one from `vllm bench serve --save-result` in the same table: TPOT per request is
(E2EL - TTFT) / (output tokens - 1) over requests with more than one token, ITL pools
the gaps of every request, std is the population std, percentiles interpolate linearly
(numpy's default). Standard library only: the run image may lack numpy.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant.jobs.bench.profiles import Profile

PERCENTILES = (90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One timed request; times in seconds, `start` from the profile's start."""

    index: int
    start: float = 0.0
    prompt_len: int = 0  # the server's usage.prompt_tokens when it sent one
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2el: float | None = None
    output_tokens: int = 0
    ok: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ProfileRun:
    """What the client measured for one profile."""

    profile: Profile
    records: list[RequestRecord]
    duration: float  # wall clock from the first dispatch to the last answer
    input_lengths_exact: bool  # token-id prompts: yes; chat text: approximate
    stopped: bool = False  # interrupted before every prompt was sent and answered
    warmup_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunMetadata:
    """The enrichment block's run-wide fields (the profile supplies the rest)."""

    model: str
    served_model_name: str
    endpoint: str  # "/v1/completions" or "/v1/chat/completions"
    hardware: str = ""
    engine: str = "vLLM"
    engine_version: str = ""
    cluster_label: str = ""
    server_healthy: bool = False
    url: str = ""


def percentile(values: Sequence[float], pct: float) -> float:
    """numpy.percentile's default (linear interpolation between closest ranks); 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(name: str, seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0,
    }
    for pct in PERCENTILES:
        out[f"p{pct}_{name}_ms"] = percentile(ms, pct)
    return out


def build_result(run: ProfileRun, meta: RunMetadata) -> dict[str, Any]:
    """The result dict for one profile: vLLM's field names plus a `run_metadata` block."""
    profile = run.profile
    ok = [r for r in run.records if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2els = [r.e2el for r in ok if r.e2el is not None]
    tpots = [
        (r.e2el - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.output_tokens > 1 and r.e2el is not None and r.ttft is not None
    ]
    itls = [gap for r in ok for gap in r.itl]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    duration = run.duration
    per_s = 1.0 / duration if duration > 0 else 0.0
    errors = Counter(r.error or "unknown error" for r in run.records if not r.ok)
    result: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(run.records) - len(ok),
        "num_prompts": profile.num_prompts,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) * per_s,
        "output_throughput": total_out * per_s,
        "total_token_throughput": (total_in + total_out) * per_s,
        "max_concurrency": profile.concurrency,
        "request_rate": profile.rate_label,
        "errors": dict(errors.most_common(20)),  # message -> count, the commonest first
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        result.update(_stats(name, values))
    result["run_metadata"] = {
        "model": meta.model,
        "served_model_name": meta.served_model_name,
        "benchmark_type": "serve",
        "dataset_name": "random",
        "input_len": profile.input_len,
        "output_len": profile.output_len,
        "num_prompts": profile.num_prompts,
        "max_concurrency": profile.concurrency,
        "request_rate": profile.rate_label,
        "endpoint": meta.endpoint,
        "url": meta.url,
        "hardware": meta.hardware,
        "engine": meta.engine,
        "engine_version": meta.engine_version,
        "cluster_label": meta.cluster_label,
        "result_tag": profile.name,
        "saved_at_utc": datetime.now(UTC).isoformat(),
        "input_lengths_exact": run.input_lengths_exact,
        "server_healthy": meta.server_healthy,
        "stopped": run.stopped,
        "warmup_errors": list(run.warmup_errors),
    }
    return result


def comparable(result: dict[str, Any], profile: Profile) -> tuple[bool, str | None]:
    """Whether a result may stand in a comparison table; if not, every reason, in words."""
    meta = result.get("run_metadata") or {}
    reasons: list[str] = []
    completed, failed = int(result.get("completed", 0)), int(result.get("failed", 0))
    if meta.get("stopped"):
        reasons.append("stopped before the profile finished")
    if completed < profile.num_prompts:
        reasons.append(f"incomplete: {completed} of {profile.num_prompts} requests completed")
    if failed:
        errors = result.get("errors") or {}
        first = next(iter(errors), None)
        reasons.append(f"{failed} requests failed" + (f" (e.g. {first})" if first else ""))
    want_out = profile.num_prompts * profile.output_len
    if result.get("total_output_tokens") != want_out:
        reasons.append(
            f"output tokens {result.get('total_output_tokens')} != {want_out} expected"
            f" ({profile.num_prompts} x {profile.output_len})"
        )
    want_in = profile.num_prompts * profile.input_len
    if meta.get("input_lengths_exact") and result.get("total_input_tokens") != want_in:
        reasons.append(
            f"input tokens {result.get('total_input_tokens')} != {want_in} expected"
            f" ({profile.num_prompts} x {profile.input_len})"
        )
    if not meta.get("server_healthy"):
        reasons.append("server health was not confirmed")
    return (not reasons, "; ".join(reasons) or None)


def _atomic_write(path: Path, text: str) -> None:
    """tmp + os.replace: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_result(directory: Path, result: dict[str, Any]) -> Path:
    """`<dir>/<profile>.json`, the way the reference's enrichment step writes it."""
    name = str(result["run_metadata"]["result_tag"])
    path = directory / f"{name}.json"
    _atomic_write(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def write_requests(directory: Path, name: str, records: Iterable[RequestRecord]) -> Path:
    """`<dir>/<profile>.requests.jsonl`: one request a line, in send order."""
    path = directory / f"{name}.requests.jsonl"
    lines = (json.dumps(asdict(r), separators=(",", ":")) for r in records)
    _atomic_write(path, "".join(line + "\n" for line in lines))
    return path


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The few figures a chat summary and the run's `final` block carry."""
    keys = (
        "output_throughput",
        "request_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_tpot_ms",
        "p99_tpot_ms",
        "median_itl_ms",
        "p99_itl_ms",
        "median_e2el_ms",
        "completed",
        "failed",
    )
    return {key: result[key] for key in keys}


def summary_line(name: str, result: dict[str, Any], reason: str | None) -> str:
    """One line per profile for the run's log."""
    line = (
        f"{name}: {result['completed']}/{result['num_prompts']} ok"
        f" ({result['failed']} failed) in {result['duration']:.1f} s,"
        f" {result['output_throughput']:,.1f} output tok/s,"
        f" TTFT median {result['median_ttft_ms']:.1f} ms p99 {result['p99_ttft_ms']:.1f} ms,"
        f" TPOT median {result['median_tpot_ms']:.2f} ms,"
        f" ITL p99 {result['p99_itl_ms']:.2f} ms"
    )
    return line + (" [comparable]" if reason is None else f" [not comparable: {reason}]")
