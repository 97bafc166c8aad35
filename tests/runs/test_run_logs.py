"""`/run logs` shows what a built-in recipe is doing, while it runs and after it ended.

Through the chat path, with the local-process runner and the real recipes: the lines
come from the recipe's own output (stdout.log, written by the in-run agent).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
RUN_ID = re.compile(r"^Run ([0-9a-z]{6}):", re.M)
STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss \d", re.M)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    quick = settings.model_copy(update={"monitor_interval_s": 0.1, "stall_timeout_s": 60.0})
    channel = RecordingChannel()
    async with Orchestrator(
        quick, channels=[channel], runner=ProcessRunner(quick.runs_dir)
    ) as orch:
        yield orch, channel


async def launch(channel: RecordingChannel, text: str) -> str:
    (reply,) = await channel.say(ADMIN, text)
    match = RUN_ID.search(reply)
    assert match, reply
    return match.group(1)


async def logs(channel: RecordingChannel, run_id: str, *count: str) -> list[str]:
    """The reply's log lines, after checking its header names the run and the count."""
    (reply,) = await channel.say(ADMIN, " ".join(("/run logs", run_id, *count)))
    head, *lines = reply.splitlines()
    assert head == f"Run {run_id}, last {len(lines)} line(s):", reply
    return lines


async def logs_with_a_step(channel: RecordingChannel, run_id: str, timeout: float = 60) -> str:
    """`/run logs` asked until a progress line is in it (the recipe starts in seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        (reply,) = await channel.say(ADMIN, f"/run logs {run_id}")
        if STEP_LINE.search(reply):
            return reply
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no progress line in /run logs: {reply!r}")
        await asyncio.sleep(0.2)


async def wait_until_step(orch: Orchestrator, run_id: str, step: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await orch.services.runs.repo.get(run_id)
        if run is not None and run.step >= step:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run {run_id} did not reach step {step}")
        await asyncio.sleep(0.1)


async def test_gpt_logs_show_progress_while_it_runs_and_after_it_ended(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run_id = await launch(
        channel, "/run train gpt steps=400 gpus=0 sleep_per_step=0.1 log_every=2 eval_every=4"
    )
    during = await logs_with_a_step(channel, run_id)
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.state == "running", during
    assert all(int(total) == 400 for _, total in STEP_LINE.findall(during))

    await wait_until_step(orch, run_id, 20)  # enough lines for the default count
    (reply,) = await channel.say(ADMIN, f"/run stop {run_id}")
    assert "stopping" in reply
    await channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=60)
    after = await logs(channel, run_id, "200")
    text = "\n".join(after)
    assert STEP_LINE.search(text) and "lr " in text, text
    assert re.search(r"^eval step \d+: val_loss \d", text, re.M), text
    assert re.search(r"^checkpoint step \d+: checkpoints/ckpt_\d+\.pt", text, re.M), text
    assert re.search(r"^stopped at step \d+", text, re.M), text
    assert len(await logs(channel, run_id, "3")) == 3
    assert len(await logs(channel, run_id)) == 20  # the documented default


async def test_a_finished_gpt_run_keeps_its_lines(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    run_id = await launch(channel, "/run train gpt steps=12 gpus=0 log_every=3 eval_every=6")
    await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=90)
    text = "\n".join(await logs(channel, run_id, "200"))
    steps = [int(step) for step, _ in STEP_LINE.findall(text)]
    assert steps == [3, 6, 9, 12], text
    assert re.search(r"^started: step 0/12 on cpu", text, re.M), text
    assert re.search(r"^eval step 12: train_loss \d", text, re.M), text
    assert re.search(r"^checkpoint step 12: checkpoints/ckpt_00000012\.pt", text, re.M), text
    assert text.splitlines()[-1].startswith("succeeded at step 12"), text


async def test_a_finished_classifier_run_shows_its_lines(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    run_id = await launch(channel, "/run train classifier steps=40 gpus=0 eval_every=20")
    await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=90)
    text = "\n".join(await logs(channel, run_id, "50"))
    assert [int(s) for s, _ in STEP_LINE.findall(text)][-1] == 40, text
    assert re.search(r"^eval step 40: accuracy 0\.\d", text, re.M), text
    assert re.search(r"^checkpoint step \d+: checkpoints/ckpt_\d+\.pt", text, re.M), text
    assert "digits: train" in text, text
    for bad in ("0", "201", "x"):
        (reply,) = await channel.say(ADMIN, f"/run logs {run_id} {bad}")
        assert "must be a whole number from 1 to 200" in reply, bad  # the operation's words
