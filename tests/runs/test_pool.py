"""A pool of two real Docker engines on this machine, each with a fake GPU inventory.

`local` is this machine's engine; `gpu2` is the second dockerd of
tests/support/ssh_engine.py (its own socket and data root), reached straight on its socket,
through a proxy a test can cut (a host that drops), or over ssh:// behind a real sshd.
Both are declared in hosts.toml as an admin would (`gpus = [0, 1]`); neither engine has
the NVIDIA runtime, so the GPUs are counted for placement only. Runs are the classifier
recipe with a sleep per step: a few seconds each.
"""

from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest

from assistant.config import Settings
from assistant.runs.docker_runner import RUN_ID_LABEL
from assistant.runs.pool import split_ref
from tests.support.engine_proxy import EngineProxy
from tests.support.pool_hosts import (
    LONG,
    SHORT,
    in_state,
    pool_settings,
    run_of,
    service,
    status_line,
    until,
    with_run_image,
)
from tests.support.run_flow import ADMIN, launch
from tests.support.ssh_engine import SshEngine


@pytest.fixture
def second_engine(ssh_engine: SshEngine, docker_engine: docker.DockerClient) -> SshEngine:
    return with_run_image(ssh_engine, docker_engine)


async def test_runs_go_where_gpus_are_free_in_the_order_asked_or_where_pinned(
    second_engine: SshEngine, settings: Settings, docker_engine: docker.DockerClient
) -> None:
    """Both engines straight on their sockets: placement, host=, a run that fits nowhere,
    /status per host, and each container on the engine it was placed on."""
    pooled = pool_settings(settings, f"unix://{second_engine.socket}")
    second = second_engine.client()
    try:
        async with service(pooled) as (orch, channel):
            wide = await launch(channel, f"{SHORT} gpus=2")  # only local has 2
            (reply,) = await channel.say(ADMIN, f"{SHORT} gpus=1 host=gpu2")
            assert "\nHost: on gpu2." in reply, reply
            pinned = reply.split(":", 1)[0].removeprefix("Run ")
            (reply,) = await channel.say(ADMIN, f"{SHORT} gpus=1")  # nothing free now
            assert "\nHost: waiting for 1 GPU(s): local 0/2 GPUs free, gpu2 0/1" in reply
            waits = reply.split(":", 1)[0].removeprefix("Run ")
            assert (await run_of(orch, wide)).host == "local"
            assert (await run_of(orch, pinned)).host == "gpu2"
            assert (await run_of(orch, waits)).state == "queued"
            (status,) = await channel.say(ADMIN, "/status")
            assert "Runner: docker pool of 2 hosts (local, gpu2; 2 answering)" in status
            local = status_line(status, "local: up")
            assert "GPUs 0 free, 2 used of 2 (counted for placement only" in local
            assert f"runs: {wide}" in local and "labels big" in local
            assert f"runs: {pinned}" in status_line(status, "gpu2: up")
            queued = status_line(status, waits)
            assert "waiting for 1 GPU(s): local 0/2 GPUs free, gpu2 0/1 GPUs free" in queued
            (runs,) = await channel.say(ADMIN, "/runs")
            assert "on gpu2" in status_line(runs, pinned)
            # the containers are on the engines their hosts name, with no GPU asked of an
            # engine that has no GPU runtime
            wide_run, pinned_run = await run_of(orch, wide), await run_of(orch, pinned)
            assert wide_run.handle and pinned_run.handle
            local_box = docker_engine.containers.get(split_ref(wide_run.handle)[1])
            gpu2_box = second.containers.get(split_ref(pinned_run.handle)[1])
            assert gpu2_box.labels[RUN_ID_LABEL] == pinned
            assert gpu2_box.labels["assistant.host"] == "gpu2"
            assert not local_box.attrs["HostConfig"].get("DeviceRequests")
            # refusals change nothing
            (nohost,) = await channel.say(ADMIN, f"{SHORT} host=gpu9")
            assert nohost.startswith("no host or label 'gpu9' in the pool (hosts: local, gpu2")
            (toobig,) = await channel.say(ADMIN, f"{SHORT} gpus=2 host=gpu2")
            assert toobig == "the run asks for 2 GPU(s) but host gpu2 has 1"
            for run_id in (wide, pinned, waits):
                await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=420)
            # the one that waited started once GPUs were free, on whichever host freed first
            assert (await run_of(orch, waits)).host in ("local", "gpu2")
            (show,) = await channel.say(ADMIN, f"/run show {pinned}")
            assert "Host: on gpu2 (host=gpu2 asked)" in show
    finally:
        second.close()


async def test_a_host_that_drops_leaves_its_runs_unknown_until_it_answers_again(
    second_engine: SshEngine, settings: Settings
) -> None:
    """gpu2 behind a proxy that the test cuts: its run is unknown, not failed, a stop asked
    meanwhile waits for it, the other host's run goes on and ends on time; restored, the
    stop reaches the run and it is followed to its report."""
    proxy = EngineProxy(str(second_engine.socket))
    await proxy.restore()
    try:
        pooled = pool_settings(settings, proxy.url)
        async with service(pooled) as (orch, channel):
            far = await launch(channel, f"{LONG} gpus=1 host=gpu2")
            near = await launch(channel, f"{SHORT} gpus=1 host=local")
            await until(lambda: in_state(orch, far, "running"), "the run on gpu2 to start", 300)
            await proxy.cut()
            await until(
                lambda: not orch.services.runs.runner.capabilities.hosts.get("gpu2").up,  # type: ignore[union-attr]
                "the pool to see gpu2 drop",
            )
            (runs,) = await channel.say(ADMIN, "/runs")
            line = status_line(runs, far)
            assert " running " in line
            assert re.search(r"unknown: host gpu2 not answering since \d\d:\d\d", line), line
            (status,) = await channel.say(ADMIN, "/status")
            assert re.search(r"gpu2: not answering since \d\d:\d\d", status), status
            assert f"runs: {far} unknown" in status
            (show,) = await channel.say(ADMIN, f"/run show {far}")
            assert "Host: unknown: host gpu2 not answering since" in show
            (stop,) = await channel.say(ADMIN, f"/run stop {far}")
            assert "when the engine answers" in stop and "host gpu2 does not answer" in stop
            # the other host is not held up by the silent one
            await channel.wait_for(f"Run {near} (classifier) succeeded", timeout=420)
            assert (await run_of(orch, far)).state == "stopping"  # nothing settled meanwhile
            await proxy.restore()
            report = await channel.wait_for(f"Run {far} (classifier) cancelled", timeout=420)
            assert "Checkpoint:" in report  # it checkpointed on the stop, as on one engine
            assert (await run_of(orch, far)).error is None
    finally:
        await proxy.aclose()


async def test_a_host_silent_past_the_timeout_loses_its_runs_and_is_cleaned_when_back(
    second_engine: SshEngine, settings: Settings
) -> None:
    proxy = EngineProxy(str(second_engine.socket))
    await proxy.restore()
    second = second_engine.client()
    try:
        pooled = pool_settings(settings, proxy.url, host_lost_after_s=2.0)
        async with service(pooled) as (orch, channel):
            far = await launch(channel, f"{LONG} gpus=1 host=gpu2")
            await until(lambda: in_state(orch, far, "running"), "the run on gpu2 to start", 300)
            run = await run_of(orch, far)
            assert run.handle
            container = split_ref(run.handle)[1]
            await proxy.cut()
            report = await channel.wait_for(f"Run {far} (classifier) lost", timeout=60)
            assert "host gpu2 has not answered since" in report
            assert "given up after 2 s (ASSISTANT_HOST_LOST_AFTER)" in report
            assert second.containers.get(container).status == "running"  # still there
            await proxy.restore()  # back: what was given up there is removed

            def removed() -> bool:
                try:
                    second.containers.get(container)
                except docker.errors.NotFound:
                    return True
                return False

            await until(removed, "the lost run's container to be removed", 60)
    finally:
        second.close()
        await proxy.aclose()


async def test_a_restart_finds_runs_on_both_hosts_one_over_ssh(
    second_engine: SshEngine, ssh_home: Path, settings: Settings
) -> None:
    """The service stops with a run on each host (gpu2 reached over ssh://, its run dir
    mirrored through the archive API); the next start adopts both and reports them."""
    pooled = pool_settings(settings, second_engine.url)
    async with service(pooled) as (orch, channel):
        near = await launch(channel, f"{LONG.replace('200', '24')} gpus=1 host=local")
        far = await launch(channel, f"{LONG.replace('200', '24')} gpus=1 host=gpu2")
        for run_id in (near, far):
            await until(lambda r=run_id: in_state(orch, r, "running"), f"{run_id} to start", 300)
    async with service(pooled) as (orch, channel):
        assert (await run_of(orch, near)).host == "local"
        assert (await run_of(orch, far)).host == "gpu2"
        for run_id in (near, far):
            report = await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=420)
            assert "accuracy" in report
        history = [state for _, state, _ in await orch.services.runs.repo.history(far)]
        assert "lost" not in history and history[-1] == "succeeded"
