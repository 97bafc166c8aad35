"""The `Runner` contract, run against every engine: a real container, a real subprocess,
a real Slurm job on the one-node cluster of tests/support/slurm_cluster.py.

Each test takes the parametrized `engine` fixture and exercises `Runner` members for real:
the run is the real agent (`python -m assistant.jobs.agent`) on a declared recipe whose
command is a short Python script. A new engine (Slurm, a remote engine over ssh) passes
this module by adding its name to `ENGINES` and a branch in `make_runner`.

The second half puts the Docker engine behind tests/support/engine_proxy.py and cuts it
or black-holes it (accepts, never answers): every call that needs the engine raises
`EngineUnavailable` naming its address, within a few seconds (never docker-py's 60), and
everything works again once the engine is back. The bound asserted (10 s) is generous on
purpose: the point is "not 60", not a timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

import docker
import pytest

from assistant.errors import EngineUnavailable, StateError
from assistant.jobs.declared import DeclaredRecipe, ProgressRules, to_json
from assistant.runs.docker_runner import DEFAULT_DOCKER_HOST, DockerRunner
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.runner import (
    Capabilities,
    LaunchRequest,
    RunHandle,
    Runner,
    RunnerKind,
    RunnerState,
)
from assistant.runs.slurm_cli import SlurmCli
from assistant.runs.slurm_runner import SlurmRunner
from tests.support.docker_engine import TEST_LABEL
from tests.support.engine_proxy import EngineProxy, engine_proxy

RUN_IMAGE = "assistant-run:latest"
DOCKER_HOST = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
ENGINES = ("docker", "process", "slurm")
BOUND_S = 10.0  # "a few seconds": generous, so a loaded machine does not fail it
MARK = "contract: the agent's own output"

# The recipe: says MARK on its agent's own stderr (what the engine keeps of a run, the
# way an agent's crash would land there), then does what `mode` says.
SCRIPT = f"""
import os, signal, sys, time
mode = sys.argv[1]
with open("/proc/%d/fd/2" % os.getppid(), "w") as agent_err:  # no braces: a template
    agent_err.write({MARK!r} + "\\n")
print("recipe started", flush=True)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "fail":
    sys.exit(3)
time.sleep(120)
"""


def _static_check(
    docker_runner: DockerRunner, process_runner: ProcessRunner, slurm_runner: SlurmRunner
) -> list[Runner]:
    """mypy's part of the contract: every runner is a `Runner`, member for member."""
    as_docker: Runner = docker_runner
    as_process: Runner = process_runner
    as_slurm: Runner = slurm_runner
    return [as_docker, as_process, as_slurm]


def test_both_runners_are_runners_to_mypy() -> None:
    """`_static_check` assigns each runner to a `Runner`: strict mypy must agree."""
    from mypy import api

    out, err, code = api.run(["--strict", "--follow-imports=silent", __file__])
    assert code == 0, out + err


def make_runner(
    kind: str, runs_dir: Path, docker_host: str, slurm_env: dict[str, str] | None = None
) -> Runner:
    if kind == "docker":  # an instance of its own: other tests' containers are not ours
        return DockerRunner(docker_host, image=RUN_IMAGE, instance=_instance())
    if kind == "process":
        return ProcessRunner(runs_dir, python=sys.executable)
    if kind == "slurm":  # the session's cluster; jobs of its own instance
        cli = SlurmCli(env={**os.environ, **(slurm_env or {})})
        return SlurmRunner(cli, runs_dir, instance=_instance(), python=sys.executable)
    raise AssertionError(f"no runner for {kind}")


def _instance() -> str:
    return f"contract-{secrets.token_hex(4)}"


@pytest.fixture(params=ENGINES)
def kind(request: pytest.FixtureRequest) -> str:
    """Each engine in turn (the Docker engine's tests need it, and the run image on it)."""
    if request.param == "docker":
        _need_run_image(request.getfixturevalue("docker_engine"))
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
    return str(request.param)


@pytest.fixture
async def engine(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Runner]:
    """A runner of `kind`; its runs live under tmp_path/runs."""
    slurm_env = request.getfixturevalue("slurm_cluster").env if kind == "slurm" else None
    runner = make_runner(kind, tmp_path / "runs", DOCKER_HOST, slurm_env)
    await runner.list_managed()  # connected, as the host's runner is once chosen
    try:
        yield runner
    finally:
        for handle in await runner.list_managed():
            await runner.kill(handle)
        await runner.aclose()


def _need_run_image(engine: docker.DockerClient) -> None:
    try:
        engine.images.get(RUN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{RUN_IMAGE} is missing: deploy/build-images.sh builds it", pytrace=False)


def launch_request(runner: Runner, runs_dir: Path, mode: str) -> LaunchRequest:
    """A run dir with spec.json for the declared recipe, as the manager writes it."""
    run_id = f"c-{mode}-{secrets.token_hex(4)}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    recipe = DeclaredRecipe(
        name="contract",
        summary="",
        image=None,
        workdir=None,
        workdir_writable=False,
        command=("python3", "-c", SCRIPT, mode),
        params=(),
        gpus=0,
        memory_mb=None,
        cpus=None,
        time_limit_s=None,
        env=(),
        secrets=(),
        network=False,
        progress=ProgressRules(None, (), (), None),
        resume=None,
        key_metric="loss",
        key_metric_mode="min",
        line=1,
    )
    spec = {
        "run_id": run_id,
        "recipe": "contract",
        "declared": to_json(recipe),
        "params": {},
        "paths": {"run_dir": runner.capabilities.paths.run_dir(run_dir)},
        "heartbeat_s": 1,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    return LaunchRequest(
        run_id=run_id,
        recipe="contract",
        run_dir=run_dir,
        image=RUN_IMAGE,
        memory_mb=512,
        labels={TEST_LABEL: "1"},
    )


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)


async def ended(runner: Runner, handle: RunHandle, timeout: float = 60) -> RunnerState:
    async def over() -> bool:
        return not (await runner.state(handle)).running

    await until(f"{handle.run_id} to end", over, timeout)
    return await runner.state(handle)


# ---- the contract ------------------------------------------------------------------------


async def test_kind_description_and_capabilities_are_true(engine: Runner, tmp_path: Path) -> None:
    assert engine.kind in get_args(RunnerKind)
    assert engine.description.strip()
    caps = engine.capabilities
    assert isinstance(caps, Capabilities)
    await engine.ping(2.0)
    if caps.images is not None:
        assert await caps.images.ready(RUN_IMAGE) is True
        assert await caps.images.ready("assistant-missing:nope") is False
    if caps.servers is not None:
        assert isinstance(await caps.servers.running(), dict)


async def test_a_run_is_launched_followed_stopped_and_removed(
    engine: Runner, tmp_path: Path
) -> None:
    request = launch_request(engine, tmp_path / "runs", "sleep")
    handle = await engine.launch(request)
    assert (handle.runner, handle.run_id) == (engine.kind, request.run_id)
    assert (await engine.state(handle)).running
    assert handle in await engine.list_managed()

    async def said() -> bool:
        return MARK in await engine.logs_tail(handle, 20)

    await until("the agent's output in logs_tail", said)
    assert "recipe started" in (request.run_dir / "stdout.log").read_text()  # the paths view
    with pytest.raises(StateError, match="still running"):
        await engine.remove(handle)

    await engine.signal_stop(handle)
    state = await ended(engine, handle)
    assert state.exit is not None and state.exit.exit_code is not None, state
    assert not state.gone
    assert handle not in await engine.list_managed()
    await engine.signal_stop(handle)  # an ended run: nothing to do, no error
    await engine.kill(handle)

    await engine.remove(handle)
    assert (await engine.state(handle)).gone
    await engine.remove(handle)  # gone already: removed
    await engine.kill(handle)


async def test_kill_ends_a_run_that_ignores_sigterm(engine: Runner, tmp_path: Path) -> None:
    request = launch_request(engine, tmp_path / "runs", "stubborn")
    handle = await engine.launch(request)

    async def recipe_up() -> bool:
        return (request.run_dir / "stdout.log").exists() and "recipe started" in (
            request.run_dir / "stdout.log"
        ).read_text()

    await until("the recipe to start", recipe_up)
    await engine.kill(handle)
    state = await ended(engine, handle, timeout=20)
    assert state.exit is not None and not state.exit.oom_killed, state
    await engine.remove(handle)


async def test_how_a_run_ended_is_read_back(engine: Runner, tmp_path: Path) -> None:
    request = launch_request(engine, tmp_path / "runs", "fail")
    handle = await engine.launch(request)
    state = await ended(engine, handle)
    assert state.exit is not None and state.exit.exit_code == 1, state  # the agent's EXIT_FAILED
    result = json.loads((request.run_dir / "result.json").read_text())
    assert result["status"] == "failed" and result["exit_code"] == 3
    await engine.remove(handle)


async def test_aclose_lets_go_and_the_next_call_connects_again(
    engine: Runner, tmp_path: Path
) -> None:
    request = launch_request(engine, tmp_path / "runs", "sleep")
    handle = await engine.launch(request)
    await engine.aclose()
    assert (await engine.state(handle)).running
    await engine.kill(handle)
    await ended(engine, handle)
    await engine.remove(handle)


# ---- an engine that does not answer ------------------------------------------------------


@pytest.fixture
async def proxy(docker_engine: docker.DockerClient) -> AsyncIterator[EngineProxy]:
    _need_run_image(docker_engine)
    async with engine_proxy() as running:
        yield running


@pytest.fixture
async def behind(proxy: EngineProxy) -> AsyncIterator[DockerRunner]:
    runner = DockerRunner(proxy.url, image=RUN_IMAGE, instance=_instance())
    await runner.connect()
    try:
        yield runner
    finally:
        await proxy.restore()
        for handle in await runner.list_managed():
            await runner.kill(handle)
        await runner.aclose()


def every_call(
    runner: DockerRunner, handle: RunHandle, request: LaunchRequest
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each member of `Runner` that talks to the engine, and the capabilities' calls."""
    images, servers = runner.capabilities.images, runner.capabilities.servers
    assert images is not None and servers is not None
    return {
        "launch": lambda: runner.launch(request),
        "state": lambda: runner.state(handle),
        "signal_stop": lambda: runner.signal_stop(handle),
        "kill": lambda: runner.kill(handle),
        "logs_tail": lambda: runner.logs_tail(handle, 10),
        "list_managed": runner.list_managed,
        "remove": lambda: runner.remove(handle),
        "ping": lambda: runner.ping(2.0),
        "images.ready": lambda: images.ready(RUN_IMAGE),
        "servers.running": servers.running,
        "servers.logs": lambda: servers.logs(handle.ref),
        "servers.start": lambda: servers.start(
            request.run_id, RUN_IMAGE, ("true",), (), shm_size="64m", hf_cache=None
        ),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def all_unavailable(
    calls: dict[str, Callable[[], Awaitable[Any]]], url: str, why: str
) -> dict[str, float]:
    """Every call at once: each raises EngineUnavailable naming `url` and `why`, within
    BOUND_S."""
    outcomes = await asyncio.gather(*(timed(call) for call in calls.values()))
    took: dict[str, float] = {}
    for name, (elapsed, exc) in zip(calls, outcomes, strict=True):
        assert isinstance(exc, EngineUnavailable), f"{name}: {exc!r}"
        assert f"answers at {url} ({why}" in str(exc), f"{name}: {exc}"
        assert elapsed < BOUND_S, f"{name} took {elapsed:.1f} s"
        took[name] = elapsed
    return took


async def works_again(runner: DockerRunner, handle: RunHandle) -> None:
    assert (await runner.state(handle)).running
    assert handle in await runner.list_managed()
    await runner.ping(2.0)
    await runner.kill(handle)
    await ended(runner, handle)
    await runner.remove(handle)


@pytest.mark.parametrize("fault", ["cut", "black_hole"])
async def test_every_engine_call_fails_fast_and_works_again(
    behind: DockerRunner, proxy: EngineProxy, tmp_path: Path, fault: str
) -> None:
    running = await behind.launch(launch_request(behind, tmp_path / "runs", "sleep"))
    request = launch_request(behind, tmp_path / "runs", "sleep")

    await getattr(proxy, fault)()
    why = {"cut": "no socket there", "black_hole": "no answer within"}[fault]
    took = await all_unavailable(every_call(behind, running, request), proxy.url, why)
    assert max(took.values()) < BOUND_S

    await proxy.restore()
    managed = {h.run_id for h in await behind.list_managed()}
    assert managed == {running.run_id}  # the launch asked during the fault started nothing
    await works_again(behind, running)


async def test_a_runner_never_connected_fails_fast_on_a_black_hole(
    proxy: EngineProxy, tmp_path: Path
) -> None:
    await proxy.black_hole()
    runner = DockerRunner(proxy.url, image=RUN_IMAGE, instance=_instance())
    request = launch_request(runner, tmp_path / "runs", "sleep")
    elapsed, exc = await timed(lambda: runner.launch(request))
    assert isinstance(exc, EngineUnavailable) and proxy.url in str(exc), exc
    assert elapsed < BOUND_S
    assert runner.description == f"docker at {proxy.url} (not connected yet)"

    await proxy.restore()
    handle = await runner.launch(request)
    try:
        assert (await runner.state(handle)).running
    finally:
        await runner.kill(handle)
        await runner.aclose()
