"""/watch container: containers started with `docker run` by the test, as a user would."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import docker as docker_py
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel
from tests.support.watched_jobs import (
    ADMIN,
    container_base,
    docker_run,
    wait_until,
    watch_id_of,
    watch_settings,
)


def docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def image(docker_engine: docker_py.DockerClient) -> str:
    return container_base(docker_engine)


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return watch_settings(settings)


@pytest.fixture
async def service(wsettings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        yield orch, channel


async def test_a_container_is_followed_to_its_end_with_numbers_and_a_plot(
    service: tuple[Orchestrator, RecordingChannel], image: str, tmp_path: Path
) -> None:
    orch, channel = service
    job = docker_run(image, tmp_path / "job", steps=20, code=3)
    (reply,) = await channel.say(ADMIN, f"/watch container {job.name}")
    watch_id = watch_id_of(reply)
    assert f"container {job.name} ({image})" in reply and "running" in reply
    job.start()
    report = await channel.wait_for("ended: exit code 3", timeout=60)
    assert report.startswith(f"Watch {watch_id}: container {job.name}")
    assert "Step 20/20" in report and "loss 0.05" in report and "Best: val_loss 0.1" in report
    assert "plain last line" in report
    ((_, picture),) = channel.images
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await orch.services.log.flush()
    (story,) = await channel.say(ADMIN, f"/debug watch {watch_id}")
    for piece in ("action watch_added", "tool container.resolve", "ended: exit code 3"):
        assert piece in story, (piece, story)


async def test_a_created_container_is_pending_until_it_starts(
    service: tuple[Orchestrator, RecordingChannel], image: str, tmp_path: Path
) -> None:
    _, channel = service
    job = docker_run(image, tmp_path / "job", steps=3, create_only=True)
    (reply,) = await channel.say(ADMIN, f"/watch container {job.name}")
    watch_id = watch_id_of(reply)
    assert "not started yet" in reply
    await asyncio.to_thread(docker, "start", job.name)
    started = await channel.wait_for(f"({image}) started.", timeout=30)
    assert started.startswith(f"Watch {watch_id}: container {job.name}")
    job.start()
    await channel.wait_for("ended: exit code 0", timeout=60)


async def test_an_out_of_memory_kill_is_named(
    service: tuple[Orchestrator, RecordingChannel], image: str, tmp_path: Path
) -> None:
    _, channel = service
    job = docker_run(
        image, tmp_path / "job", mode="oom", extra=("--memory", "64m", "--memory-swap", "64m")
    )
    await channel.say(ADMIN, f"/watch container {job.name}")
    job.start()
    report = await channel.wait_for("ended: out of memory (OOM-killed)", timeout=60)
    assert "exit code 137" in report


async def test_hostile_output_costs_its_own_lines_only(
    service: tuple[Orchestrator, RecordingChannel], image: str, tmp_path: Path
) -> None:
    """Bad UTF-8, NUL and a 10 MB line, then report lines: the numbers still arrive."""
    orch, channel = service
    job = docker_run(image, tmp_path / "job", steps=10, mode="hostile")
    (reply,) = await channel.say(ADMIN, f"/watch container {job.name}")
    watch_id = watch_id_of(reply)
    job.start()
    report = await channel.wait_for("ended: exit code 0", timeout=90)
    assert "Step 10/10" in report and "Output lines cut or left out: 1" in report
    watcher = orch.services.watches
    assert watcher is not None
    watch = await watcher.repo.get(watch_id)
    assert watch is not None
    tail = watcher.tail(watch, 40)
    assert "bad utf-8 \ufffd\ufffd\ufffd( and NUL \ufffd here" in tail
    (huge,) = [line for line in tail if line.startswith("xxxx")]
    assert huge.endswith("…[cut]") and len(huge) < 2100  # kept cut, never whole


async def test_a_container_watch_survives_a_restart_without_repeating_a_line(
    wsettings: Settings, image: str, tmp_path: Path
) -> None:
    job = docker_run(image, tmp_path / "job", steps=30)
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        (reply,) = await channel.say(ADMIN, f"/watch container {job.name}")
        watch_id = watch_id_of(reply)
        await orch.services.watches.poll()  # type: ignore[union-attr]  # reads "job up"
    job.start()
    await asyncio.to_thread(docker, "wait", job.name)
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        report = await channel.wait_for(f"Watch {watch_id}", timeout=30)
        assert "ended: exit code 0" in report and "Step 30/30" in report
        watch = await orch.services.watches.repo.get(watch_id)  # type: ignore[union-attr]
        assert watch is not None and watch.lines == 1 + 30 + 6 + 1


async def test_stopping_a_container_is_refused_unless_allowed_and_refusals_say_why(
    settings: Settings, image: str, tmp_path: Path
) -> None:
    job = docker_run(image, tmp_path / "job", mode="sleep")
    channel = RecordingChannel()
    async with Orchestrator(watch_settings(settings), channels=[channel]):
        (reply,) = await channel.say(ADMIN, f"/watch container {job.name}")
        watch_id = watch_id_of(reply)
        (refused,) = await channel.say(ADMIN, f"/watch stop {watch_id}")
        assert "is off" in refused and "ASSISTANT_WATCH_ALLOW_STOP=true" in refused
        (missing,) = await channel.say(ADMIN, "/watch container no-such-container-here")
        assert missing.startswith("no container 'no-such-container-here' on the Docker engine")
        (bad,) = await channel.say(ADMIN, "/watch container ../etc")
        assert "is not a container name or id" in bad
    channel = RecordingChannel()
    allowed = watch_settings(settings, watch_allow_stop=True)
    async with Orchestrator(allowed, channels=[channel]) as orch:
        watcher = orch.services.watches
        assert watcher is not None

        async def handler_set() -> bool:  # "job up" comes after its SIGTERM handler
            watch = await watcher.repo.get(watch_id)
            return watch is not None and watch.lines >= 1

        await wait_until(handler_set, timeout=60)
        # the stop waits for the end, whose report may come first
        replies = await channel.say(ADMIN, f"/watch stop {watch_id}")
        assert any(
            f"Watch {watch_id}: the container stopped with SIGTERM;" in r for r in replies
        ), replies
        report = await channel.wait_for("ended: exit code 143: killed by SIGTERM", timeout=60)
        assert report.startswith(f"Watch {watch_id}")
