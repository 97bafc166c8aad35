"""scripts/gpu-check as a user runs it: a real subprocess, its report read line by line.

`--cpu` runs every part at tiny sizes, so this keeps the GPU check working where there is
no GPU; the GPU's own figures come from running the script on one (README, "GPU check").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.agent_process import REPO

pytest.importorskip("torch")

SCRIPT = REPO / "scripts" / "gpu-check"
# The machine's GPUs hidden: the check must not depend on having one or not.
ENV = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd="/",  # the script finds the project itself
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def report() -> dict[str, str]:
    """The --cpu report's lines by part name (the text before the first colon)."""
    proc = gpu_check("--cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    return {line.split(":", 1)[0]: line for line in lines if not line.startswith(" ")} | {
        "last": lines[-1]
    }


def test_every_part_is_reported_ok(report: dict[str, str]) -> None:
    for part in ("nvml", "throughput", "pause/resume", "process runner"):
        assert report[part].startswith(f"{part}: ok · "), report[part]
    assert re.fullmatch(r"gpu-check: 4 of 4 parts ok in \d+ s", report["last"])


def test_nvml_is_shown_as_status_shows_it(report: dict[str, str]) -> None:
    # /status's own line: a GPU each, or why none (no driver here: the GPUs are hidden)
    assert re.match(r"nvml: ok · (GPU 0: .+ · \d+% util · .+ MB|GPUs: .+)$", report["nvml"])


def test_throughput_is_the_recipes_own_figure(report: dict[str, str]) -> None:
    line = report["throughput"]
    found = re.search(
        r"30 steps of 512 tokens, [\d.]+ s wall · ([\d,]+) tokens/s after the first 10 steps", line
    )
    assert found is not None, line
    assert int(found[1].replace(",", "")) > 0
    assert "float32, eager" in line
    assert line.endswith("MFU not given: no peak for a CPU")


def test_a_paused_run_resumes_at_its_saved_step(report: dict[str, str]) -> None:
    line = report["pause/resume"]
    found = re.search(
        r"paused at step (\d+) \(exit 3, (checkpoints/ckpt_(\d+)\.pt)\) · resumed at step (\d+)"
        r" · succeeded at step 100$",
        line,
    )
    assert found is not None, line
    saved, checkpoint_step, resumed = int(found[1]), int(found[3]), int(found[4])
    assert saved >= 10 and saved < 100  # paused mid-run, once a progress event said 10
    assert resumed == saved == checkpoint_step


def test_the_process_runner_runs_a_recipe_to_success(report: dict[str, str]) -> None:
    line = report["process runner"]
    assert re.search(r"gpt on cpu · succeeded at step 20 in [\d.]+ s$", line), line


def test_without_a_gpu_and_without_cpu_it_says_so_in_one_line() -> None:
    proc = gpu_check()
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"gpu-check: no CUDA GPU visible to {sys.executable}")
    assert proc.stderr.rstrip().endswith("--cpu runs the CPU check")
