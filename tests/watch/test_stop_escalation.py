"""/watch stop on jobs that do not end on SIGTERM: a process that traps it and a container
whose pid 1 (no --init) ignores it. Each is killed after the grace period, and the reply
says so; a job that ends on SIGTERM is said to have stopped with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker as docker_py
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.docker_engine import TEST_LABEL
from tests.support.recording import RecordingChannel
from tests.support.watched_jobs import (
    ADMIN,
    container_base,
    start_job,
    wait_until,
    watch_id_of,
    watch_settings,
)

# Traps SIGTERM, says so in its log, and goes on: only SIGKILL ends it.
STUBBORN = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, going on", flush=True))
print("handler set", flush=True)
while True:
    time.sleep(0.05)
"""


def stopping(settings: Settings, grace_s: float) -> Settings:
    return watch_settings(settings, watch_allow_stop=True, watch_stop_grace_s=grace_s)


def stubborn(log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-u", "-c", STUBBORN], stdout=out)


async def stop(channel: RecordingChannel, watch_id: str) -> str:
    """/watch stop's own reply (the job's end report may come while it waits)."""
    replies = await channel.say(ADMIN, f"/watch stop {watch_id}")
    (reply,) = [r for r in replies if r.endswith("its end is reported when the watch sees it.")]
    return reply


async def test_a_process_that_traps_sigterm_is_killed_after_the_grace_period(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "stubborn.log"
    proc = stubborn(log)
    try:

        async def handler_set() -> bool:
            return "handler set" in log.read_text()

        await wait_until(handler_set)
        channel = RecordingChannel()
        async with Orchestrator(stopping(settings, 0.5), channels=[channel]) as orch:
            (reply,) = await channel.say(ADMIN, f"/watch pid {proc.pid}")
            watch_id = watch_id_of(reply)
            stopped = await stop(channel, watch_id)
            assert stopped.startswith(
                f"Watch {watch_id}: process {proc.pid} did not stop on SIGTERM within 0.5 s;"
                " killed with SIGKILL"
            ), stopped
            report = await channel.wait_for("ended: killed by SIGKILL", timeout=30)
            assert report.startswith(f"Watch {watch_id}")
            await orch.services.log.flush()
            calls = await orch.services.db.fetchall(
                "SELECT tool_name, output FROM tool_call_log WHERE tool_name LIKE 'pid.%'"
                " ORDER BY id"
            )
            names = [row["tool_name"] for row in calls]
            assert names == ["pid.resolve", "pid.stop", "pid.kill"], names
        assert proc.wait(30) == -9
        assert "got SIGTERM, going on" in log.read_text()  # SIGTERM came first, and was trapped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


async def test_a_process_that_ends_on_sigterm_is_said_to_have_stopped_with_it(
    settings: Settings, tmp_path: Path
) -> None:
    channel = RecordingChannel()
    async with Orchestrator(stopping(settings, 60), channels=[channel]):
        job = start_job(tmp_path / "job", steps=5)
        try:
            (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
            watch_id = watch_id_of(reply)
            stopped = await stop(channel, watch_id)
            assert stopped.startswith(
                f"Watch {watch_id}: process {job.pid} stopped with SIGTERM;"
            ), stopped
            assert "SIGKILL" not in stopped
            assert job.reap() == -15
        finally:
            if job.proc.poll() is None:
                job.proc.kill()
                job.reap()


async def test_a_container_without_init_ignoring_sigterm_is_killed(
    settings: Settings, docker_engine: docker_py.DockerClient, tmp_path: Path
) -> None:
    """python as pid 1 with no handler: the kernel drops SIGTERM; SIGKILL from the engine
    (outside the container's pid namespace) ends it."""
    image = container_base(docker_engine)
    container = docker_engine.containers.run(
        image,
        ["python3", "-u", "-c", "import time; print('up', flush=True); time.sleep(600)"],
        detach=True,
        labels={TEST_LABEL: "1"},
        network_mode="none",
    )
    try:

        async def up() -> bool:
            return b"up" in container.logs()

        await wait_until(up, timeout=60)
        channel = RecordingChannel()
        async with Orchestrator(stopping(settings, 1), channels=[channel]):
            (reply,) = await channel.say(ADMIN, f"/watch container {container.name}")
            watch_id = watch_id_of(reply)
            stopped = await stop(channel, watch_id)
            assert stopped.startswith(
                f"Watch {watch_id}: the container did not stop on SIGTERM within 1 s;"
                " killed with SIGKILL"
            ), stopped
            report = await channel.wait_for("ended: exit code 137: killed by SIGKILL", timeout=60)
            assert report.startswith(f"Watch {watch_id}")
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 137
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("grace", ["0", "-1", "301"])
def test_the_grace_period_setting_is_bounded(grace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSISTANT_WATCH_STOP_GRACE", grace)
    with pytest.raises(ValueError, match=r"watch_stop_grace_s|ASSISTANT_WATCH_STOP_GRACE"):
        Settings()  # type: ignore[call-arg]
