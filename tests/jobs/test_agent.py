"""The agent as a real process: spec checks, DDP via torchrun, pause/stop/resume, failures."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from assistant.jobs.agent import classify_failure
from assistant.jobs.protocol import EXIT_FAILED, EXIT_OK, EXIT_PAUSED, EXIT_STOPPED
from tests.support.agent_process import (
    TIMEOUT,
    MakeRunDir,
    read_events,
    result_json,
    run_agent,
    start_agent,
    wait_for,
)

TINY_GPT = {
    "n_layer": 1,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 4,
    "eval_iters": 2,
    "log_every": 1,
}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "invalid spec: spec.json is missing"),
        ("{not json", "invalid spec: spec.json is unreadable"),
        ({"recipe": "bert", "params": {}}, "unknown recipe 'bert'"),
        (
            {"recipe": "gpt", "params": {"n_layers": 2}},
            "unknown parameter 'n_layers' for recipe 'gpt'; did you mean 'n_layer'?",
        ),
        ({"recipe": "gpt", "params": {"steps": -1}}, "steps=-1 is below the minimum 1"),
        ({"recipe": "gpt", "params": {}, "nproc": 0}, "nproc must be an integer from 1 to 64"),
        (
            {"recipe": "gpt", "params": {}, "resume_from": "checkpoints/nope.pt"},
            "does not exist in the run dir",
        ),
        (
            {"recipe": "gpt", "params": {}, "resume_from": "../other/ckpt.pt"},
            "must stay inside the run dir",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "recipe",
        "unknown-param",
        "bounds",
        "nproc",
        "resume-missing",
        "resume-escape",
    ],
)
def test_bad_spec_fails_fast_with_a_clear_error(tmp_path: Path, spec: object, message: str) -> None:
    if spec is not None:
        (tmp_path / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    proc = run_agent(tmp_path)
    assert proc.returncode == EXIT_FAILED
    [error] = read_events(tmp_path, "error")
    assert error["kind"] == "exception" and message in error["message"]
    result = result_json(tmp_path)
    assert result["status"] == "failed" and message in result["error"]["message"]
    assert [e["status"] for e in read_events(tmp_path, "result")] == ["failed"]


def test_ddp_two_processes_via_torchrun(run_dir: MakeRunDir) -> None:
    run = run_dir("gpt", {**TINY_GPT, "steps": 6, "eval_every": 3}, nproc=2)
    proc = run_agent(run)
    assert proc.returncode == EXIT_OK, (run / "stdout.log").read_text()
    [log] = read_events(run, "log")[:1]
    assert (
        "torch.distributed.run --nnodes=1 --nproc_per_node=2 --rdzv-backend=c10d"
        " --rdzv-endpoint=127.0.0.1:0 --rdzv-id=run --local-addr=127.0.0.1"
    ) in log["message"]
    # rank 0 alone reports: one started, one result, each step once
    [started] = read_events(run, "started")
    assert started["world_size"] == 2
    assert [e["step"] for e in read_events(run, "progress")] == [1, 2, 3, 4, 5, 6]
    assert len(read_events(run, "result")) == 1
    assert [e["step"] for e in read_events(run, "checkpoint")] == [3, 6]
    assert read_events(run, "error") == []
    result = result_json(run)
    # The outcome is the recipe's result event. torchrun's own exit status after it is
    # recorded (exit_code) but not asserted: once, on a loaded machine, torchrun exited 1
    # after both ranks had finished and rank 0 had reported success.
    assert result["status"] == "succeeded" and result["step"] == 6
    assert isinstance(result["exit_code"], int)
    assert (run / result["checkpoint"]).is_file()
    assert result["final"]["val_loss"] is not None and result["run_id"] == "run"


def test_pause_then_resume_continues_at_the_saved_step(run_dir: MakeRunDir) -> None:
    params = {**TINY_GPT, "steps": 10_000, "sleep_per_step": 0.05, "eval_every": 10_000}
    run = run_dir("gpt", params, heartbeat_s=0.2)
    agent = start_agent(run)
    try:
        wait_for(run, lambda e: e["type"] == "progress" and e["step"] >= 3, agent)
        (run / "control.json").write_text(json.dumps({"action": "pause"}))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=TIMEOUT) == EXIT_PAUSED
    finally:
        agent.kill()
    paused = result_json(run)
    assert paused["status"] == "paused" and paused["step"] >= 3
    assert (run / paused["checkpoint"]).is_file()
    [ckpt] = read_events(run, "checkpoint")
    assert ckpt["path"] == paused["checkpoint"] and ckpt["step"] == paused["step"]
    beats = read_events(run, "heartbeat")
    assert len(beats) >= 2 and any(b.get("step", 0) >= 1 for b in beats)

    # resume in the same run dir, as the host does; finish three steps later
    (run / "control.json").unlink()
    spec = json.loads((run / "spec.json").read_text())
    spec["resume_from"] = paused["checkpoint"]
    spec["params"] = {**params, "steps": paused["step"] + 3, "sleep_per_step": 0}
    (run / "spec.json").write_text(json.dumps(spec))
    proc = run_agent(run)
    assert proc.returncode == EXIT_OK, (run / "stdout.log").read_text()
    assert [e["step"] for e in read_events(run, "started")] == [0, paused["step"]]
    assert read_events(run, "started")[-1]["resumed_from"] == paused["checkpoint"]
    done = result_json(run)
    assert done["status"] == "succeeded" and done["step"] == paused["step"] + 3


def test_sigterm_without_pause_means_stopped(run_dir: MakeRunDir) -> None:
    run = run_dir("classifier", {"steps": 10_000, "sleep_per_step": 0.05, "log_every": 1})
    agent = start_agent(run)
    try:
        wait_for(run, lambda e: e["type"] == "progress", agent)
        (run / "control.json").write_text(json.dumps({"action": "stop"}))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=TIMEOUT) == EXIT_STOPPED
    finally:
        agent.kill()
    result = result_json(run)
    assert result["status"] == "stopped" and (run / result["checkpoint"]).is_file()


def test_fail_at_step_gives_a_failed_result_with_the_traceback(run_dir: MakeRunDir) -> None:
    run = run_dir("gpt", {**TINY_GPT, "steps": 20, "fail_at_step": 3}, heartbeat_s=0.1)
    proc = run_agent(run)
    assert proc.returncode == EXIT_FAILED
    result = result_json(run)
    assert result["status"] == "failed" and result["exit_code"] == 1
    assert result["error"]["kind"] == "exception"
    assert result["error"]["message"] == "RuntimeError: fail_at_step=3: injected failure at step 3"
    assert any("maybe_fail" in line for line in result["error"]["traceback"])
    assert result["step"] == 2  # the last step the recipe reported
    [error] = read_events(run, "error")  # the recipe's own; the agent adds none
    assert error["message"] == result["error"]["message"]
    assert [e["status"] for e in read_events(run, "result")] == ["failed"]
    assert "Traceback (most recent call last)" in (run / "stdout.log").read_text()


@pytest.mark.parametrize(
    ("code", "text", "kind", "message"),
    [
        (-9, "", "oom", "out of memory (killed by SIGKILL)"),
        (137, "", "oom", "out of memory (killed by SIGKILL)"),
        (1, "x\nMemoryError\n", "oom", "out of memory (exited with code 1)"),
        (
            1,
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate",
            "oom",
            "out of memory (exited with code 1)",
        ),
        (
            1,
            'noise\nTraceback (most recent call last):\n  File "x.py", line 1\n    boom()\nValueError: bad thing\n',
            "exception",
            "ValueError: bad thing",
        ),
        (7, "just text\n", "exit", "exited with code 7"),
    ],
)
def test_failures_are_classified_from_exit_status_and_output(
    code: int, text: str, kind: str, message: str
) -> None:
    error = classify_failure(code, text)
    assert error["kind"] == kind and error["message"] == message
    assert isinstance(error["traceback"], list)


def test_stop_during_start_up_is_stopped_not_failed(run_dir: MakeRunDir) -> None:
    """A SIGTERM that lands before the recipe can checkpoint still ends as `stopped`."""
    run = run_dir("gpt", {"steps": 10_000})
    agent = start_agent(run)
    try:
        wait_for(run, lambda e: e["type"] == "heartbeat", agent)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=TIMEOUT) == EXIT_STOPPED
    finally:
        agent.kill()
    result = result_json(run)
    assert result["status"] == "stopped" and result["error"] is None
    assert [e["status"] for e in read_events(run, "result")] == ["stopped"]
