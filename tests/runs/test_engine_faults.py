"""Runs told truthfully while the Docker engine is down or hung, through the chat path.

The engine is this machine's real one behind a unix-socket proxy (tests/support) that a
test cuts, black-holes and restores; the runs are real containers of the run image.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.signals import pending
from storage.runs import RunRecord, RunRepo
from tests.support.docker_engine import docker_run_settings
from tests.support.engine_proxy import EngineProxy, engine_proxy
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, launch, step_of, wait_until

RUN_IMAGE = "assistant-run:latest"
SLOW = "/run train gpt steps=400 sleep_per_step=0.2 eval_every=10"
# a step takes 3 s: a run asked to stop goes on for up to one (its checkpoint comes after)
SLOWER = "/run train gpt steps=50 sleep_per_step=3 eval_every=10"


@pytest.fixture
async def proxy(docker_engine: docker.DockerClient) -> AsyncIterator[EngineProxy]:
    async with engine_proxy() as running:
        yield running


@pytest.fixture
def fault_settings(
    settings: Settings, proxy: EngineProxy, docker_engine: docker.DockerClient
) -> Settings:
    try:
        docker_engine.images.get(RUN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{RUN_IMAGE} is missing: deploy/build-images.sh builds it", pytrace=False)
    return docker_run_settings(settings, RUN_IMAGE, docker_host=proxy.url, stop_grace_s=60.0)


@pytest.fixture
def instance() -> str:
    """An instance of its own: another service on this engine never reconciles its runs."""
    return f"faults-{secrets.token_hex(4)}"


def _service(settings: Settings, instance: str, channel: RecordingChannel) -> Orchestrator:
    runner = DockerRunner(settings.docker_host, image=RUN_IMAGE, instance=instance)
    return Orchestrator(settings, channels=[channel], runner=runner)


@pytest.fixture
async def service(
    fault_settings: Settings, instance: str
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with _service(fault_settings, instance, channel) as orch:
        yield orch, channel


async def _get(repo: RunRepo, run_id: str) -> RunRecord:
    run = await repo.get(run_id)
    assert run is not None
    return run


def _reply(replies: list[str], run_id: str) -> str:
    mine = [r for r in replies if r.startswith(f"Run {run_id}")]
    assert mine, replies
    return mine[0]


async def test_a_launch_while_the_engine_is_cut_waits_and_starts_when_it_answers(
    service: tuple[Orchestrator, RecordingChannel], proxy: EngineProxy
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    await proxy.cut()
    replies = await channel.say(ADMIN, "/run train classifier steps=20")
    reply = next(r for r in replies if r.startswith("Run "))
    run_id = re.match(r"Run (\w+):", reply).group(1)  # type: ignore[union-attr]
    assert "failed" not in reply.lower() and "Sorry" not in reply, reply
    assert "Queued: the Docker engine does not answer (" in reply, reply
    assert "it starts when the engine answers" in reply, reply
    run = await _get(repo, run_id)
    assert run.state == "queued" and run.blocked, run
    (status,) = await channel.say(ADMIN, "/status")
    assert "unreachable" in status, status

    await proxy.restore()
    report = await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=120)
    assert "accuracy" in report
    run = await _get(repo, run_id)
    assert run.blocked is None and run.handle
    await orch.services.log.flush()
    (chain,) = await channel.say(ADMIN, f"/debug run {run_id}")
    assert "does not answer" in chain, chain  # the wait is in the run's chain


async def test_a_stop_during_an_outage_is_kept_and_delivered_when_the_engine_answers(
    service: tuple[Orchestrator, RecordingChannel],
    proxy: EngineProxy,
    docker_engine: docker.DockerClient,
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    run_id = await launch(channel, SLOW)
    await wait_until(lambda: step_of(repo, run_id), 11)  # it has a checkpoint
    container = docker_engine.containers.get((await _get(repo, run_id)).handle)

    await proxy.cut()
    reply = _reply(await channel.say(ADMIN, f"/run stop {run_id}"), run_id)
    assert "fail" not in reply.lower(), reply
    assert "when the engine answers" in reply, reply
    run = await _get(repo, run_id)
    assert run.state == "stopping" and run.wanted == "stop" and run.blocked, run
    control = orch.services.runs.run_dir(run_id) / "control.json"
    assert json.loads(control.read_text()) == {"action": "stop"}
    await asyncio.sleep(1.5)  # monitor passes that cannot reach the engine
    container.reload()
    assert container.status == "running"  # not told stopped: it was not
    run = await _get(repo, run_id)
    assert run.state == "stopping", run  # not settled as lost or failed
    told = [t for _, t in channel.sent if "does not answer" in t and "Run" not in t[:4]]
    assert len(told) == 1 and "Runs keep their state" in told[0], told  # once, not per pass
    (shown,) = await channel.say(ADMIN, f"/run show {run_id}")
    assert "Waiting: stop pending: the engine does not answer" in shown, shown
    (listed,) = await channel.say(ADMIN, "/runs")
    assert f"{run_id} gpt stopping" in listed and "stop pending" in listed, listed

    await proxy.restore()
    report = await channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=120)
    assert "Checkpoint:" in report, report
    with pytest.raises(docker.errors.NotFound):
        container.reload()  # really stopped, and removed after its report
    await orch.services.log.flush()
    (chain,) = await channel.say(ADMIN, f"/debug run {run_id}")
    assert "stopping" in chain and "run_signal" in chain, chain


async def test_a_hung_engine_costs_a_command_seconds_and_a_second_stop_forces_the_kill(
    service: tuple[Orchestrator, RecordingChannel],
    proxy: EngineProxy,
    docker_engine: docker.DockerClient,
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    run_id = await launch(channel, SLOW)
    await wait_until(lambda: step_of(repo, run_id), 2)
    container = docker_engine.containers.get((await _get(repo, run_id)).handle)

    await proxy.black_hole()  # accepts, reads, never answers
    async with asyncio.timeout(20):  # a hang, not a speed figure: the bound is ~5 s a call
        reply = _reply(await channel.say(ADMIN, f"/run pause {run_id}"), run_id)
    assert "when the engine answers" in reply, reply
    run = await _get(repo, run_id)
    assert run.state == "pausing" and run.wanted == "pause", run

    await proxy.restore()
    await wait_until(lambda: _delivered(repo, run_id), 1, timeout=60)
    (again,) = [r for r in await channel.say(ADMIN, f"/run stop {run_id}") if run_id in r]
    assert "already pausing" in again, again

    other = await launch(channel, SLOWER)
    await wait_until(lambda: step_of(repo, other), 1)
    (first,) = [r for r in await channel.say(ADMIN, f"/run stop {other}") if other in r]
    assert "stopping" in first
    (second,) = [r for r in await channel.say(ADMIN, f"/run stop {other}") if other in r]
    assert "killed" in second, second
    await channel.wait_for(f"Run {other} (gpt) cancelled", timeout=60)
    await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=120)
    with pytest.raises(docker.errors.NotFound):
        container.reload()


async def _delivered(repo: RunRepo, run_id: str) -> int:
    run = await _get(repo, run_id)
    return int(run.wanted is not None and not pending(run))


async def test_a_container_of_a_launch_whose_answer_was_lost_is_adopted_not_doubled(
    fault_settings: Settings, instance: str
) -> None:
    """A launch the engine carried out but whose answer never came leaves the run queued
    with no handle while its container runs; the next service takes that container."""
    channel = RecordingChannel()
    async with _service(fault_settings, instance, channel) as orch:
        run_id = await launch(channel, "/run train gpt steps=60 sleep_per_step=0.1 eval_every=10")
        await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 10)
        # what an unanswered launch leaves behind: queued again, no handle
        await orch.services.db.write(
            "UPDATE runs SET state = 'queued', handle = NULL, runner = NULL WHERE id = ?",
            (run_id,),
        )
    channel = RecordingChannel()
    async with _service(fault_settings, instance, channel) as orch:
        await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
        history = [state for _, state, _ in await orch.services.runs.repo.history(run_id)]
        lines = (orch.services.runs.run_dir(run_id) / "events.jsonl").read_text().splitlines()
        await orch.services.log.flush()
        (chain,) = await channel.say(ADMIN, f"/debug run {run_id}")
    started = [e for e in map(json.loads, lines) if e["type"] == "started"]
    assert len(started) == 1, started  # one container: not launched a second time
    assert history[-3:] == ["starting", "running", "succeeded"], history
    assert "adopted" in chain, chain
