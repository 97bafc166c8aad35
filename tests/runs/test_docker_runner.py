"""DockerRunner against a real engine: hardening, exits, OOM, signals, reconciling, errors."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import docker
import pytest

from assistant.errors import ConfigError, EngineUnavailable, RunStartError, StateError
from assistant.runs.docker_runner import (
    DEFAULT_RUN_UID,
    DockerHost,
    DockerRunner,
    build_images,
    parse_docker_host,
)
from assistant.runs.runner import RunHandle, RunnerState
from tests.support.docker_engine import TEST_LABEL
from tests.support.docker_runs import make_request, wait_ended


async def wait_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


def inspect(engine: docker.DockerClient, handle: RunHandle) -> dict[str, object]:
    attrs: dict[str, object] = engine.api.inspect_container(handle.ref)
    return attrs


async def test_run_writes_only_its_run_dir_as_non_root(
    runner: DockerRunner, probe_image: str, tmp_path: Path
) -> None:
    request = make_request(tmp_path, probe_image, {"action": "write"})
    handle = await runner.launch(request)
    state = await wait_ended(runner, handle)

    assert state.exit is not None and state.exit.exit_code == 0, state
    report = json.loads((request.run_dir / "out.json").read_text())
    assert report["uid"] != 0 and report["gid"] != 0
    expected_uid = DEFAULT_RUN_UID if os.geteuid() == 0 else os.getuid()
    assert report["uid"] == expected_uid
    assert report["/opt/probe-write"] == "Read-only file system"
    assert report["/workspace/probe-write"] == "Read-only file system"
    assert report["/tmp/probe-write"] == "written"
    assert report["net"] == ["lo"]


async def test_container_is_hardened_and_labelled(
    runner: DockerRunner, docker_engine: docker.DockerClient, probe_image: str, tmp_path: Path
) -> None:
    request = make_request(
        tmp_path, probe_image, {"action": "sleep"}, memory_mb=256, cpus=1.5, pids_limit=64
    )
    handle = await runner.launch(request)
    attrs = inspect(docker_engine, handle)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert isinstance(host, dict) and isinstance(config, dict)

    assert config["Labels"]["assistant.run_id"] == request.run_id
    assert config["Labels"]["assistant.recipe"] == "probe"
    assert config["Labels"]["assistant.managed"] == "true"
    assert config["Labels"][TEST_LABEL] == "1"
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
    assert host["PidsLimit"] == 64
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Binds"] == [f"{request.run_dir}:/workspace/run:rw"]
    assert set(host["Tmpfs"]) == {"/tmp"}
    assert not host.get("DeviceRequests")
    assert host["AutoRemove"] is False
    await runner.kill(handle)


async def test_no_host_environment_reaches_the_container(
    runner: DockerRunner,
    docker_engine: docker.DockerClient,
    probe_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-secret-4711")
    monkeypatch.setenv("ASSISTANT_TEST_LEAK", "leaked-value-0815")
    request = make_request(tmp_path, probe_image, {"action": "exit", "code": 0}, cpus=2.0)
    handle = await runner.launch(request)
    env = inspect(docker_engine, handle)["Config"]["Env"]  # type: ignore[index]
    image_env = docker_engine.images.get(probe_image).attrs["Config"]["Env"] or []

    joined = "\n".join(env)
    assert "sk-ant-fake-secret-4711" not in joined
    assert "leaked-value-0815" not in joined
    added = set(env) - set(image_env)
    assert added == {"PYTHONUNBUFFERED=1", "OMP_NUM_THREADS=2"}


async def test_exit_code_is_readable_after_the_end(
    runner: DockerRunner, probe_image: str, tmp_path: Path
) -> None:
    handle = await runner.launch(make_request(tmp_path, probe_image, {"action": "exit", "code": 7}))
    state = await wait_ended(runner, handle)
    assert state.exit is not None
    assert (state.exit.exit_code, state.exit.oom_killed, state.gone) == (7, False, False)

    await runner.remove(handle)
    assert await runner.state(handle) == RunnerState(running=False, gone=True)
    await runner.remove(handle)  # already gone: nothing to do


async def test_memory_limit_ends_in_oom_kill(
    runner: DockerRunner, probe_image: str, tmp_path: Path
) -> None:
    request = make_request(tmp_path, probe_image, {"action": "oom"}, memory_mb=64)
    handle = await runner.launch(request)
    state = await wait_ended(runner, handle)
    assert state.exit is not None and state.exit.oom_killed is True, state
    assert state.exit.exit_code == 137
    assert not (request.run_dir / "survived").exists()


async def test_signal_stop_delivers_sigterm(
    runner: DockerRunner, probe_image: str, tmp_path: Path
) -> None:
    request = make_request(tmp_path, probe_image, {"action": "trap"})
    handle = await runner.launch(request)
    await wait_file(request.run_dir / "ready")
    await runner.signal_stop(handle)
    state = await wait_ended(runner, handle)
    assert state.exit is not None and state.exit.exit_code == 4
    assert (request.run_dir / "terminated").read_text() == "15"
    # Signalling an ended or removed run is not an error.
    await runner.signal_stop(handle)
    await runner.kill(handle)
    await runner.remove(handle)
    await runner.kill(handle)


async def test_list_managed_sees_running_runs_by_label(
    runner: DockerRunner, probe_image: str, tmp_path: Path
) -> None:
    request = make_request(tmp_path, probe_image, {"action": "sleep"})
    handle = await runner.launch(request)
    assert handle in await runner.list_managed()
    with pytest.raises(StateError, match="still running"):
        await runner.remove(handle)

    await runner.kill(handle)
    state = await wait_ended(runner, handle)
    assert state.exit is not None and state.exit.exit_code == 137
    assert state.exit.oom_killed is False
    assert handle not in await runner.list_managed()


async def test_missing_image_says_how_to_build_it(
    runner: DockerRunner, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    request = make_request(tmp_path, "assistant-missing:nope", {"action": "exit", "code": 0})
    with pytest.raises(RunStartError) as info:
        await runner.launch(request)
    assert str(info.value) == (
        "image assistant-missing:nope is missing; run `assistant images build`"
    )
    images = runner.capabilities.images
    assert images is not None
    assert await images.ready("assistant-missing:nope") is False
    assert await images.ready(runner.image) is True


async def test_gpu_request_without_nvidia_runtime_names_the_toolkit(
    runner: DockerRunner, docker_engine: docker.DockerClient, probe_image: str, tmp_path: Path
) -> None:
    if "nvidia" in (docker_engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime: a GPU request would start")
    request = make_request(tmp_path, probe_image, {"action": "exit", "code": 0}, gpus=(0,))
    with pytest.raises(RunStartError, match="NVIDIA Container Toolkit"):
        await runner.launch(request)
    left = docker_engine.containers.list(
        all=True, filters={"label": f"assistant.run_id={request.run_id}"}
    )
    assert left == []
    assert "no GPU runtime" in runner.description


async def test_description_names_address_and_engine(runner: DockerRunner) -> None:
    version = runner.description.split("(engine ", 1)[1]
    assert runner.description.startswith(f"docker at {runner.base_url} (engine ")
    assert version[0].isdigit()


async def test_unreachable_engine_names_the_address(tmp_path: Path) -> None:
    sock = tmp_path / "no-engine.sock"
    runner = DockerRunner(f"unix://{sock}")
    assert runner.description == f"docker at unix://{sock} (not connected yet)"
    request = make_request(tmp_path, "assistant-run:latest", {"action": "exit", "code": 0})
    with pytest.raises(EngineUnavailable) as info:
        await runner.launch(request)
    assert str(info.value) == (
        f"no Docker engine answers at unix://{sock} (no socket there); start one with"
        " `scripts/docker-engine up`, or set DOCKER_HOST"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:///var/run/docker.sock", DockerHost("unix", path="/var/run/docker.sock")),
        ("tcp://gpu-host:2376", DockerHost("tcp", host="gpu-host", port=2376)),
        ("ssh://me@gpu-host", DockerHost("ssh", host="gpu-host", user="me")),
        ("ssh://me@gpu-host:2222", DockerHost("ssh", host="gpu-host", port=2222, user="me")),
        ("ssh://gpu-host", DockerHost("ssh", host="gpu-host")),
        ("tcp://[::1]:2375", DockerHost("tcp", host="::1", port=2375)),
    ],
)
def test_parse_docker_host_accepts(text: str, expected: DockerHost) -> None:
    parsed = parse_docker_host(text)
    assert parsed == expected
    assert parse_docker_host(parsed.url) == parsed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://x", "scheme 'http' is not one of unix, tcp, ssh"),
        ("ssh://", "it names no host"),
        ("tcp://host:notaport", "the port must be a number"),
        ("tcp://host", "tcp:// needs a port"),
        ("gpu-host:2376", "it has no scheme"),
        ("unix://", "the socket path must be absolute"),
        ("ssh://me:pw@gpu-host", "a password is not allowed"),
        ("ssh://me@gpu-host/some/path", "a path ('/some/path') is not allowed"),
    ],
)
def test_parse_docker_host_rejects(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_docker_host(text)
    message = str(info.value)
    assert message.startswith(f"DOCKER_HOST {text!r} is not valid: {why}")
    assert "ssh://[USER@]HOST[:PORT]" in message


def test_runner_rejects_a_malformed_address_up_front() -> None:
    with pytest.raises(ConfigError, match="DOCKER_HOST 'tcp://gpu-host' is not valid"):
        DockerRunner("tcp://gpu-host")


async def test_build_images_streams_lines_and_reports_failure(tmp_path: Path) -> None:
    script = tmp_path / "deploy" / "build.sh"
    script.parent.mkdir()
    script.write_text('echo "== base: $ASSISTANT_RUN_IMAGE"\necho two\nexit "${FAIL:-0}"\n')
    seen: list[str] = []

    async def collect(line: str) -> None:
        seen.append(line)

    await build_images(collect, image="x-run:1", script=script)
    assert seen == ["== base: x-run:1", "two"]

    script.write_text('echo "working"\necho "boom" >&2\nexit 3\n')
    lines: list[str] = []
    with pytest.raises(RunStartError, match=r"failed \(exit 3\):\nworking\nboom"):
        await build_images(lines.append, script=script)
    assert lines == ["working", "boom"]
