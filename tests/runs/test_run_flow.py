"""Runs end to end through the chat path, with the local-process runner and real recipes.

The same flows run against a real Docker engine in test_docker_flow.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID, launch, step_of, wait_until


@pytest.fixture
def run_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "gpus": "0,1",
            "stall_timeout_s": 60.0,
            "monitor_interval_s": 0.1,
            "stop_grace_s": 30.0,
        }
    )


@pytest.fixture
async def service(run_settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
        yield orch, channel


async def test_a_classifier_run_reports_with_a_plot(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run_id = await launch(channel, "/run train classifier steps=60 gpus=0")
    report = await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=90)
    assert "Final:" in report and "accuracy" in report and "Checkpoint:" in report
    ((chat, image),) = channel.images
    assert chat == ADMIN and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (show,) = await channel.say(ADMIN, f"/run show {run_id}")
    assert "succeeded" in show and "History:" in show and "running — started" in show
    (listing,) = await channel.say(ADMIN, "/runs")
    assert f"{run_id} classifier succeeded" in listing
    await orch.services.log.flush()
    (why,) = await channel.say(ADMIN, "/debug why")
    for piece in (
        "action run_queued",
        "action run_launched",
        "tool process.launch",
        f"run {run_id} succeeded",
        "Command from",
    ):
        assert piece in why, piece
    (chain,) = await channel.say(ADMIN, f"/debug run {run_id}")
    assert "How it started:" in chain and "checkpoint at step" in chain


async def test_pause_then_resume_continues_at_the_saved_step(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run_id = await launch(
        channel, "/run train gpt steps=60 gpus=0 sleep_per_step=0.1 eval_every=10"
    )
    repo = orch.services.runs.repo
    await wait_until(lambda: step_of(repo, run_id), 12)
    (reply,) = await channel.say(ADMIN, f"/run pause {run_id}")
    assert "pausing" in reply
    paused = await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=60)
    assert f"/run resume {run_id}" in paused
    run = await repo.get(run_id)
    assert run is not None and run.checkpoint is not None and run.gpus == []
    saved = run.step
    (reply,) = await channel.say(ADMIN, f"/run resume {run_id}")
    assert "resumes from" in reply
    await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
    events = [
        json.loads(line)
        for line in (orch.services.runs.run_dir(run_id) / "events.jsonl").read_text().splitlines()
    ]
    starts = [e["step"] for e in events if e["type"] == "started"]
    assert starts[0] == 0 and starts[1] == saved > 0
    done = await repo.get(run_id)
    assert done is not None and done.step == 60


async def test_a_paused_run_can_be_stopped_for_good(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run_id = await launch(
        channel, "/run train gpt steps=200 gpus=0 sleep_per_step=0.1 eval_every=10"
    )
    repo = orch.services.runs.repo
    await wait_until(lambda: step_of(repo, run_id), 12)
    await channel.say(ADMIN, f"/run pause {run_id}")
    await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=60)
    (again,) = await channel.say(ADMIN, f"/run pause {run_id}")
    assert f"already paused; /run resume {run_id}" in again
    paused = await repo.get(run_id)
    assert paused is not None and paused.checkpoint is not None
    (reply,) = await channel.say(ADMIN, f"/run stop {run_id}")
    assert reply == f"Run {run_id}: cancelled."
    run = await repo.get(run_id)
    assert run is not None and run.state == "cancelled" and run.ended_at is not None
    assert run.checkpoint == paused.checkpoint  # kept: /run retry or a look at it
    (resume,) = await channel.say(ADMIN, f"/run resume {run_id}")
    assert "cancelled" in resume and "resumes from" not in resume


async def test_stop_cancels_and_failures_name_their_cause(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    slow = await launch(channel, "/run train gpt steps=500 gpus=0 sleep_per_step=0.2")
    failing = await launch(channel, "/run train classifier steps=50 gpus=0 fail_at_step=5")
    failed = await channel.wait_for(f"Run {failing} (classifier) failed", timeout=90)
    assert "Cause:" in failed and "RuntimeError" in failed and "Last log lines:" in failed
    await wait_until(lambda: step_of(orch.services.runs.repo, slow), 2)
    (reply,) = await channel.say(ADMIN, f"/run stop {slow}")
    assert "stopping" in reply
    await channel.wait_for(f"Run {slow} (gpt) cancelled", timeout=60)


async def test_runs_wait_for_gpus_in_order(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    big = await launch(channel, "/run train gpt gpus=2 device=cpu steps=500 sleep_per_step=0.2")
    (reply,) = await channel.say(ADMIN, "/run train gpt gpus=1 device=cpu steps=5")
    assert "Queued: waiting for 1 free GPU(s) (position 1)" in reply
    small = RUN_ID.search(reply).group(1)  # type: ignore[union-attr]
    (status,) = await channel.say(ADMIN, "/status")
    assert f"{small} gpt queued" in status and "waiting for 1 GPU(s)" in status
    await channel.say(ADMIN, f"/run stop {big}")
    await channel.wait_for(f"Run {small} (gpt) succeeded", timeout=90)


async def test_bad_requests_start_nothing(service: tuple[Orchestrator, RecordingChannel]) -> None:
    orch, channel = service
    for text, says in [
        ("/run train gpt stepz=5", "unknown parameter 'stepz'"),
        ("/run train", "name a recipe"),
    ]:
        (reply,) = await channel.say(ADMIN, text)
        assert says in reply and "Usage:" in reply, text
    for text, says in [  # refusals: one line, no usage
        ("/run train gpt gpus=3", "the run asks for 3 GPU(s) but this host has 2"),
        ("/run pause zzzzzz", "no run with id starting 'zzzzzz'; /runs shows ids"),
    ]:
        assert await channel.say(ADMIN, text) == [says], text
    assert await orch.services.runs.repo.recent(10) == []


async def test_a_stall_is_reported(run_settings: Settings) -> None:
    settings = run_settings.model_copy(update={"stall_timeout_s": 1.5})
    channel = RecordingChannel()
    runner = ProcessRunner(settings.runs_dir)
    async with Orchestrator(settings, channels=[channel], runner=runner):
        run_id = await launch(channel, "/run train gpt steps=3 gpus=0 sleep_per_step=6")
        stalled = await channel.wait_for(f"Run {run_id} (gpt) looks stalled", timeout=60)
        assert "no progress for" in stalled and f"/run stop {run_id}" in stalled
        await channel.say(ADMIN, f"/run stop {run_id}")
        await channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=60)


async def test_a_restart_reattaches_without_losing_or_repeating_events(
    run_settings: Settings,
) -> None:
    channel = RecordingChannel()
    async with Orchestrator(
        run_settings, channels=[channel], runner=ProcessRunner(run_settings.runs_dir)
    ) as orch:
        run_id = await launch(
            channel, "/run train gpt steps=40 gpus=0 sleep_per_step=0.1 eval_every=5"
        )
        await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 5)
    # The orchestrator is gone; the run's process is not.
    channel = RecordingChannel()
    async with Orchestrator(
        run_settings, channels=[channel], runner=ProcessRunner(run_settings.runs_dir)
    ) as orch:
        await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
        await orch.services.log.flush()
        logged = await orch.services.db.scalar(
            "SELECT count(*) FROM event_log WHERE source = 'run' AND source_id = ?"
            " AND summary LIKE '%checkpoint at step%'",
            (run_id,),
        )
        run_dir = orch.services.runs.run_dir(run_id)
        written = sum(
            1
            for line in (run_dir / "events.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "checkpoint"
        )
    assert written > 0 and logged == written


async def test_a_scheduled_task_launches_a_run(run_settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from assistant.clock import ManualClock

    clock = ManualClock(datetime.now(UTC))
    channel = RecordingChannel()
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner, clock=clock) as orch:
        (added,) = await channel.say(
            ADMIN, '/task add cron "0 2 * * *" /run train classifier steps=20 gpus=0'
        )
        assert "scheduled" in added
        clock.advance(timedelta(days=1))
        assert await orch.services.scheduler.run_due() == 1
        await orch.services.scheduler.wait_idle()
        started = await channel.wait_for("Run ", timeout=10)
        run_id = RUN_ID.search(started).group(1)  # type: ignore[union-attr]
        await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=90)
        await orch.services.log.flush()
        (chain,) = await channel.say(ADMIN, f"/debug run {run_id}")
    assert "event scheduled_task" in chain and "action run_queued" in chain


async def test_progress_is_one_message_edited_in_place(run_settings: Settings) -> None:
    settings = run_settings.model_copy(update={"progress_interval_s": 0.3})
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], runner=ProcessRunner(settings.runs_dir)):
        run_id = await launch(
            channel, "/run train gpt steps=30 gpus=0 sleep_per_step=0.1 log_every=1"
        )
        await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=90)
    posted = [t for _, t in channel.sent if t.startswith(f"Run {run_id} (gpt) · step")]
    assert len(posted) == 1  # one message ...
    edits = [t for _, mid, t in channel.edits]
    assert len(edits) >= 2 and all(t.startswith(f"Run {run_id} (gpt) · step") for t in edits)
    steps = [int(t.split("step ")[1].split("/")[0]) for t in edits]
    assert steps == sorted(steps) and "/30 [" in edits[-1]  # ... edited as the run goes
