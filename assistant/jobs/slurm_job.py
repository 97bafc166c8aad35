"""A Slurm job's own process: prepares a restart, then runs the run's agent under it.

    python -m assistant.jobs.slurm_job RUN_DIR

The Slurm runner (assistant/runs/slurm_runner.py) submits a batch script that execs this
with the configured Python. It adds what only a job on a cluster needs around the agent
(assistant/jobs/agent.py), which stays the same on every engine:

- **A requeue resumes.** Slurm runs a requeued job's script again from the top (after a
  preemption, `scontrol requeue`, a node failure), with SLURM_RESTART_COUNT > 0. The
  run's last checkpoint is the last `checkpoint` event in its events.jsonl; spec.json's
  `resume_from` is set to it before the agent starts, so the attempt continues from
  there, as `/run resume` would. A run that cannot resume, or wrote no checkpoint yet,
  starts over.
- **The time limit checkpoints first.** The job is submitted with
  `--signal=B:USR1@<grace>`: Slurm sends SIGUSR1 to this process that long before
  `--time` runs out. A run that can resume is then paused the way `/run pause` pauses
  one (control.json says `pause`, then SIGTERM to the agent): it checkpoints and ends
  `paused`, and `/run resume` continues it under a fresh time limit. One that cannot
  resume is left to Slurm, which ends it at the limit (the host reports the time limit).
- **Signals reach the agent.** SIGTERM and SIGINT (a `/run stop` or `/run pause` is
  `scancel --batch --signal=TERM`) are passed on to the agent, which passes them to the
  recipe; this process ends with the agent's exit code.

Standard library only, like the agent: it must start where only Python is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from assistant.jobs.protocol import CONTROL, EVENTS, SPEC, EventWriter, read_control
from assistant.jobs.recipes import ParamError, get_recipe

RESTARTS = "SLURM_RESTART_COUNT"
EVENTS_LIMIT = 256 * 1024 * 1024  # of events.jsonl read for the last checkpoint


def load_spec(run_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads((run_dir / SPEC).read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def can_resume(spec: dict[str, Any]) -> bool:
    """Whether the run's recipe resumes from a checkpoint (a declared one's `[resume]`)."""
    declared = spec.get("declared")
    if isinstance(declared, dict):
        return declared.get("resume") is not None
    try:
        return get_recipe(str(spec.get("recipe"))).supports_resume
    except ParamError:
        return False


def last_checkpoint(run_dir: Path) -> str | None:
    """The path the run's last `checkpoint` event names (relative, inside its root)."""
    found: str | None = None
    try:
        with open(run_dir / EVENTS, "rb") as events:
            data = events.read(EVENTS_LIMIT)
    except OSError:
        return None
    for line in data.splitlines():
        if b'"checkpoint"' not in line:
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(event, dict) or event.get("type") != "checkpoint":
            continue
        path = event.get("path")
        if isinstance(path, str) and path and not Path(path).is_absolute():
            found = path if ".." not in Path(path).parts else found
    return found


def prepare_restart(run_dir: Path, spec: dict[str, Any]) -> str | None:
    """spec.json resumes from the last checkpoint; which one (None: it starts over)."""
    checkpoint = last_checkpoint(run_dir) if can_resume(spec) else None
    declared = spec.get("declared")
    # a built-in recipe's checkpoints are in the run dir: one gone since is not resumed from
    if checkpoint is not None and not isinstance(declared, dict):
        checkpoint = checkpoint if (run_dir / checkpoint).is_file() else None
    if checkpoint == spec.get("resume_from"):
        return checkpoint
    spec = {**spec, "resume_from": checkpoint}
    tmp = run_dir / (SPEC + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, run_dir / SPEC)
    return checkpoint


class Supervisor:
    """Runs the agent and passes signals on; see the module docstring."""

    def __init__(self, run_dir: Path, writer: EventWriter, resumable: bool) -> None:
        self.run_dir = run_dir
        self.writer = writer
        self.resumable = resumable
        self.proc: subprocess.Popen[bytes] | None = None
        self.pause_due = False  # the time limit is near; pause once the recipe runs
        events = run_dir / EVENTS
        self._offset = events.stat().st_size if events.exists() else 0  # this attempt's
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._forward)
        signal.signal(signal.SIGUSR1, self._time_limit)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def _time_limit(self, signum: int, frame: FrameType | None) -> None:
        if not self.resumable:
            self.writer.emit(
                "log",
                level="warning",
                message="the Slurm job's time limit is near; this recipe cannot resume,"
                " so it runs until Slurm ends it",
            )
            return
        self.pause_due = True  # acted on by run(): a signal handler only notes it

    def _recipe_started(self) -> bool:
        """Whether this attempt's recipe has said `started` (it handles SIGTERM then)."""
        try:
            with open(self.run_dir / EVENTS, "rb") as events:
                events.seek(self._offset)
                return b'"started"' in events.read()
        except OSError:
            return False

    def _pause(self) -> None:
        """Pause the run the way /run pause does: control.json, then SIGTERM."""
        self.pause_due = False
        if read_control(self.run_dir) is None:
            tmp = self.run_dir / (CONTROL + ".tmp")
            tmp.write_text(json.dumps({"action": "pause", "why": "time limit"}))
            os.replace(tmp, self.run_dir / CONTROL)
        self.writer.emit(
            "log",
            level="warning",
            message="the Slurm job's time limit is near: checkpointing, then pausing"
            " (/run resume continues under a fresh time limit)",
        )
        self._forward(signal.SIGTERM, None)

    def run(self) -> int:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.jobs.agent", str(self.run_dir)],
            stdin=subprocess.DEVNULL,
        )
        while True:
            try:
                return self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                # a recipe still starting would die of SIGTERM before it could checkpoint:
                # the pause waits for its started event (Slurm ends it at the limit anyway)
                if self.pause_due and self._recipe_started():
                    self._pause()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m assistant.jobs.slurm_job RUN_DIR", file=sys.stderr)
        return 1
    run_dir = Path(args[0]).resolve()
    if not run_dir.is_dir():
        print(f"slurm_job: run dir {run_dir} does not exist", file=sys.stderr)
        return 1
    spec = load_spec(run_dir)
    writer = EventWriter(run_dir)
    restarts = int(os.environ.get(RESTARTS) or 0)
    if restarts > 0:
        resumed = prepare_restart(run_dir, spec)
        where = f"resuming from {resumed}" if resumed else "starting over (no checkpoint yet)"
        writer.emit(
            "log", level="warning", message=f"requeued by Slurm (restart {restarts}): {where}"
        )
    code = Supervisor(run_dir, writer, can_resume(spec)).run()
    writer.close()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
