"""What a benchmark run's chat gets at the end, and the server statistics shown meanwhile.

The report: the table per profile, whether the run counts as comparable (and why not), the
server's own counts from its /metrics beside the client's, a chart, where the result files
are, and the change against the last comparable run of the same model. The server's log
lines (vLLM's periodic statistics) are read only where /metrics gave nothing: they vanish
with `--disable-log-stats` and exist only for a server the host started. A change worse
than ASSISTANT_BENCH_REGRESSION_PCT opens the report with a line in capitals: nightly
benchmark tasks are read by someone skimming a phone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.jobs import protocol
from assistant.jobs.bench.engine_stats import parse_engine_line
from assistant.jobs.bench.server_metrics import SCRAPES_METRIC
from assistant.reply import Reply
from assistant.runs.bench_report import (
    change_text,
    changes,
    comparable_text,
    has_server_metrics,
    load_results,
    profile_chart,
    regressions,
    server_text,
    table_text,
)
from assistant.runs.lifecycle import RunState
from assistant.runs.report import summary_text
from storage.runs import RunRecord, RunRepo

if TYPE_CHECKING:
    from assistant.config import Settings

log = logging.getLogger(__name__)

BENCH_DIR = "bench"  # under the run's artifacts/
SERVER_TAIL = 15


def engine_metrics(lines: Iterable[str]) -> dict[str, float]:
    """The latest engine statistics among a server's log lines, as run metrics."""
    out: dict[str, float] = {}
    for line in lines:
        stats = parse_engine_line(line)
        if stats is None:
            continue
        for name, value in (
            ("engine_prompt_tok_s", stats.prompt_throughput),
            ("engine_gen_tok_s", stats.generation_throughput),
            ("kv_cache_pct", stats.kv_cache_usage),
            ("prefix_hit_pct", stats.prefix_cache_hit_rate),
            ("engine_running", stats.running),
        ):
            if value is not None:
                out[name] = float(value)
    return out


def reads_server_metrics(run: RunRecord) -> bool:
    """Whether the benchmark job reads the server's /metrics itself (its log is then not read)."""
    scrapes = run.metrics.get(SCRAPES_METRIC)
    return isinstance(scrapes, int | float) and scrapes > 0


def log_stats_text(run: RunRecord) -> str | None:
    """The server's latest log-line statistics, for a run whose server had no /metrics."""
    shown = []
    for name, label, unit in (
        ("engine_gen_tok_s", "generation", " tok/s"),
        ("engine_prompt_tok_s", "prompt", " tok/s"),
        ("kv_cache_pct", "KV cache", "%"),
        ("prefix_hit_pct", "prefix hits", "%"),
        ("engine_running", "running", ""),
    ):
        value = run.metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown.append(f"{label} {value:,.1f}{unit}")
    if not shown:
        return None
    return "Server (its last log statistics, no /metrics): " + ", ".join(shown)


def comparable_only(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in results.items() if r.get("comparable")}


async def baseline(
    repo: RunRepo, runs_dir: Path, run: RunRecord
) -> tuple[RunRecord, dict[str, dict[str, Any]]] | None:
    """The last earlier run of the same model with comparable results for a shared profile."""
    mine = set(load_results(runs_dir / run.id))
    for earlier in await repo.bench_history(str(run.params.get("model")), run.created_at):
        results = comparable_only(load_results(runs_dir / earlier.id))
        if mine & set(results):
            return earlier, results
    return None


async def bench_report(
    repo: RunRepo, settings: Settings, run: RunRecord, cause: str | None, server_tail: list[str]
) -> Reply:
    run_dir = settings.runs_dir / run.id
    results = load_results(run_dir)
    parts = [summary_text(run, cause, run_dir) if run.state != RunState.SUCCEEDED else _head(run)]
    if results:
        parts += [table_text(results), comparable_text(results)]
        server = server_text(results)
        if server is not None:
            parts.append(server)
        if not has_server_metrics(results):
            fallback = log_stats_text(run)
            if fallback is not None:
                parts.append(fallback)
        parts.append(f"Result files: {run_dir / protocol.ARTIFACTS / BENCH_DIR}")
        found = await baseline(repo, settings.runs_dir, run)
        threshold = settings.bench_regression_pct
        if found is not None:
            earlier, before = found
            diff = changes(comparable_only(results), before)
            if diff:
                text = change_text(diff, earlier.id, threshold)
                # a regression opens the report: it must not be missed on a phone
                if regressions(diff, threshold):
                    parts.insert(0, text)
                else:
                    parts.append(text)
        elif run.state == RunState.SUCCEEDED:
            parts.append(f"First comparable benchmark of {run.params.get('model')}: a baseline.")
    if run.state != RunState.SUCCEEDED and server_tail:
        parts.append(
            "Server's last lines:\n" + "\n".join(f"  {x[:200]}" for x in server_tail[-SERVER_TAIL:])
        )
    images: tuple[Path, ...] = ()
    if results:
        try:
            chart = await asyncio.to_thread(
                profile_chart,
                results,
                run_dir / protocol.ARTIFACTS / "bench.png",
                f"run {run.id} · {run.params.get('model')}",
            )
            images = (chart,) if chart is not None else ()
        except Exception:
            log.exception("could not chart benchmark run %s", run.id)
    return Reply("\n".join(parts), images)


def _head(run: RunRecord) -> str:
    p = run.params
    return (
        f"Benchmark {run.id} ({p.get('model')}) succeeded · {p.get('hardware')}"
        f" · {p.get('engine')} {p.get('engine_version') or ''}".rstrip()
    )
