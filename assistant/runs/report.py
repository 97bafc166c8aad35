"""The report a run's chat gets when it ends: text, and a PNG of the training curves."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.durations import format_duration
from assistant.jobs import protocol
from assistant.jobs.text import decoded
from assistant.runs import rundir
from assistant.runs.events import parse_line
from assistant.runs.lifecycle import RunState
from storage.runs import RunRecord
from storage.timestamps import from_iso

if TYPE_CHECKING:
    from assistant.reply import Reply

LOG_TAIL = 15
EVENTS_FOR_PLOT = 32 * 1024 * 1024  # bytes of events.jsonl read for the report's plot
TAIL_BYTES = 64 * 1024  # of a log, for its last lines
MAX_ETA = timedelta(days=365)  # beyond it an ETA says only that the rate is off
OUTBOX = ".outbox"  # beside the run dirs: the host's copies of the images it sends

# (chat, text or reply, event it answers) -> whatever the sender returns
Notify = Callable[[str, "str | Reply", "int | None"], Awaitable[object]]
# (chat, text, message id to edit or None) -> the message id to edit next time
# show_progress(chat_id, text, message id to edit or None, thread key) -> the id to edit next
ShowProgress = Callable[[str, str, "str | None", "str | None"], Awaitable["str | None"]]


def read_events(run_dir: Path, limit: int = EVENTS_FOR_PLOT) -> list[dict[str, Any]]:
    """The run's complete, well-formed event lines (its first `limit` bytes; a torn last
    line and unusable lines are left out; a symlink or FIFO in its place reads as none)."""
    try:
        data = rundir.read_bytes(run_dir, protocol.EVENTS, limit=limit)
    except OSError:
        return []
    events = []
    for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
        if line.strip():
            event = parse_line(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def log_tail(run_dir: Path, n: int = LOG_TAIL) -> list[str]:
    """The run's last output lines; the agent's own log when the run printed nothing.

    A log that is a symlink, FIFO or device is not read: its place says so instead.
    """
    for name in (protocol.STDOUT, "agent.log"):
        try:
            data = rundir.read_tail(run_dir, name, limit=TAIL_BYTES)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return [f"({name} not read: {exc.strerror or exc})"]
        lines = decoded(data).splitlines()
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
    return plot_curves(f"run {run.id} · {run.recipe}", events, out)


def plot_curves(title: str, events: list[dict[str, Any]], out: Path) -> Path | None:
    """`plot` under any title (a watched job's report draws the same curves)."""
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
    axes[0][0].set_title(title)
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Any, out: Path) -> Path:
    """A figure as PNG at `<run dir>/<folder>/<name>`; the path of the copy to send.

    The run can write its artifacts/ folder, so the file there is replaced (never
    followed) and kept for the user, but what a chat is sent is a copy in OUTBOX beside
    the run dirs, which only the host writes: a run still alive cannot swap it for a
    link to a host file between our write and the upload.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    data = buffer.getvalue()
    run_dir = out.parents[1]
    rundir.make_dir(run_dir, out.parent.name)
    rundir.write_beside(out, data)
    outbox = run_dir.parent / OUTBOX
    outbox.mkdir(mode=0o700, exist_ok=True)
    return rundir.write_file(outbox, f"{run_dir.name}-{out.name}", data, mode=0o600)


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
    if run.state in (RunState.FAILED, RunState.LOST) and cause:
        lines.append(f"Cause: {cause}")
    if run.state == RunState.PAUSED:
        lines.append(f"Resume with /run resume {run.id}")
    if run.state in (RunState.FAILED, RunState.LOST):
        tail = log_tail(run_dir)
        if tail:
            lines.append("Last log lines:")
            lines.extend(f"  {line[:200]}" for line in tail)
    return "\n".join(lines)


def eta(step: int, total: int | None, steps_per_s: float | None) -> timedelta | None:
    """Time left at `steps_per_s`; None without a sound rate, or when it would be wild."""
    if not total or not steps_per_s or not math.isfinite(steps_per_s) or steps_per_s <= 0:
        return None
    if step >= total:
        return None
    left = (total - step) / steps_per_s
    return timedelta(seconds=left) if left <= MAX_ETA.total_seconds() else None


def rate_text(value: float, unit: str) -> str:
    """A rate to three figures or so: `3,049,013 steps/s` never shows cents."""
    if value >= 100:
        return f"{value:,.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    if value >= 1:
        return f"{value:.2f} {unit}"
    return f"{value:.2g} {unit}"
