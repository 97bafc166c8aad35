"""The run-dir protocol: the one contract between a run and the host that watches it.

A run dir holds:

    spec.json       written by the host before launch (run id, recipe, params, resume point)
    control.json    written by the host before it sends SIGTERM: {"action": "pause" | "stop"}
    events.jsonl    appended by the run: one JSON object a line, each with "ts" and "type"
    stdout.log      everything the run printed (stdout and stderr)
    checkpoints/    checkpoint files, named in `checkpoint` events
    artifacts/      plots, metrics, confusion matrices
    result.json     written last by the agent: the final status and metrics

Event types and their fields (paths are relative to the run dir):

    started     step (the first step, > 0 on resume), total, device, world_size, params,
                device_name?, peak_flops? (the dense peak its mfu is of; null: unknown)
    progress    step, total, loss, lr, tokens_per_s?, mfu?, elapsed_s
    metric      step, name, value               (val_loss, accuracy, macro_f1, ...)
    checkpoint  step, path, best (bool), val_loss?
    heartbeat   step?                           (every few seconds while alive)
    log         level, message
    result      status (succeeded|paused|stopped|failed), step, final {}, best {},
                checkpoint?
    error       kind (exception|oom|exit), message, traceback [last lines]

Dependency-free on purpose: user code may import or copy it to report the same way.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SPEC = "spec.json"
CONTROL = "control.json"
EVENTS = "events.jsonl"
STDOUT = "stdout.log"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
ARTIFACTS = "artifacts"

EVENT_TYPES = (
    "started",
    "progress",
    "metric",
    "checkpoint",
    "heartbeat",
    "log",
    "result",
    "error",
)
RESULT_STATUSES = ("succeeded", "paused", "stopped", "failed")
CONTROL_ACTIONS = ("pause", "stop")

# Exit codes the agent uses, so the host can tell them apart without result.json.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PAUSED = 3
EXIT_STOPPED = 4


def utc_now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class EventWriter:
    """Appends protocol events; one `write` per line (O_APPEND), safe across processes."""

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / EVENTS
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, type_: str, **fields: Any) -> None:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        line = json.dumps({"ts": utc_now_iso(), "type": type_, **fields}, default=str)
        os.write(self._fd, (line + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def read_control(run_dir: Path | str) -> str | None:
    """What the host asked for before signalling: "pause", "stop", or None."""
    try:
        action = json.loads((Path(run_dir) / CONTROL).read_text()).get("action")
    except (OSError, ValueError):
        return None
    return action if action in CONTROL_ACTIONS else None
