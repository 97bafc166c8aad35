"""Runs on a remote engine over ssh://: a second dockerd that only an sshd on loopback
reaches (tests/support/ssh_engine.py), the way a GPU host is reached from a laptop."""

from __future__ import annotations

import re
import socket

import pytest

from assistant.config import Settings
from assistant.errors import ConfigError, EngineUnavailable
from assistant.health import engine_probe
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.select import choose_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN
from tests.support.ssh_engine import SshEngine, ssh_engine, ssh_home

__all__ = ["ssh_engine", "ssh_home"]  # the fixtures, used by name


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
