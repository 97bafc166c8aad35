"""A watched job's files in the assistant's home, and the report its chat gets at its end.

`ASSISTANT_HOME/watches/<id>/` is written by the host only: `output.log` (the job's lines
as valid text, each cut at `KEEP_CHARS`, rotated at `ROTATE_BYTES` to `output.log.1`),
`events.jsonl` (the progress and metric events its lines stood for, in the run-dir
protocol, so the runs' plot code draws them) and `artifacts/curves.png`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from assistant.durations import format_duration
from assistant.jobs import protocol
from assistant.jobs.text import decoded
from assistant.runs import rundir
from assistant.runs.report import number, plot_curves, read_events
from storage.timestamps import from_iso
from storage.watches import WatchRecord

OUTPUT = "output.log"
KEEP_CHARS = 2000  # of one output line, in output.log
ROTATE_BYTES = 1024 * 1024  # output.log is moved to output.log.1 past this
EVENTS_LIMIT = 32 * 1024 * 1024  # events.jsonl stops growing here (the plot reads as much)
TAIL_BYTES = 64 * 1024
TAIL_LINES = 15


def watch_dir(home: Path, watch_id: str) -> Path:
    return home / "watches" / watch_id


def make_dir(home: Path, watch_id: str) -> Path:
    root = home / "watches"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    rundir.make_dir(root, watch_id, 0o700)
    return root / watch_id


def append_output(folder: Path, texts: list[str]) -> None:
    """The job's new lines, each cut to KEEP_CHARS; rotated past ROTATE_BYTES."""
    data = "".join(
        (t if len(t) <= KEEP_CHARS else t[:KEEP_CHARS] + " …[cut]") + "\n" for t in texts
    ).encode()
    fd = rundir.open_append(folder, OUTPUT, 0o600)
    try:
        if os.fstat(fd).st_size + len(data) > ROTATE_BYTES:
            os.replace(folder / OUTPUT, folder / f"{OUTPUT}.1")
            os.close(fd)
            fd = rundir.open_append(folder, OUTPUT, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def append_events(folder: Path, events: list[dict[str, Any]]) -> None:
    """Progress and metric events for the plot (until events.jsonl reaches EVENTS_LIMIT)."""
    fd = rundir.open_append(folder, protocol.EVENTS, 0o600)
    try:
        if os.fstat(fd).st_size < EVENTS_LIMIT:
            os.write(fd, "".join(json.dumps(e) + "\n" for e in events).encode())
    finally:
        os.close(fd)


def output_tail(folder: Path, n: int = TAIL_LINES) -> list[str]:
    """The job's last n output lines as the watch read them."""
    lines: list[str] = []
    for name in (OUTPUT, f"{OUTPUT}.1"):
        try:
            data = rundir.read_tail(folder, name, limit=TAIL_BYTES)
        except OSError:
            continue
        lines = decoded(data).splitlines()[-(n - len(lines)) :] + lines
        if len(lines) >= n:
            break
    return lines[-n:]


def what(watch: WatchRecord) -> str:
    """`container trainer (pytorch:latest)`, `pid 4242 (python train.py)`, `slurm job 17`."""
    if watch.kind == "pid":
        return f"pid {watch.target} ({watch.label})"
    if watch.kind == "slurm":
        return f"Slurm job {watch.target}" + (f" ({watch.label})" if watch.label else "")
    return f"container {watch.label}"


def numbers_lines(watch: WatchRecord) -> list[str]:
    lines = []
    if watch.step is not None:
        lines.append(f"Step {watch.step}" + (f"/{watch.total}" if watch.total else ""))
    for label, values in (("Latest", watch.metrics), ("Best", watch.best)):
        if values:
            shown = ", ".join(f"{k} {number(v)}" for k, v in sorted(values.items()))
            lines.append(f"{label}: {shown}")
    return lines


def end_text(watch: WatchRecord, ok: bool | None, now: datetime, folder: Path) -> str:
    """What ended and how, for how long it was watched, its numbers, its last lines."""
    took = format_duration(now - from_iso(watch.created_at))
    lines = [f"Watch {watch.id}: {what(watch)} ended: {watch.status or 'how is not known'}."]
    lines.append(f"Watched for {took}; {watch.lines:,} output line(s) read.")
    lines.extend(numbers_lines(watch))
    if watch.skipped:
        lines.append(f"Output lines cut or left out: {watch.skipped}")
    tail = output_tail(folder, TAIL_LINES if ok is not True else 5)
    if tail:
        lines.append("Last output lines:")
        lines.extend(f"  {line[:200]}" for line in tail)
    elif watch.kind == "pid" and watch.log_path is None:
        lines.append(
            "Its output was not read (no log file): /watch pid <pid> log=<path> reads one."
        )
    return "\n".join(lines)


def plot(watch: WatchRecord, folder: Path) -> Path | None:
    """The job's curves, as a run's report draws them; None when it reported no numbers."""
    events = read_events(folder)
    title = f"watch {watch.id} · {watch.kind} {watch.target}"
    return plot_curves(title, events, folder / protocol.ARTIFACTS / "curves.png")
