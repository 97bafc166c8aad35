"""Runs in hardened containers on a Docker engine (local socket, tcp://, or ssh://).

A run's container is read-only except for its run dir (bind-mounted at `/workspace/run`)
and a tmpfs at /tmp; it runs as a non-root user with no capabilities, no new privileges,
no network unless the request asks for it, and memory/pids/CPU limits. Containers are
kept after they end (no auto-remove) so the exit code and OOM flag stay readable;
`remove` frees them. Every engine call goes through `DockerEngine` (docker_engine.py):
bounded, and `EngineUnavailable` when the engine does not answer. On an ssh:// engine
(another host) the run dir is a folder of a volume there instead of a bind mount, kept
mirrored into the local run dir (remote_dir.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig

import assistant
from assistant.errors import EngineUnavailable, RunStartError, StateError
from assistant.jobs.protocol import CONTROL, SPEC
from assistant.jobs.rendezvous import LOOPBACK
from assistant.jobs.text import decoded
from assistant.runs import engine_paths, rundir
from assistant.runs.docker_engine import (
    CALL_TIMEOUT_S,
    DEFAULT_DOCKER_HOST,
    INSTANCE_LABEL,
    DockerEngine,
    DockerHost,
    parse_docker_host,
)
from assistant.runs.engine_paths import EnginePaths
from assistant.runs.remote_dir import RemoteRunDirs
from assistant.runs.runner import (
    Capabilities,
    ContainerPaths,
    ExitInfo,
    LaunchRequest,
    RunHandle,
    RunnerKind,
    RunnerState,
)
from assistant.runs.serving import Servers

__all__ = [  # what callers used to import from here, besides what this module defines
    "DEFAULT_DOCKER_HOST",
    "INSTANCE_LABEL",
    "DockerHost",
    "parse_docker_host",
]

DEFAULT_IMAGE = "assistant-run:latest"
RUN_MOUNT = "/workspace/run"
AGENT_ROOT = "/opt/assistant"  # where the run image keeps the agent, and where we mount it
AGENT_SOURCE = Path(assistant.__file__).resolve().parent  # the host's copy of the package
MANAGED_LABEL = "assistant.managed"
RUN_ID_LABEL = "assistant.run_id"
RECIPE_LABEL = "assistant.recipe"
# The uid (and gid) runs get when the orchestrator runs as root: no login account of the
# host (above login.defs' UID_MAX of 60000, below `nobody`); ASSISTANT_RUN_UID changes it.
DEFAULT_RUN_UID = 64000
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "build-images.sh"
# A build runs in the background (never on a command's path); this bounds a hung one.
BUILD_TIMEOUT_S = 3600.0

LineCallback = Callable[[str], Awaitable[None] | None]


async def build_images(
    on_line: LineCallback,
    *,
    docker_host: str | None = None,
    image: str = DEFAULT_IMAGE,
    script: Path = BUILD_SCRIPT,
    timeout_s: float = BUILD_TIMEOUT_S,
) -> None:
    """Run deploy/build-images.sh, passing each output line to `on_line` as it comes.

    The base and the wheelhouse are built once; later calls rebuild only what changed.

    :raises RunStartError: the script is missing, failed or ran past `timeout_s` (with its
        last lines).
    """
    if not await asyncio.to_thread(script.is_file):
        raise RunStartError(
            f"no image build here ({script} is missing: this service runs from an installed"
            " package, e.g. in its container): build the run image on the engine's host with"
            " deploy/build-images.sh from a checkout of the project; runs start once it is there"
        )
    env = {**os.environ, "ASSISTANT_RUN_IMAGE": image}
    if docker_host:
        env["DOCKER_HOST"] = parse_docker_host(docker_host).url
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        cwd=script.parents[1],
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=15)
    try:
        async with asyncio.timeout(timeout_s):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                result = on_line(line)
                if inspect.isawaitable(result):
                    await result
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RunStartError(
            f"building the run image took over {timeout_s:g} s and was stopped; last lines:\n"
            + "\n".join(tail)
        ) from None
    if code != 0:
        last = "\n".join(tail)
        raise RunStartError(f"building the run image failed (exit {code}):\n{last}")


class DockerImages:
    """The `ImageStore` of an engine: images are looked up there, built with the script."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    async def ready(self, image: str) -> bool:
        """Whether the engine has the image (no pull is ever tried: there is no registry)."""
        return await self.engine.has_image(image)

    async def build(self, image: str, on_line: Callable[[str], Awaitable[None]]) -> None:
        """deploy/build-images.sh against this engine (no registry needed)."""
        await build_images(on_line, docker_host=self.engine.url, image=image)


class DockerRunner:
    """A `Runner` on a Docker engine; see the module docstring for what a container gets.

    :param base_url: DOCKER_HOST form; None: the local socket.
    :param image: the run image, used when a request names none and for the build hint.
    :param run_mount: where the run dir appears inside the container.
    :param gpu_count: GPUs the host sees (NVML), for `description`.
    :param tls_cert_dir: for tcp:// with TLS: a dir holding ca.pem, cert.pem and key.pem.
    :param timeout_s: the socket timeout of one engine call (the call's bound is 1 s more).
    :param home: ASSISTANT_HOME, where the path check's marker and the agent's copy go.
    :param host_home: ASSISTANT_HOST_HOME: where `home` lies on the engine's host; None:
        read from the service's own container's mounts (engine_paths.py), if it is one.
    """

    kind: RunnerKind = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        run_mount: str = RUN_MOUNT,
        gpu_count: int = 0,
        tls_cert_dir: Path | None = None,
        use_ssh_client: bool = False,
        shm_size: str = "1g",
        tmp_size: str = "512m",
        timeout_s: float = CALL_TIMEOUT_S,
        instance: str = "default",
        run_uid: int = DEFAULT_RUN_UID,
        home: Path | None = None,
        host_home: Path | None = None,
    ) -> None:
        self.engine = DockerEngine(
            base_url or DEFAULT_DOCKER_HOST,
            tls_cert_dir=tls_cert_dir,
            use_ssh_client=use_ssh_client,
            call_timeout_s=timeout_s,
            instance=instance,
        )
        self.host = self.engine.host
        self.image = image
        self.instance = instance
        self.run_uid = run_uid
        self.run_mount = run_mount
        self.gpu_count = gpu_count
        self._shm_size = shm_size
        self._tmp_size = tmp_size
        self.home = home
        self.host_home = host_home
        self._paths: EnginePaths | None = None
        self._paths_lock = asyncio.Lock()
        self._paths_checked = False
        # an ssh:// engine runs on another host: its runs write into a volume there, which
        # the runner mirrors into the local run dir (remote_dir.py)
        self.remote = (
            RemoteRunDirs(self.engine, run_mount, run_uid) if self.host.scheme == "ssh" else None
        )
        self.capabilities = Capabilities(
            paths=ContainerPaths(run_mount),
            images=DockerImages(self.engine),
            servers=Servers(self.engine, self.paths),
            network_isolation=True,
            resource_limits=True,
            run_dir_shared=self.remote is None,
        )

    @property
    def base_url(self) -> str:
        return self.engine.url

    @property
    def description(self) -> str:
        version = self.engine.version
        if version is None:
            return f"docker at {self.base_url} ({self.engine.lost or 'not connected yet'})"
        gpus = (
            f"{self.gpu_count} GPUs via nvidia runtime"
            if self.engine.gpu_runtime
            else "no GPU runtime"
        )
        return f"docker at {self.base_url} (engine {version}, {gpus})"

    async def connect(self) -> docker.DockerClient:
        """The engine's client, made on first use: making one already talks to the engine;
        and the engine's view of ASSISTANT_HOME, checked (engine_paths.py).

        :raises EngineUnavailable: no engine answers at the address.
        :raises ConfigError: the engine would mount ASSISTANT_HOME from somewhere else.
        """
        client = await self.engine.connect()
        paths = await self.paths()
        # a remote engine mounts no folder of this host (remote_dir.py): nothing to prove
        if self.home is not None and not self._paths_checked and self.remote is None:
            user = "0:0" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
            await engine_paths.check(self.engine, paths, self.home, self.image, user)
            self._paths_checked = True
        return client

    async def paths(self) -> EnginePaths:
        """The engine's view of the service's paths, found once (see engine_paths.py)."""
        async with self._paths_lock:
            if self._paths is None:
                paths = await engine_paths.discover(self.engine, self.home, self.host_home)
                if self.home is not None and not paths.identity:
                    # Every service in a container calls its home /data: the instance is
                    # named for where that lies on the engine's host, so two deployments
                    # on one engine never reconcile each other's runs away. (A home on no
                    # mount keeps its name: the check at connect refuses it.)
                    with contextlib.suppress(RunStartError):
                        where = paths.to_host(self.home).encode()
                        instance = hashlib.sha256(where).hexdigest()[:12]
                        self.instance = self.engine.instance = instance
                self._paths = paths
            return self._paths

    async def _agent_source(self, paths: EnginePaths) -> str:
        """The agent package's path on the engine's host; a copy in ASSISTANT_HOME when
        the service's own (in its site-packages) is not on a mounted folder."""
        try:
            return paths.to_host(AGENT_SOURCE)
        except RunStartError:
            if self.home is None:
                raise
        copy = await asyncio.to_thread(engine_paths.agent_copy, AGENT_SOURCE, self.home)
        return paths.to_host(copy)

    async def launch(self, request: LaunchRequest) -> RunHandle:
        await self.engine.connect()
        image = request.image or self.image
        user = await asyncio.to_thread(self._prepare_run_dir, request.run_dir)
        paths = await self.paths()
        agent = await self._agent_source(paths) if request.bring_agent else ""
        kwargs = self._container_kwargs(request, user, paths, agent)
        if self.remote is not None:
            await self.remote.prepare(request, kwargs)
        try:
            container: Container = await self.engine.call(
                lambda client: client.containers.create(image, **kwargs), image=image
            )
            try:
                if self.remote is not None:
                    await self.remote.push(str(container.id), request.run_dir)
                await self.engine.start(str(container.id), image=image)
            except BaseException:
                # an answer lost on the way may still have started it: never leave it
                await self._remove_quietly(str(container.id))
                raise
        except docker.errors.NotFound as exc:  # not the image: that one is mapped
            raise RunStartError(self.engine.explain(exc)) from exc
        return RunHandle(runner="docker", ref=str(container.id), run_id=request.run_id)

    async def _remove_quietly(self, ref: str) -> None:
        try:
            await self.engine.call(lambda client: _remove_container(client, ref, force=True))
        except (RunStartError, EngineUnavailable):
            return  # reconcile removes a container of ours left behind

    def _prepare_run_dir(self, run_dir: Path) -> str:
        """The uid:gid the run gets; as root, let it write its run dir but not our files.

        The run dir stays root's (sticky, group-writable for the run's gid): spec.json and
        control.json cannot be written, renamed or removed by the run; what the host made
        for it to write (checkpoints/, artifacts/, secrets) is the run uid's. A tcp://
        engine mounts its own host's path: there the run dir must already be writable by
        the run uid; an ssh:// engine's run dir is a volume owned the same way
        (remote_dir.py).

        :raises RunStartError: a local engine and no such dir.
        """
        user = f"{self.run_uid}:{self.run_uid}"
        if self.host.scheme != "unix":
            return user
        if not run_dir.is_dir() or run_dir.is_symlink():
            raise RunStartError(f"run dir {run_dir} does not exist; the host writes it first")
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        try:
            rundir.hand_over(run_dir, self.run_uid, self.run_uid, keep=(SPEC, CONTROL))
        except OSError as exc:
            raise RunStartError(f"could not prepare run dir {run_dir}: {exc}") from None
        return user

    def _container_kwargs(
        self, request: LaunchRequest, user: str, paths: EnginePaths, agent: str
    ) -> dict[str, Any]:
        """Everything `containers.create` gets besides the image; see the module docstring.

        Every bind mount's source is the engine's host's path (`paths`; `agent`: the agent
        package's there), which differs from ours when the service runs in a container.
        """
        env = {"PYTHONUNBUFFERED": "1"}
        if request.cpus:
            env["OMP_NUM_THREADS"] = str(max(1, int(request.cpus // max(1, request.nproc))))
        kwargs: dict[str, Any] = {
            "name": _container_name(request.run_id),
            "labels": {
                **request.labels,
                RUN_ID_LABEL: request.run_id,
                RECIPE_LABEL: request.recipe,
                MANAGED_LABEL: "true",
                INSTANCE_LABEL: self.instance,
            },
            "environment": env,
            "user": user,
            "volumes": {paths.to_host(request.run_dir): {"bind": self.run_mount, "mode": "rw"}},
            "read_only": True,
            # exec: torch.compile / triton build and load kernels under /tmp.
            "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={self._tmp_size}"},
            "security_opt": ["no-new-privileges:true"],
            "cap_drop": ["ALL"],
            "pids_limit": request.pids_limit,
            "network_mode": "host" if request.network else "none",
            "shm_size": self._shm_size,  # DataLoader workers and NCCL share memory here
            "init": True,  # tini as pid 1: forwards SIGTERM, reaps DataLoader workers
            "log_config": LogConfig(
                type=LogConfig.types.JSON, config={"max-size": "20m", "max-file": "2"}
            ),
        }
        if not request.network:
            # No network, so no name service: the container's own host name resolves to
            # nothing, and whatever looks itself up (a declared recipe's `torchrun
            # --standalone`, gloo's default device) waits for minutes on an address nobody
            # can reach. Loopback is the one interface it has: its name means 127.0.0.1, as
            # /etc/hosts says on any host. (The agent's torchrun names 127.0.0.1 outright.)
            hostname = re.sub(r"[^a-zA-Z0-9-]", "-", kwargs["name"])
            kwargs.update(hostname=hostname, extra_hosts={hostname: LOOPBACK})
        volumes = kwargs["volumes"]
        for mount in request.mounts:
            volumes[paths.to_host(mount.source)] = {
                "bind": mount.target,
                "mode": "ro" if mount.read_only else "rw",
            }
        if request.bring_agent:
            # An image we did not build: our agent (standard library only) comes in
            # read-only and runs on the image's own python3.
            volumes[agent] = {"bind": f"{AGENT_ROOT}/assistant", "mode": "ro"}
            env.update(PYTHONPATH=AGENT_ROOT, HOME="/tmp", PYTHONDONTWRITEBYTECODE="1")
            kwargs["command"] = ["python3", "-m", "assistant.jobs.agent", self.run_mount]
            kwargs["working_dir"] = self.run_mount
        if request.memory_mb is not None:
            # Equal limits: past it the kernel OOM-kills instead of swapping.
            kwargs["mem_limit"] = kwargs["memswap_limit"] = f"{request.memory_mb}m"
        if request.cpus:
            kwargs["nano_cpus"] = int(request.cpus * 1_000_000_000)
        if request.gpus:
            kwargs["device_requests"] = [
                DeviceRequest(device_ids=[str(i) for i in request.gpus], capabilities=[["gpu"]])
            ]
        return kwargs

    async def state(self, handle: RunHandle) -> RunnerState:
        try:
            attrs = await self.engine.call(lambda client: client.api.inspect_container(handle.ref))
        except docker.errors.NotFound:
            return RunnerState(running=False, gone=True)
        if self.remote is not None:  # the local run dir mirrors the container's first
            try:
                await self.remote.pull(handle.ref, attrs)
            except docker.errors.NotFound:
                return RunnerState(running=False, gone=True)
        st = attrs.get("State") or {}
        if st.get("Running"):
            return RunnerState(running=True)
        exit_info = ExitInfo(
            exit_code=st.get("ExitCode"),
            oom_killed=bool(st.get("OOMKilled")),
            error=st.get("Error") or None,
        )
        return RunnerState(running=False, exit=exit_info)

    async def signal_stop(self, handle: RunHandle) -> None:
        if self.remote is not None:  # the control.json the agent reads on SIGTERM
            try:
                await self.remote.push_control(handle.ref)
            except docker.errors.NotFound:
                return
        await self.engine.call(lambda client: _kill_if_running(client, handle.ref, "SIGTERM"))

    async def kill(self, handle: RunHandle) -> None:
        await self.engine.call(lambda client: _kill_if_running(client, handle.ref, "SIGKILL"))

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        """The container's last output lines (the agent's own); "" once it is removed."""

        def read(client: docker.DockerClient) -> str:
            try:
                data = client.api.logs(handle.ref, stdout=True, stderr=True, tail=max(1, lines))
            except docker.errors.NotFound:
                return ""
            return "\n".join(decoded(bytes(data)).splitlines()[-max(1, lines) :])

        return await self.engine.call(read)

    async def list_managed(self) -> list[RunHandle]:
        labels = [f"{MANAGED_LABEL}=true", f"{INSTANCE_LABEL}={self.instance}"]
        containers: list[Container] = await self.engine.call(
            lambda client: client.containers.list(filters={"label": labels})
        )
        return [
            RunHandle(runner="docker", ref=str(c.id), run_id=c.labels.get(RUN_ID_LABEL, ""))
            for c in containers
        ]

    async def remove(self, handle: RunHandle) -> None:
        """Remove the ended container.

        :raises StateError: it is still running (stop it first).
        """
        if not await self.engine.call(lambda client: _remove_container(client, handle.ref)):
            raise StateError(f"run {handle.run_id} is still running; stop it first")

    async def ping(self, timeout_s: float = 2.0) -> None:
        """Does the engine answer `GET /_ping` within `timeout_s`? For /healthz and /status.

        Bounded twice: the request's own socket timeout, and the wait for its thread (a
        black-holed engine that accepts and never answers costs `timeout_s`, no more).
        Never connects a runner that is not connected.

        :raises EngineUnavailable: no answer, or not an OK one; the message names the address.
        """
        await self.engine.ping(timeout_s)

    async def aclose(self) -> None:
        await self.engine.aclose()


def _kill_if_running(client: docker.DockerClient, ref: str, signal: str) -> None:
    try:
        client.api.kill(ref, signal=signal)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: it exists but has already ended
            raise


def _remove_container(client: docker.DockerClient, ref: str, *, force: bool = False) -> bool:
    """False while the container still runs; a container already gone counts as removed."""
    try:
        client.api.remove_container(ref, force=force)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            return False
        raise
    return True


def _container_name(run_id: str) -> str:
    """A readable, unique name: a resumed run gets a new container beside the old one."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id).strip("-.") or "run"
    return f"assistant-{safe[:40]}-{secrets.token_hex(3)}"
