"""Serving benchmark reports: tables for chat, PNG charts, and changes against a baseline.

A benchmark run leaves one `vllm bench serve` style JSON file per profile under
`artifacts/bench/`. These functions turn one run, a run against its baseline, or several
runs side by side into what a chat can show: monospace tables in a code block (chat apps
keep the columns aligned there) and charts written to a PNG path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.jobs.bench.server_metrics import server_line
from assistant.runs import rundir
from assistant.runs.events import valid_json
from assistant.runs.report import save_figure

BENCH_DIR = Path("artifacts") / "bench"
STANDARD_KINDS = ("latency", "serve", "longctx")
LATENCY_NAMES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")
MISSING = "-"
MAX_REASON = 200
NOISE_PCT = 1.0  # smaller moves are listed only as a count: run-to-run noise, not news

Results = Mapping[str, Mapping[str, Any]]
RunEntry = tuple[str, str, Mapping[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class Metric:
    """A figure compared against a baseline, and which way is better."""

    key: str
    label: str
    higher_is_better: bool


COMPARED = (
    Metric("output_throughput", "output tok/s", True),
    Metric("median_ttft_ms", "median TTFT ms", False),
    Metric("median_tpot_ms", "median TPOT ms", False),
    Metric("p99_itl_ms", "p99 ITL ms", False),
)


@dataclass(frozen=True)
class Change:
    """One metric of one profile, baseline to current; `pct` is signed, `worse` knows direction."""

    profile: str
    metric: str
    before: float
    after: float
    pct: float
    worse: bool


# ------------------------------------------------------------------------------------ loading


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Digits compare as numbers, so `custom-512x...` sorts before `custom-1024x...`."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def profile_order(name: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Standard kinds in the matrix's order (latency, serve, longctx), then the rest by name."""
    kind = name.split("-", 1)[0]
    rank = STANDARD_KINDS.index(kind) if kind in STANDARD_KINDS else len(STANDARD_KINDS)
    return (rank, _natural(name))


def _ordered(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=profile_order)


def _read_result(run_dir: Path, rel: str) -> dict[str, Any] | None:
    """One result file; None for anything unreadable, so one bad file costs one profile.

    Read as untrusted: no symlink followed, no FIFO opened, at most 1 MiB, text made valid.
    """
    data = valid_json(rundir.read_json(run_dir, rel))
    return data if isinstance(data, dict) else None


def load_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Profile name -> result dict from `<run_dir>/artifacts/bench/*.json`, standard first."""
    found: dict[str, dict[str, Any]] = {}
    for name in rundir.names(run_dir, BENCH_DIR.as_posix(), limit=200):
        if not name.endswith(".json") or name.endswith(".requests.json"):
            continue
        result = _read_result(run_dir, f"{BENCH_DIR.as_posix()}/{name}")
        if result is not None:
            found[name[: -len(".json")]] = result
    return {name: found[name] for name in _ordered(found)}


# ----------------------------------------------------------------------------------- numbers


def _value(result: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a result; None when absent or not a number."""
    raw = result.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def fmt(value: float | None) -> str:
    """Compact: 12346, 1378.3, 45.2, 7.23; `-` for a missing figure."""
    if value is None:
        return MISSING
    size = abs(value)
    if size >= 10_000:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _stat_group(result: Mapping[str, Any], latency: str) -> str:
    return "/".join(fmt(_value(result, f"{stat}_{latency}_ms")) for stat in STATS)


def _count(result: Mapping[str, Any], key: str) -> str:
    value = _value(result, key)
    return MISSING if value is None else str(int(value))


def _grid(rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    """Columns padded to their widest cell; text columns left, figures right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i >= right_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _code_block(lines: Iterable[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


# ------------------------------------------------------------------------------ one run: text


def table_text(results: Results) -> str:
    """One row per profile: output tok/s, TTFT and TPOT (mean/median/p90/p99 ms), ok/failed."""
    if not results:
        return "No benchmark results."
    rows: list[list[str]] = [
        ["profile", "out tok/s", "TTFT ms mean/med/p90/p99", "TPOT ms mean/med/p90/p99", "ok/fail"]
    ]
    for name in _ordered(results):
        result = results[name]
        rows.append(
            [
                name,
                fmt(_value(result, "output_throughput")),
                _stat_group(result, "ttft"),
                _stat_group(result, "tpot"),
                f"{_count(result, 'completed')}/{_count(result, 'failed')}",
            ]
        )
    return _code_block(_grid(rows))


def _verdicts(results: Results) -> list[tuple[str, str]]:
    """(profile, reason) for each profile the job did not mark comparable."""
    failing = []
    for name in _ordered(results):
        result = results[name]
        if result.get("comparable") is True:
            continue
        reason = result.get("comparable_reason")
        if "comparable" not in result:
            reason = "no comparability verdict in the result"
        failing.append((name, str(reason) if reason else "no reason given"))
    return failing


def is_comparable(results: Results) -> bool:
    """A run is comparable only when it has results and every profile is."""
    return bool(results) and not _verdicts(results)


def comparable_text(results: Results) -> str:
    """`comparable`, or `not comparable: <profile>: <reason>; ...` naming every failing profile."""
    if not results:
        return "not comparable: no results"
    failing = _verdicts(results)
    if not failing:
        return "comparable"
    return "not comparable: " + "; ".join(f"{name}: {reason}" for name, reason in failing)


def has_server_metrics(results: Results) -> bool:
    """Whether any profile carries figures from the server's own /metrics."""
    return any(_server_block(r).get("available") is True for r in results.values())


def _server_block(result: Mapping[str, Any]) -> Mapping[str, Any]:
    block = result.get("server_metrics")
    return block if isinstance(block, Mapping) else {}


def server_text(results: Results) -> str | None:
    """One line per profile: the server's own counts from /metrics beside the client's.

    `custom-32x16-c4 server: 192 generated tokens (server count) vs 192 client count; ...`;
    a profile whose server published none says why. None when no result has the block
    (results from before the benchmark read /metrics).
    """
    lines = []
    for name in _ordered(results):
        result = results[name]
        block = _server_block(result)
        if not block:
            continue
        line = server_line(
            block, result.get("total_output_tokens"), result.get("total_input_tokens")
        )
        lines.append(f"{name} {line}")
    return "\n".join(lines) or None


# ----------------------------------------------------------------------------- one run: chart


def _grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (math.ceil(n / cols), cols)


def profile_chart(results: Results, out: Path, title: str) -> Path | None:
    """Per profile, TTFT/TPOT/ITL/E2EL at mean/median/p90/p99 on a log axis; None if empty.

    A log axis because E2EL (seconds) and TTFT under long prompts dwarf TPOT and ITL
    (milliseconds); on a linear axis the per-token figures would be invisible.
    """
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _ordered(results)
    rows, cols = _grid_shape(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    width = 0.8 / len(STATS)
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        result = results[name]
        for offset, stat in enumerate(STATS):
            xs, heights = [], []
            for group, latency in enumerate(LATENCY_NAMES):
                value = _value(result, f"{stat}_{latency}_ms")
                if value is not None and value > 0:  # a log axis cannot show zero
                    xs.append(group + (offset - (len(STATS) - 1) / 2) * width)
                    heights.append(value)
            bars = ax.bar(xs, heights, width, label=stat)
            ax.bar_label(bars, labels=[fmt(h) for h in heights], fontsize=6, rotation=90)
        ax.set_yscale("log")
        ax.set_xticks(range(len(LATENCY_NAMES)), [n.upper() for n in LATENCY_NAMES])
        ax.set_ylabel("ms (log scale)")
        ax.margins(y=0.25)
        ax.grid(axis="y", alpha=0.3, which="both")
        tok_s = fmt(_value(result, "output_throughput"))
        mark = "" if result.get("comparable") is True else " *"
        ax.set_title(f"{name}{mark}\n{tok_s} output tok/s", fontsize=10)
    for index in range(len(names), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


# -------------------------------------------------------------------------- against a baseline


def _change(profile: str, metric: Metric, before: float, after: float) -> Change:
    pct = (after - before) / before * 100.0
    worse = after < before if metric.higher_is_better else after > before
    return Change(profile, metric.key, before, after, pct, worse)


def changes(current: Results, baseline: Results) -> list[Change]:
    """The compared metrics for profiles both runs have; a zero or missing baseline is skipped."""
    found = []
    for name in _ordered(current):
        if name not in baseline:
            continue
        for metric in COMPARED:
            before = _value(baseline[name], metric.key)
            after = _value(current[name], metric.key)
            if before is None or after is None or before == 0:
                continue
            found.append(_change(name, metric, before, after))
    return found


def regressions(found: Sequence[Change], threshold_pct: float) -> list[Change]:
    """Changes for the worse by more than `threshold_pct` percent (exactly at it is not)."""
    return [c for c in found if c.worse and abs(c.pct) > threshold_pct]


def _metric_label(key: str) -> str:
    return next((m.label for m in COMPARED if m.key == key), key)


def _change_line(change: Change, flagged: bool) -> str:
    verdict = "worse" if change.worse else "better" if change.after != change.before else "same"
    return (
        f"{'!' if flagged else ' '} {change.profile} {_metric_label(change.metric)}"
        f" {fmt(change.before)} -> {fmt(change.after)} ({change.pct:+.1f}%, {verdict})"
    )


def change_text(
    found: Sequence[Change],
    baseline_run_id: str,
    threshold_pct: float,
    baseline_when: str | None = None,
) -> str:
    """Changes of at least NOISE_PCT one a line (`!` marks regressions), the rest as a count.

    A capitalised REGRESSION line comes first when any change crosses the threshold, so a
    chat preview shows it even when the block is cut.
    """
    when = f" ({baseline_when})" if baseline_when else ""
    if not found:
        return f"Against run {baseline_run_id}{when}: no profile in common to compare."
    bad = regressions(found, threshold_pct)
    lines = []
    if bad:
        lines.append(
            f"REGRESSION: {len(bad)} metric(s) worse than {threshold_pct:g}%"
            f" against run {baseline_run_id}"
        )
    lines.append(f"Against run {baseline_run_id}{when}:")
    shown = [c for c in found if c in bad or abs(c.pct) >= NOISE_PCT]
    lines.extend(_change_line(c, c in bad) for c in shown)
    quiet = len(found) - len(shown)
    if quiet:
        lines.append(f"  {quiet} other metric(s) within ±{NOISE_PCT:g}%")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ runs side by side


def _short_names(profiles: Sequence[str]) -> dict[str, str]:
    """Column headers like the reference's `c1`/`c16`/`c4`, longer only where needed to differ."""

    def levels(name: str) -> tuple[str, str, str]:
        rest = name.split("-", 1)[1] if "-" in name else name
        tail = rest.split("-", 1)[1] if "-" in rest else rest
        return (tail, rest, name)

    for level in range(3):
        short = {p: levels(p)[level] for p in profiles}
        if len(set(short.values())) == len(profiles):
            return short
    return {p: p for p in profiles}


def _hardware(results: Results) -> str:
    for name in _ordered(results):
        meta = results[name].get("run_metadata")
        if isinstance(meta, Mapping) and meta.get("hardware"):
            return str(meta["hardware"])
    return MISSING


def _run_profiles(runs: Sequence[RunEntry]) -> list[str]:
    return _ordered(name for _, _, results in runs for name in results)


def _ttft_tpot(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return MISSING
    return f"{fmt(_value(result, 'median_ttft_ms'))}/{fmt(_value(result, 'median_tpot_ms'))}"


def _throughput(result: Mapping[str, Any] | None) -> str:
    return MISSING if result is None else fmt(_value(result, "output_throughput"))


def _run_rows(
    runs: Sequence[RunEntry], profiles: Sequence[str], short: Mapping[str, str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Header plus one row per run for both tables: (tok/s rows, TTFT/TPOT rows)."""
    head = ["run", "label", "hardware"]
    tok = [head + [f"{short[p]} tok/s" for p in profiles]]
    lat = [head + [short[p] for p in profiles]]
    for run_id, label, results in runs:
        mark = "" if is_comparable(results) else "*"
        first = [f"{run_id}{mark}", label, _hardware(results)]
        tok.append(first + [_throughput(results.get(p)) for p in profiles])
        lat.append(first + [_ttft_tpot(results.get(p)) for p in profiles])
    return tok, lat


def compare_text(runs: Sequence[RunEntry]) -> str:
    """The reference's side-by-side table: output tok/s per profile, then median TTFT/TPOT.

    `runs` holds (run id, label such as the model, results); a run without a profile shows
    `-`, and a run that is not comparable is starred with its reasons in a footnote.
    """
    profiles = _run_profiles(runs)
    if not profiles:
        return "No benchmark results to compare."
    short = _short_names(profiles)
    tok, lat = _run_rows(runs, profiles, short)
    lines = ["Output tok/s (higher is better)", *_grid(tok, right_from=3), ""]
    lines += ["Median TTFT/TPOT ms (lower is better)", *_grid(lat, right_from=3)]
    notes = []
    if any(short[p] != p for p in profiles):
        notes.append(", ".join(f"{short[p]} = {p}" for p in profiles))
    for run_id, _, results in runs:
        if not is_comparable(results):
            reason = comparable_text(results)
            if len(reason) > MAX_REASON:
                reason = reason[: MAX_REASON - 3] + "..."
            notes.append(f"* {run_id}: {reason}")
    return "\n".join([_code_block(lines), *notes])


def compare_chart(runs: Sequence[RunEntry], out: Path) -> Path | None:
    """Output tok/s per profile, one panel each with its own scale, one bar per run, best first.

    Each run keeps its colour in every panel; non-comparable runs are hatched and starred.
    """
    profiles = _run_profiles(runs)
    if not profiles:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    colours = {run_id: palette(i % 10) for i, (run_id, _, _) in enumerate(runs)}
    rows, cols = _grid_shape(len(profiles))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(5.0, 0.9 * len(runs) + 2) * cols, 4.2 * rows), squeeze=False
    )
    for index, profile in enumerate(profiles):
        ax = axes[index // cols][index % cols]
        bars = []
        for run_id, label, results in runs:
            value = _value(results[profile], "output_throughput") if profile in results else None
            if value is not None:
                star = "" if is_comparable(results) else "*"
                name = f"{label}\n{run_id}{star}" if label else f"{run_id}{star}"
                bars.append((value, name, run_id, bool(star)))
        bars.sort(key=lambda bar: -bar[0])
        drawn = ax.bar(range(len(bars)), [b[0] for b in bars], color=[colours[b[2]] for b in bars])
        for patch, bar in zip(drawn, bars, strict=True):
            if bar[3]:
                patch.set_hatch("//")
        ax.bar_label(drawn, labels=[fmt(b[0]) for b in bars], fontsize=8)
        ax.set_xticks(range(len(bars)), [b[1] for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("output tok/s")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{profile}: output tok/s (higher = better)", fontsize=10)
    for index in range(len(profiles), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out)
