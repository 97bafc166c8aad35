"""/run's replies to what it cannot do: a refusal is one line, a misuse gets the usage.

A real orchestrator, the local-process runner and one GPU in the inventory; the queued run
asks for two GPUs, so it stays queued without anything executing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.jobs.recipes import RECIPES
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from commands.runs import USAGE
from storage.runs import RunRecord
from storage.timestamps import to_iso
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    one_gpu = settings.model_copy(update={"gpus": "0", "monitor_interval_s": 0.1})
    channel = RecordingChannel()
    runner = ProcessRunner(one_gpu.runs_dir)
    async with Orchestrator(one_gpu, channels=[channel], runner=runner) as orch:
        yield orch, channel


async def _queued(orch: Orchestrator) -> RunRecord:
    """A run that waits for two GPUs on a host with one: queued for as long as the test."""
    return await orch.services.runs.repo.create(
        kind="train",
        recipe="gpt",
        params=RECIPES["gpt"].defaults(),
        image="assistant-run:latest",
        gpus_wanted=2,
        nproc=2,
        memory_mb=None,
        cpus=None,
        chat_id=ADMIN,
        total=None,
        now=to_iso(orch.clock.now()),
        state="queued",
    )


async def test_a_refusal_is_one_line_without_the_usage(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run = await _queued(orch)
    cases = {
        "/run stop zzzzzz": "no run with id starting 'zzzzzz'; /runs shows ids",
        "/run show zzzzzz": "no run with id starting 'zzzzzz'; /runs shows ids",
        f"/run pause {run.id}": f"run {run.id} has not started; /run stop {run.id} cancels it",
        f"/run resume {run.id}": f"run {run.id} is queued, not paused",
        "/run train gpt gpus=3": "the run asks for 3 GPU(s) but this host has 1",
    }
    for text, expected in cases.items():
        assert await channel.say(ADMIN, text) == [expected], text
    (stopped,) = await channel.say(ADMIN, f"/run stop {run.id}")
    assert stopped == f"Run {run.id}: cancelled."
    (again,) = await channel.say(ADMIN, f"/run stop {run.id}")
    assert again == f"run {run.id} is cancelled; only a running run can stop"
    assert [r.id for r in await orch.services.runs.repo.recent(5)] == [run.id]


async def test_a_misuse_gets_the_problem_then_the_usage_once(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    for text, problem in {
        "/run frob": "unknown subcommand 'frob'",
        "/run stop": "missing the run id: /run stop <id>; /runs shows ids",
        "/run logs ab12 x": "lines must be a whole number from 1 to 200, got 'x'",
        "/run logs ab12 500": "lines must be a whole number from 1 to 200, got 500",
        "/run show ab/12": (
            "'ab/12' is not an id: 1 to 13 lower-case letters and digits"
            " (as /runs, /task list or /debug show them)"
        ),
        "/run train gpt steps": "'steps' is not key=value, e.g. steps=2000",
    }.items():
        assert await channel.say(ADMIN, text) == [f"{problem}\nUsage:\n{USAGE}"], text


async def test_names_and_ids_are_read_in_any_case(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run = await _queued(orch)
    (shown,) = await channel.say(ADMIN, f"/run show {run.id.upper()}")
    assert shown.startswith(f"Run {run.id} · train gpt · queued")
    (recipe,) = await channel.say(ADMIN, "/recipes GPT")
    assert recipe.startswith("gpt: ")
    (unknown,) = await channel.say(ADMIN, "/run train GPT stepz=1")
    assert unknown.startswith("unknown parameter 'stepz' for recipe 'gpt'")


async def test_an_unknown_parameter_lists_the_accepted_ones_once(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, "/run train gpt stepz=10")
    problem, usage = reply.split("\nUsage:\n")
    assert usage == USAGE
    assert problem.startswith("unknown parameter 'stepz' for recipe 'gpt'; did you mean 'steps'?")
    for param in (*(p.name for p in RECIPES["gpt"].params), "gpus", "procs"):
        assert reply.count(f" {param},") + reply.count(f" {param} ") <= 1, param
    assert reply.count("n_layer") == 1
    assert await orch.services.runs.repo.recent(5) == []
