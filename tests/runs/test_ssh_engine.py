"""Runs on a remote engine over ssh://: a second dockerd that only an sshd on loopback
reaches (tests/support/ssh_engine.py), the way a GPU host is reached from a laptop."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.errors import ConfigError, EngineUnavailable
from assistant.health import engine_probe
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.remote_dir import RUN_DIR_LABEL, volume_name
from assistant.runs.select import choose_runner
from tests.support.docker_engine import docker_run_settings
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, launch, step_of, wait_until
from tests.support.ssh_engine import SshEngine


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_runner_reaches_an_engine_over_ssh(
    ssh_engine: SshEngine, ssh_home: object, settings: Settings
) -> None:
    runner = await choose_runner(
        settings.model_copy(update={"runner": "auto", "docker_host": ssh_engine.url})
    )
    try:
        assert isinstance(runner, DockerRunner)
        assert runner.description.startswith(f"docker at {ssh_engine.url} (engine ")
        # the second engine, not the first: its data root is the test's
        root = await runner.engine.call(lambda client: client.info()["DockerRootDir"])
        assert root == str(ssh_engine.root / "data")
        assert await runner.list_managed() == []
        await runner.ping(2.0)
    finally:
        await runner.aclose()


@pytest.mark.parametrize("problem", ["nothing listens", "unknown host key"])
async def test_an_ssh_engine_that_cannot_be_reached_is_an_error_at_start(
    ssh_engine: SshEngine,
    ssh_home: object,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
) -> None:
    url = ssh_engine.url
    if problem == "nothing listens":
        url = f"ssh://{ssh_engine.user}@127.0.0.1:{unused_port()}"
    else:
        empty = ssh_engine.home.parent / "empty-home"
        (empty / ".ssh").mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("HOME", str(empty))
    auto = settings.model_copy(update={"runner": "auto", "docker_host": url})
    with pytest.raises(ConfigError) as info:
        await choose_runner(auto)  # never a fallback to local processes
    text = str(info.value)
    assert text.startswith(f"DOCKER_HOST={url} but no Docker engine answers at {url} (")
    assert "~/.ssh/known_hosts" in text and "~/.ssh/config" in text
    if problem == "unknown host key":
        assert "not found in known_hosts" in text


async def test_an_ssh_engine_that_drops_later_shows_on_status(
    ssh_engine: SshEngine, ssh_home: object, settings: Settings
) -> None:
    with ssh_engine.serve_ssh() as server:
        url = f"ssh://{ssh_engine.user}@127.0.0.1:{server.port}"
        runner = DockerRunner(url, instance="ssh-status-test")
        await runner.connect()
        channel = RecordingChannel()
        async with Orchestrator(settings, channels=[channel], runner=runner):
            (before,) = await channel.say(ADMIN, "/status")
            assert "Engine:" not in before and f"docker at {url}" in before
            engine_probe(runner).cache_s = 0.0  # /status asks the engine each time
            server.stop()
            with pytest.raises(EngineUnavailable):  # the monitor's next call finds it gone
                await runner.list_managed()
            (after,) = await channel.say(ADMIN, "/status")
    line = re.search(r"^Engine: .*$", after, re.M)
    assert line is not None, after
    assert f"unreachable: no Docker engine answers at {url} (connection lost:" in line.group(0)
    assert f"Runner: docker at {url} (connection lost: " in after


RUN_IMAGE = "assistant-run:latest"


async def test_a_classifier_run_on_the_ssh_engine_reports_like_a_local_one(
    ssh_engine: SshEngine, ssh_home: object, settings: Settings
) -> None:
    """No folder is shared: the run writes into a volume on the engine's host, and the
    report comes from what the runner mirrored back through the archive API."""
    await asyncio.to_thread(ssh_engine.load_image, RUN_IMAGE)
    remote = docker_run_settings(settings, RUN_IMAGE)
    runner = DockerRunner(ssh_engine.url, image=RUN_IMAGE, instance="ssh-flow-test")
    assert runner.capabilities.run_dir_shared is False
    engine = ssh_engine.client()
    channel = RecordingChannel()
    try:
        async with Orchestrator(remote, channels=[channel], runner=runner) as orch:
            (reply,) = await channel.say(ADMIN, "/run train classifier steps=60")
            assert f"docker at {ssh_engine.url}" in reply, reply
            run_id = re.search(r"^Run (\w+):", reply).group(1)  # type: ignore[union-attr]
            run = await orch.services.runs.repo.get(run_id)
            assert run is not None and run.handle
            mounts = engine.containers.get(run.handle).attrs["Mounts"]
            # nothing of this host's is mounted: the run dir is a folder of its volume
            assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/workspace")]
            report = await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=180)
            run_dir = orch.services.runs.run_dir(run_id)
        # the same fields as a local run's report (tests/runs/test_docker_flow.py)
        assert "accuracy" in report and "Checkpoint:" in report, report
        assert channel.images and channel.images[0][1].read_bytes()[:4] == b"\x89PNG"
        events = (run_dir / "events.jsonl").read_text().splitlines()
        # the agent's heartbeat thread may write one last beat after the result
        kinds = [json.loads(e)["type"] for e in events]
        assert [k for k in kinds if k != "heartbeat"][-1] == "result", kinds[-5:]
        assert json.loads((run_dir / "result.json").read_text())["status"] == "succeeded"
        # the checkpoint stays on the engine's host, in the run's volume
        volume = volume_name("ssh-flow-test", run_id)
        checkpoint = re.search(r"Checkpoint: (\S+)", report).group(1)  # type: ignore[union-attr]
        assert "kept on the engine's host" in Path(checkpoint).read_text()
        listing = engine.containers.run(
            RUN_IMAGE,
            ["ls", "/v/run/checkpoints"],
            user="0:0",
            volumes={volume: {"bind": "/v", "mode": "ro"}},
            network_mode="none",
            remove=True,
        )
        assert Path(checkpoint).name in listing.decode()
    finally:
        for vol in engine.volumes.list(filters={"label": "assistant.instance=ssh-flow-test"}):
            vol.remove(force=True)
        engine.close()


async def test_pause_resume_and_stop_on_the_ssh_engine(
    ssh_engine: SshEngine, ssh_home: object, settings: Settings
) -> None:
    """control.json reaches the volume before the signal; the resumed part continues at
    the saved step from the checkpoint kept there, and the paused part's result.json,
    still in the volume, is not taken for the resumed part's."""
    await asyncio.to_thread(ssh_engine.load_image, RUN_IMAGE)
    remote = docker_run_settings(settings, RUN_IMAGE)
    runner = DockerRunner(ssh_engine.url, image=RUN_IMAGE, instance="ssh-pause-test")
    engine = ssh_engine.client()
    channel = RecordingChannel()
    try:
        async with Orchestrator(remote, channels=[channel], runner=runner) as orch:
            repo = orch.services.runs.repo
            run_id = await launch(
                channel, "/run train gpt steps=40 sleep_per_step=0.1 eval_every=10"
            )
            await wait_until(lambda: step_of(repo, run_id), 8)
            await channel.say(ADMIN, f"/run pause {run_id}")
            await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=90)
            saved = (await repo.get(run_id)).step  # type: ignore[union-attr]
            await channel.say(ADMIN, f"/run resume {run_id}")
            await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
            events = [
                json.loads(line)
                for line in (orch.services.runs.run_dir(run_id) / "events.jsonl")
                .read_text()
                .splitlines()
            ]
            assert [e["step"] for e in events if e["type"] == "started"] == [0, saved]

            other = await launch(channel, "/run train gpt steps=400 sleep_per_step=0.2")
            await wait_until(lambda: step_of(repo, other), 2)
            await channel.say(ADMIN, f"/run stop {other}")
            await channel.wait_for(f"Run {other} (gpt) cancelled", timeout=90)
    finally:
        for vol in engine.volumes.list(filters={"label": "assistant.instance=ssh-pause-test"}):
            vol.remove(force=True)
        engine.close()


async def test_what_comes_back_from_the_engine_is_checked(
    ssh_engine: SshEngine, ssh_home: object, tmp_path: Path
) -> None:
    """The run's files are hostile: links, folders under a file's name, files too big or
    too deep never reach the local run dir."""
    await asyncio.to_thread(ssh_engine.load_image, RUN_IMAGE)
    runner = DockerRunner(ssh_engine.url, image=RUN_IMAGE, instance="ssh-hostile-test")
    assert runner.remote is not None
    local = tmp_path / "run"
    for folder in ("", "artifacts", "checkpoints"):
        (local / folder).mkdir(exist_ok=True)
    plant = (
        "mkdir -p /workspace/run/artifacts/deep && cd /workspace/run"
        " && ln -s /etc/passwd events.jsonl && mkdir result.json && echo out > stdout.log"
        " && ln -s /etc/passwd artifacts/passwd && echo x > artifacts/deep/f"
        " && head -c 20000000 /dev/zero > artifacts/big.bin && echo ok > artifacts/plot.txt"
    )
    engine = ssh_engine.client()
    container = engine.containers.run(
        RUN_IMAGE,
        ["sh", "-c", plant],
        user="0:0",
        entrypoint=[],
        volumes={"assistant-ssh-hostile-test": {"bind": "/workspace", "mode": "rw"}},
        labels={RUN_DIR_LABEL: str(local)},
        network_mode="none",
        detach=True,
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        await runner.remote.pull(str(container.id), engine.api.inspect_container(container.id))
        assert sorted(p.name for p in local.rglob("*")) == [
            "artifacts",
            "checkpoints",
            "plot.txt",
            "stdout.log",
        ]
        assert (local / "artifacts" / "plot.txt").read_text() == "ok\n"
        assert (local / "stdout.log").read_text() == "out\n"
    finally:
        container.remove(force=True)
        engine.volumes.get("assistant-ssh-hostile-test").remove(force=True)
        engine.close()
        await runner.aclose()
