"""A pool of two real Docker engines on this machine, for the pool tests.

`local` is this machine's engine; `gpu2` is the second dockerd of
tests/support/ssh_engine.py (its own socket and data root), reached straight on its socket,
through a proxy a test can cut (tests/support/engine_proxy.py), or over ssh:// behind a
real sshd. Both are declared in hosts.toml as an admin would; neither engine has the
NVIDIA runtime, so the GPUs are counted for placement only. Runs are the classifier
recipe with a sleep per step: a few seconds each.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DEFAULT_DOCKER_HOST
from storage.runs import RunRecord
from tests.support.docker_engine import docker_run_settings
from tests.support.recording import RecordingChannel
from tests.support.ssh_engine import SshEngine

RUN_IMAGE = "assistant-run:latest"
SHORT = "/run train classifier steps=8 sleep_per_step=0.5"  # about 5 s once started
LONG = "/run train classifier steps=200 sleep_per_step=0.5"  # stopped by the test


def with_run_image(ssh_engine: SshEngine, docker_engine: docker.DockerClient) -> SshEngine:
    """The second engine with the run image (copied once per machine, kept after)."""
    try:
        docker_engine.images.get(RUN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{RUN_IMAGE} is missing: deploy/build-images.sh builds it", pytrace=False)
    ssh_engine.load_image(RUN_IMAGE)
    return ssh_engine


def pool_settings(settings: Settings, gpu2: str, **extra: object) -> Settings:
    """hosts.toml in the test's home: local with GPUs 0 and 1, gpu2 (at `gpu2`) with 0."""
    home = settings.assistant_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "hosts.toml").write_text(
        f'[hosts.local]\nengine = "{DEFAULT_DOCKER_HOST}"\ngpus = [0, 1]\nlabels = ["big"]\n\n'
        f'[hosts.gpu2]\nengine = "{gpu2}"\ngpus = [0]\n'
    )
    return docker_run_settings(settings, RUN_IMAGE, host_probe_s=0.3, **extra)


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        yield orch, channel


async def run_of(orch: Orchestrator, run_id: str) -> RunRecord:
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None
    return run


async def until(
    probe: Callable[[], object], what: str, timeout: float = 60.0, every: float = 0.2
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


async def in_state(orch: Orchestrator, run_id: str, *states: str) -> bool:
    return (await run_of(orch, run_id)).state in states


def status_line(text: str, start: str) -> str:
    found = re.search(rf"^\s*{re.escape(start)}.*$", text, re.M)
    assert found is not None, text
    return found.group(0)
