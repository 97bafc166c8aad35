"""Runs on a real Slurm cluster, end to end through the chat path.

The cluster is tests/support/slurm_cluster.py's: one node on loopback with four GPUs Slurm
schedules by count (none exist: the recipes run on the CPU with `device=cpu`). The service
picks the Slurm runner itself from ASSISTANT_RUNNER=slurm and SLURM_CONF, as deployed;
jobs run the agent with this venv's Python.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID, step_of, wait_until
from tests.support.slurm_cluster import SlurmCluster

GPT = "/run train gpt device=cpu log_every=1"


@pytest.fixture
def slurm_settings(
    settings: Settings, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The service's settings; every job is cancelled after the test (none holds GPUs)."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    yield settings.model_copy(
        update={
            "runner": "slurm",
            "slurm_python": sys.executable,
            "stall_timeout_s": 120.0,
            "monitor_interval_s": 0.2,
            "stop_grace_s": 30.0,
        }
    )
    slurm_cluster.drain()


@pytest.fixture
async def service(slurm_settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(slurm_settings, channels=[channel]) as orch:
        yield orch, channel


def _events(orch: Orchestrator, run_id: str) -> list[dict[str, object]]:
    path = orch.services.runs.run_dir(run_id) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _launch(channel: RecordingChannel, text: str) -> str:
    """The id of the run `text` launched."""
    found = RUN_ID.search(await _said(channel, text))
    assert found, text
    return found.group(1)


async def _said(channel: RecordingChannel, text: str) -> str:
    """Everything said to the chat while `text` was handled (a run's own message may land
    in the same moment as the reply)."""
    return "\n".join(await channel.say(ADMIN, text))


async def _running(repo, run_id: str) -> int:  # type: ignore[no-untyped-def]
    run = await repo.get(run_id)
    return int(run is not None and run.state == "running")


async def _job(orch: Orchestrator, run_id: str) -> str:
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.runner == "slurm" and run.handle, run
    return run.handle


async def test_runs_report_and_status_shows_the_cluster(
    service: tuple[Orchestrator, RecordingChannel], slurm_cluster: SlurmCluster
) -> None:
    """A classifier and a two-process gpt (torchrun on the node's loopback) side by side."""
    orch, channel = service
    one = await _launch(channel, "/run train classifier steps=20 gpus=1 device=cpu")
    two = await _launch(channel, f"{GPT} procs=2 gpus=2 steps=12 eval_every=6")
    job = await _job(orch, one)
    shown = slurm_cluster.scontrol("show", "job", job)
    assert "Comment=assistant:" in shown and f":{one}" in shown and "gres:gpu:1" in shown
    status = await _said(channel, "/status")
    assert "Runner: slurm at" in status and "Cluster:" in status, status
    assert "main (default, up, max 1:00:00)" in status and "GPUs" in status, status
    assert f"(run {one}, 1 GPU)" in status, status
    report = await channel.wait_for(f"Run {one} (classifier) succeeded", timeout=240)
    assert "accuracy" in report and "Checkpoint:" in report
    await channel.wait_for(f"Run {two} (gpt) succeeded", timeout=240)
    started = [e for e in _events(orch, two) if e["type"] == "started"]
    assert started and started[0]["world_size"] == 2
    await orch.services.log.flush()
    chain = await _said(channel, f"/debug run {one}")
    assert "tool slurm.launch" in chain, chain


async def test_a_run_waits_with_slurms_reason_then_pauses_resumes_and_stops(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    big = await _launch(channel, f"{GPT} gpus=3 steps=400 sleep_per_step=0.1 eval_every=5")
    small = await _launch(channel, f"{GPT} gpus=2 steps=10 eval_every=5")

    async def reason() -> int:
        return int(orch.services.monitor.waiting.get(small) == "Resources")

    await wait_until(reason, 1, timeout=120)
    listing = await _said(channel, "/runs")
    assert f"{small} gpt starting" in listing and "waiting: Resources" in listing, listing
    status = await _said(channel, "/status")
    assert "waiting: Resources" in status and "Slurm jobs: 2" in status, status
    shown = await _said(channel, f"/run show {small}")
    assert "Waiting: Resources (in the slurm queue)" in shown, shown

    await wait_until(lambda: step_of(repo, big), 6, timeout=180)
    reply = await _said(channel, f"/run pause {big}")
    assert "pausing" in reply
    await channel.wait_for(f"Run {big} (gpt) paused", timeout=60)
    paused = await repo.get(big)
    assert paused is not None and paused.checkpoint is not None
    # its GPUs went back to Slurm: the waiting run starts and ends
    await channel.wait_for(f"Run {small} (gpt) succeeded", timeout=180)
    assert small not in orch.services.monitor.waiting

    reply = await _said(channel, f"/run resume {big}")
    assert "resumes from" in reply
    await wait_until(lambda: step_of(repo, big), paused.step + 2, timeout=180)
    reply = await _said(channel, f"/run stop {big}")
    assert "stopping" in reply
    await channel.wait_for(f"Run {big} (gpt) cancelled", timeout=60)
    starts = [e["step"] for e in _events(orch, big) if e["type"] == "started"]
    assert starts[0] == 0 and starts[1] == paused.step > 0


async def test_a_requeued_job_is_preempted_and_resumes_from_its_checkpoint(
    service: tuple[Orchestrator, RecordingChannel], slurm_cluster: SlurmCluster
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    run_id = await _launch(channel, f"{GPT} gpus=1 steps=24 sleep_per_step=0.1 eval_every=4")
    await wait_until(lambda: step_of(repo, run_id), 8, timeout=180)
    job = await _job(orch, run_id)
    slurm_cluster.requeue(job)  # what a preemption with PreemptMode=REQUEUE does too
    said = await channel.wait_for(f"Run {run_id} (gpt) was preempted", timeout=60)
    assert "resumes from step" in said and "by itself" in said
    await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=240)
    done = await repo.get(run_id)
    assert done is not None and done.step == 24 and done.handle == job  # the same job
    history = [state for _, state, _ in await repo.history(run_id)]
    assert history[-3:] == ["preempted", "running", "succeeded"], history
    events = _events(orch, run_id)
    starts = [e["step"] for e in events if e["type"] == "started"]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 4, starts
    saved = [e["step"] for e in events if e["type"] == "checkpoint" and e["step"] <= starts[1]]
    assert starts[1] == max(saved)  # from the last checkpoint, nothing repeated before it


async def test_the_time_limit_and_a_restart_of_the_service(
    slurm_settings: Settings, slurm_cluster: SlurmCluster
) -> None:
    """Two one-minute jobs: the gpt run checkpoints and pauses before Slurm's --time ends it
    (--signal), a recipe that cannot resume is ended by Slurm and fails with the limit
    named. The service restarts while both run: nothing is lost or told twice."""
    settings = slurm_settings.model_copy(update={"slurm_time": "1"})
    home = settings.assistant_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "recipes.toml").write_text(
        """
[recipes.sleeper]
summary = "prints a step a second and cannot resume"
command = ["python3", "-c", "import time\\nfor i in range(1000):\\n    print('step', i, flush=True)\\n    time.sleep(1)"]
gpus = 0

[recipes.sleeper.progress]
progress = ['step (?P<step>\\d+)']
"""
    )
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        repo = orch.services.runs.repo
        gpt = await _launch(channel, f"{GPT} gpus=1 steps=100000 sleep_per_step=0.2 eval_every=5")
        sleeper = await _launch(channel, "/run train sleeper")
        for run_id in (gpt, sleeper):  # both run (the clock of --time is ticking)
            await wait_until(lambda run_id=run_id: _running(repo, run_id), 1, timeout=60)
    # The service is gone; the jobs are not.
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        paused = await channel.wait_for(f"Run {gpt} (gpt) paused", timeout=240)
        assert f"/run resume {gpt}" in paused
        failed = await channel.wait_for(f"Run {sleeper} (sleeper) failed", timeout=240)
        assert "time limit reached (--time 1 min)" in failed, failed
        run = await orch.services.runs.repo.get(gpt)
        assert run is not None and run.checkpoint is not None
        notes = [e.get("message", "") for e in _events(orch, gpt) if e["type"] == "log"]
        assert any("time limit is near: checkpointing" in str(n) for n in notes), notes
        await orch.services.log.flush()
        logged = await orch.services.db.scalar(
            "SELECT count(*) FROM event_log WHERE source = 'run' AND source_id = ?"
            " AND summary LIKE '%checkpoint at step%'",
            (gpt,),
        )
        written = sum(1 for e in _events(orch, gpt) if e["type"] == "checkpoint")
        assert written > 0 and logged == written
    assert len([t for _, t in channel.sent if f"Run {gpt} (gpt) paused" in t]) == 1
