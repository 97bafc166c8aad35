"""The report a run's chat gets when it ends: text, and a PNG of the training curves."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from assistant.durations import format_duration
from assistant.jobs import protocol
from storage.runs import RunRecord
from storage.timestamps import from_iso

LOG_TAIL = 15


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete event line of a run (a torn last line is left out)."""
    try:
        data = (run_dir / protocol.EVENTS).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def log_tail(run_dir: Path, n: int = LOG_TAIL) -> list[str]:
    """The run's last output lines; the agent's own log when the run printed nothing."""
    for name in (protocol.STDOUT, "agent.log"):
        try:
            with open(run_dir / name, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            continue
        if lines:
            return lines[-n:]
    return []


def curves(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Series to plot: training loss from progress events, every metric by name."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for event in events:
        kind = event.get("type")
        try:
            if kind == "progress" and event.get("loss") is not None:
                series["loss"].append((int(event["step"]), float(event["loss"])))
            elif kind == "metric":
                series[str(event["name"])].append((int(event["step"]), float(event["value"])))
        except (KeyError, TypeError, ValueError):
            continue
    return dict(series)


def plot(run: RunRecord, events: list[dict[str, Any]], out: Path) -> Path | None:
    """Loss curves (and other metrics on a second panel); None when there is nothing."""
    series = curves(events)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if "loss" not in k}
    panels = [p for p in (losses, others) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, points in sorted(panel.items()):
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_title(f"run {run.id} · {run.recipe}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def number(value: object) -> str:
    """A metric as reports and /run show print it."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_text(run: RunRecord, cause: str | None, run_dir: Path) -> str:
    """What ended, how long it took, the numbers that matter, and why it failed."""
    started = from_iso(run.started_at) if run.started_at else None
    ended = from_iso(run.ended_at) if run.ended_at else None
    took = format_duration(ended - started) if started and ended else "?"
    total = f"/{run.total}" if run.total else ""
    lines = [f"Run {run.id} ({run.recipe}) {run.state} after {took} · step {run.step}{total}"]
    for label, values in (("Final", run.metrics), ("Best", run.best)):
        if values:
            shown = ", ".join(f"{k} {number(v)}" for k, v in sorted(values.items()))
            lines.append(f"{label}: {shown}")
    if run.checkpoint:
        lines.append(f"Checkpoint: {run_dir / run.checkpoint}")
    if run.state in ("failed", "lost") and cause:
        lines.append(f"Cause: {cause}")
    if run.state == "paused":
        lines.append(f"Resume with /run resume {run.id}")
    if run.state in ("failed", "lost"):
        tail = log_tail(run_dir)
        if tail:
            lines.append("Last log lines:")
            lines.extend(f"  {line[:200]}" for line in tail)
    return "\n".join(lines)


def eta(step: int, total: int | None, steps_per_s: float | None) -> timedelta | None:
    if not total or not steps_per_s or steps_per_s <= 0 or step >= total:
        return None
    return timedelta(seconds=(total - step) / steps_per_s)
