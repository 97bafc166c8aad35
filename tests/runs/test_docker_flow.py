"""Runs end to end through the chat path in real containers (the run image, a real engine)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DockerRunner
from tests.support.docker_engine import docker_run_settings, docker_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, launch, step_of, wait_until

RUN_IMAGE = "assistant-run:latest"


@pytest.fixture
def docker_settings(settings: Settings, docker_engine: docker.DockerClient) -> Settings:
    try:
        docker_engine.images.get(RUN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{RUN_IMAGE} is missing: deploy/build-images.sh builds it", pytrace=False)
    return docker_run_settings(settings, RUN_IMAGE)


def runner() -> DockerRunner:
    return docker_runner(RUN_IMAGE)


@pytest.fixture
async def service(
    docker_settings: Settings,
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(docker_settings, channels=[channel], runner=runner()) as orch:
        yield orch, channel


async def test_a_classifier_run_in_a_container(
    service: tuple[Orchestrator, RecordingChannel], docker_engine: docker.DockerClient
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, "/run train classifier steps=60")
    assert "docker at unix://" in reply and f"image {RUN_IMAGE}" in reply
    run_id = re.search(r"^Run (\w+):", reply).group(1)  # type: ignore[union-attr]
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.runner == "docker" and run.handle
    container = docker_engine.containers.get(run.handle)
    assert container.labels["assistant.run_id"] == run_id
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    report = await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=120)
    assert "accuracy" in report and "Checkpoint:" in report
    assert channel.images and channel.images[0][1].read_bytes()[:4] == b"\x89PNG"
    await orch.services.log.flush()
    (why,) = await channel.say(ADMIN, "/debug why")
    assert "tool docker.launch" in why and "action run_queued" in why
    with pytest.raises(docker.errors.NotFound):  # ended containers are removed after the report
        docker_engine.containers.get(run.handle)


async def test_pause_resume_and_stop_in_containers(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    repo = orch.services.runs.repo
    run_id = await launch(channel, "/run train gpt steps=40 sleep_per_step=0.1 eval_every=10")
    await wait_until(lambda: step_of(repo, run_id), 8)
    await channel.say(ADMIN, f"/run pause {run_id}")
    await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=90)
    saved = (await repo.get(run_id)).step  # type: ignore[union-attr]
    await channel.say(ADMIN, f"/run resume {run_id}")
    await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
    events = [
        json.loads(line)
        for line in (orch.services.runs.run_dir(run_id) / "events.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in events if e["type"] == "started"] == [0, saved]

    other = await launch(channel, "/run train gpt steps=400 sleep_per_step=0.2")
    await wait_until(lambda: step_of(repo, other), 2)
    await channel.say(ADMIN, f"/run stop {other}")
    await channel.wait_for(f"Run {other} (gpt) cancelled", timeout=90)


async def test_out_of_memory_is_named(service: tuple[Orchestrator, RecordingChannel]) -> None:
    _, channel = service
    run_id = await launch(channel, "/run train classifier alloc_mb=600 mem_mb=160 steps=20")
    report = await channel.wait_for(f"Run {run_id} (classifier) failed", timeout=120)
    assert "Cause: out of memory" in report and "160 MB" in report


async def test_a_stalled_container_is_reported(docker_settings: Settings) -> None:
    settings = docker_settings.model_copy(update={"stall_timeout_s": 1.5})
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel], runner=runner()):
        run_id = await launch(channel, "/run train gpt steps=3 sleep_per_step=8")
        await channel.wait_for(f"Run {run_id} (gpt) looks stalled", timeout=60)
        await channel.say(ADMIN, f"/run stop {run_id}")
        await channel.wait_for(f"Run {run_id} (gpt) cancelled", timeout=60)


async def test_a_restart_reattaches_the_container(docker_settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(docker_settings, channels=[channel], runner=runner()) as orch:
        run_id = await launch(channel, "/run train gpt steps=40 sleep_per_step=0.1 eval_every=5")
        await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 5)
    channel = RecordingChannel()
    async with Orchestrator(docker_settings, channels=[channel], runner=runner()) as orch:
        await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
        await orch.services.log.flush()
        logged = await orch.services.db.scalar(
            "SELECT count(*) FROM event_log WHERE source = 'run' AND source_id = ?"
            " AND summary LIKE '%checkpoint at step%'",
            (run_id,),
        )
        lines = (orch.services.runs.run_dir(run_id) / "events.jsonl").read_text().splitlines()
    written = sum(1 for line in lines if json.loads(line)["type"] == "checkpoint")
    assert written > 0 and logged == written


async def test_a_missing_image_is_built_first_and_the_chat_is_told(
    docker_settings: Settings, docker_engine: docker.DockerClient
) -> None:
    image = "assistant-run-test-missing:latest"
    settings = docker_settings.model_copy(update={"run_image": image})
    channel = RecordingChannel()
    try:
        async with Orchestrator(settings, channels=[channel], runner=docker_runner(image)):
            replies = await channel.say(ADMIN, "/run train classifier steps=5")
            reply = next(r for r in replies if r.startswith("Run "))
            run_id = re.search(r"^Run (\w+):", reply).group(1)  # type: ignore[union-attr]
            assert "Queued: the run image is being built first" in reply
            await channel.wait_for(f"Image {image} is missing: building it first", timeout=10)
            await channel.wait_for(f"Image {image} built in", timeout=600)
            await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=120)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_engine.images.remove(image, noprune=True)
