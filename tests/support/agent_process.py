"""Helpers for the jobs tests: run the agent and recipes as real processes, read events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EVENTS = "events.jsonl"
MakeRunDir = Callable[..., Path]  # the `run_dir` fixture: (recipe, params, name=..., **spec)
TIMEOUT = 120
# One intra-op thread: on a small box shared with other suites, torch's OpenMP threads
# spin against each other and a tiny run takes seconds instead of milliseconds.
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
}  # generous: the CI box has 2 cores and other suites run beside this one


def read_events(run_dir: Path, type_: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / EVENTS
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if type_ is None or e["type"] == type_]


def write_spec(run_dir: Path, recipe: str, params: dict[str, Any], **extra: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "run_id": run_dir.name,
        "recipe": recipe,
        "params": params,
        "nproc": 1,
        "resume_from": None,
        "heartbeat_s": 0.5,
        **extra,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    return run_dir


def run_agent(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assistant.jobs.agent", str(run_dir)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def start_agent(run_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "assistant.jobs.agent", str(run_dir)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _recipe_cmd(recipe: str, run_dir: Path, args: tuple[str, ...]) -> list[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        f"assistant.jobs.recipes.{recipe}",
        "--run-dir",
        str(run_dir),
        *args,
    ]


def run_recipe(recipe: str, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _recipe_cmd(recipe, run_dir, args),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def start_recipe(recipe: str, run_dir: Path, *args: str) -> subprocess.Popen[str]:
    """A recipe in the background, to overlap the start-up cost of independent runs."""
    return subprocess.Popen(
        _recipe_cmd(recipe, run_dir, args),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> None:
    output, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, output


def wait_for(
    run_dir: Path, match: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[str]
) -> dict[str, Any]:
    """The first event that matches, polling the file while the process lives."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for event in read_events(run_dir):
            if match(event):
                return event
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before the event came")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for an event")


def result_json(run_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run_dir / "result.json").read_text())
    return result
