"""Runs in hardened containers on a Docker engine (local socket, tcp://, or ssh://).

docker-py is blocking (requests), so every call goes through `asyncio.to_thread`. A run's
container is read-only except for its run dir (bind-mounted at `/workspace/run`) and a
tmpfs at /tmp; it runs as a non-root user with no capabilities, no new privileges, no
network unless the request asks for it, and memory/pids/CPU limits. Containers are kept
after they end (no auto-remove) so the exit code and OOM flag stay readable; `remove`
frees them.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
from docker.models.containers import Container
from docker.tls import TLSConfig
from docker.types import DeviceRequest, LogConfig

import assistant
from assistant.errors import ConfigError, RunStartError, StateError
from assistant.jobs.protocol import CONTROL, SPEC
from assistant.runs import rundir
from assistant.runs.runner import (
    ExitInfo,
    LaunchRequest,
    Mount,
    RunHandle,
    Runner,
    RunnerState,
)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_IMAGE = "assistant-run:latest"
RUN_MOUNT = "/workspace/run"
AGENT_ROOT = "/opt/assistant"  # where the run image keeps the agent, and where we mount it
AGENT_SOURCE = Path(assistant.__file__).resolve().parent  # the host's copy of the package
MANAGED_LABEL = "assistant.managed"
# Which assistant owns a container: two assistants on one engine must never reconcile
# (and stop) each other's runs.
INSTANCE_LABEL = "assistant.instance"
RUN_ID_LABEL = "assistant.run_id"
RECIPE_LABEL = "assistant.recipe"
# The uid (and gid) runs get when the orchestrator runs as root: no login account of the
# host (above login.defs' UID_MAX of 60000, below `nobody`); ASSISTANT_RUN_UID changes it.
DEFAULT_RUN_UID = 64000
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "build-images.sh"

_SCHEMES = ("unix", "tcp", "ssh")
_FORMS = "unix:///var/run/docker.sock, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]"


@dataclass(frozen=True)
class DockerHost:
    """A parsed DOCKER_HOST; `url` is the normalised form docker-py is given."""

    scheme: str  # unix | tcp | ssh
    host: str | None = None
    port: int | None = None
    user: str | None = None
    path: str | None = None  # unix socket path

    @property
    def url(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{user}{host}{port}"


def parse_docker_host(text: str) -> DockerHost:
    """Check a DOCKER_HOST value up front, so a typo fails at start and not at first launch.

    :raises ConfigError: naming the value and the accepted forms.
    """
    value = text.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"DOCKER_HOST {text!r} is not valid: {why}; use {_FORMS}")

    if "://" not in value:
        raise bad("it has no scheme")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise bad(f"scheme {parts.scheme!r} is not one of {', '.join(_SCHEMES)}")
    if parts.query or parts.fragment:
        raise bad("a query or fragment is not allowed")
    if scheme == "unix":
        path = parts.netloc + parts.path  # unix://run/docker.sock is read as a relative path
        if not path.startswith("/"):
            raise bad("the socket path must be absolute (unix:///path/to/docker.sock)")
        return DockerHost(scheme="unix", path=path)
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise bad("the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise bad("it names no host")
    if parts.password is not None:
        raise bad("a password is not allowed (use ssh keys or TLS certificates)")
    if parts.path not in ("", "/"):
        raise bad(f"a path ({parts.path!r}) is not allowed for {scheme}://")
    if scheme == "tcp":
        if parts.username is not None:
            raise bad("a user is not allowed for tcp://")
        if port is None:
            raise bad("tcp:// needs a port (2376 with TLS, 2375 without)")
    return DockerHost(scheme=scheme, host=parts.hostname, port=port, user=parts.username)


async def image_present(client: docker.DockerClient, name: str) -> bool:
    """Whether the engine has the image locally (no pull is ever tried: there is no registry)."""
    try:
        await asyncio.to_thread(client.images.get, name)
    except docker.errors.ImageNotFound:
        return False
    return True


LineCallback = Callable[[str], Awaitable[None] | None]


async def build_images(
    on_line: LineCallback,
    *,
    docker_host: str | None = None,
    image: str = DEFAULT_IMAGE,
    script: Path = BUILD_SCRIPT,
) -> None:
    """Run deploy/build-images.sh, passing each output line to `on_line` as it comes.

    The base and the wheelhouse are built once; later calls rebuild only what changed.

    :raises RunStartError: the script is missing or failed (with its last lines).
    """
    if not await asyncio.to_thread(script.is_file):
        raise RunStartError(f"{script} is missing: build images from a checkout of the project")
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
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        result = on_line(line)
        if inspect.isawaitable(result):
            await result
    code = await proc.wait()
    if code != 0:
        last = "\n".join(tail)
        raise RunStartError(f"building the run image failed (exit {code}):\n{last}")


class DockerRunner(Runner):
    """A `Runner` on a Docker engine; see the module docstring for what a container gets.

    :param base_url: DOCKER_HOST form; None: the local socket.
    :param image: the run image, used when a request names none and for the build hint.
    :param run_mount: where the run dir appears inside the container.
    :param gpu_count: GPUs the host sees (NVML), for `description`.
    :param tls_cert_dir: for tcp:// with TLS: a dir holding ca.pem, cert.pem and key.pem.
    """

    kind = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        run_mount: str = RUN_MOUNT,
        gpu_count: int = 0,
        tls_cert_dir: Path | None = None,
        use_ssh_client: bool = True,
        shm_size: str = "1g",
        tmp_size: str = "512m",
        timeout_s: float = 60,
        instance: str = "default",
        run_uid: int = DEFAULT_RUN_UID,
    ) -> None:
        self.host = parse_docker_host(base_url or DEFAULT_DOCKER_HOST)
        self.image = image
        self.instance = instance
        self.run_uid = run_uid
        self.run_mount = run_mount
        self.gpu_count = gpu_count
        self._tls_cert_dir = tls_cert_dir
        self._use_ssh_client = use_ssh_client
        self._shm_size = shm_size
        self._tmp_size = tmp_size
        self._timeout_s = timeout_s
        self._client: docker.DockerClient | None = None
        self._connect_lock = asyncio.Lock()
        self._engine_version: str | None = None
        self._gpu_runtime = False

    @property
    def base_url(self) -> str:
        return self.host.url

    @property
    def description(self) -> str:
        if self._engine_version is None:
            return f"docker at {self.base_url} (not connected yet)"
        gpus = (
            f"{self.gpu_count} GPUs via nvidia runtime" if self._gpu_runtime else "no GPU runtime"
        )
        return f"docker at {self.base_url} (engine {self._engine_version}, {gpus})"

    async def connect(self) -> docker.DockerClient:
        """The client, made on first use: making one already talks to the engine.

        :raises RunStartError: no engine answers at the address.
        """
        async with self._connect_lock:
            if self._client is None:
                self._client = await self._call(self._make_client)
        return self._client

    def _make_client(self) -> docker.DockerClient:
        if self.host.path is not None:
            _probe_socket(self.host.path)
        tls: TLSConfig | bool = False
        if self._tls_cert_dir is not None:
            d = self._tls_cert_dir
            tls = TLSConfig(
                client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                ca_cert=str(d / "ca.pem"),
                verify=True,
            )
        client = docker.DockerClient(
            base_url=self.base_url,
            tls=tls,
            timeout=int(self._timeout_s),
            use_ssh_client=self._use_ssh_client and self.host.scheme == "ssh",
        )
        try:
            version = client.version()
            info = client.info()
        except BaseException:
            client.close()
            raise
        self._engine_version = str(version.get("Version", "?"))
        self._gpu_runtime = "nvidia" in (info.get("Runtimes") or {})
        return client

    def view(self, mount: Mount) -> str:
        return mount.target

    def run_dir_view(self, run_dir: Path) -> str:
        return self.run_mount

    async def image_ready(self, image: str) -> bool:
        return await image_present(await self.connect(), image)

    async def build_image(self, image: str, on_line: Callable[[str], Awaitable[None]]) -> None:
        """deploy/build-images.sh against this engine (no registry needed)."""
        await build_images(on_line, docker_host=self.base_url, image=image)

    async def launch(self, request: LaunchRequest) -> RunHandle:
        client = await self.connect()
        image = request.image or self.image
        user = await asyncio.to_thread(self._prepare_run_dir, request.run_dir)
        kwargs = self._container_kwargs(request, user)
        try:
            container = await self._call(lambda: client.containers.create(image, **kwargs), image)
            try:
                await self._call(container.start, image)
            except BaseException:
                await asyncio.to_thread(_remove_quietly, container)
                raise
        except docker.errors.NotFound as exc:  # not the image: that one is mapped by _call
            raise RunStartError(self._explain(exc)) from exc
        return RunHandle(runner="docker", ref=str(container.id), run_id=request.run_id)

    def _prepare_run_dir(self, run_dir: Path) -> str:
        """The uid:gid the run gets; as root, let it write its run dir but not our files.

        The run dir stays root's (sticky, group-writable for the run's gid): spec.json and
        control.json cannot be written, renamed or removed by the run; what the host made
        for it to write (checkpoints/, artifacts/, secrets) is the run uid's. A remote
        engine mounts its own host's path: there the run dir must already be writable by
        the run uid.

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

    def _container_kwargs(self, request: LaunchRequest, user: str) -> dict[str, Any]:
        """Everything `containers.create` gets besides the image; see the module docstring."""
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
            "volumes": {str(request.run_dir): {"bind": self.run_mount, "mode": "rw"}},
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
        volumes = kwargs["volumes"]
        for mount in request.mounts:
            volumes[str(mount.source)] = {
                "bind": mount.target,
                "mode": "ro" if mount.read_only else "rw",
            }
        if request.bring_agent:
            # An image we did not build: our agent (standard library only) comes in
            # read-only and runs on the image's own python3.
            volumes[str(AGENT_SOURCE)] = {"bind": f"{AGENT_ROOT}/assistant", "mode": "ro"}
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
        client = await self.connect()
        try:
            attrs = await self._call(lambda: client.api.inspect_container(handle.ref))
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
        await self._signal(handle, "SIGTERM")

    async def kill(self, handle: RunHandle) -> None:
        await self._signal(handle, "SIGKILL")

    async def _signal(self, handle: RunHandle, signal: str) -> None:
        client = await self.connect()
        await self._call(lambda: _kill_if_running(client, handle.ref, signal))

    async def find_active(self) -> list[RunHandle]:
        client = await self.connect()
        containers: list[Container] = await self._call(
            lambda: client.containers.list(
                filters={"label": [f"{MANAGED_LABEL}=true", f"{INSTANCE_LABEL}={self.instance}"]}
            )
        )
        return [
            RunHandle(runner="docker", ref=str(c.id), run_id=c.labels.get(RUN_ID_LABEL, ""))
            for c in containers
        ]

    async def remove(self, handle: RunHandle) -> None:
        """Remove the ended container.

        :raises StateError: it is still running (stop it first).
        """
        client = await self.connect()
        if not await self._call(lambda: _remove_if_ended(client, handle.ref)):
            raise StateError(f"run {handle.run_id} is still running; stop it first")

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    async def ping(self, timeout_s: float = 2.0) -> None:
        """Does the engine answer `GET /_ping` within `timeout_s`? For /healthz.

        Bounded twice: the request's own socket timeout, and the wait for its thread (a
        black-holed engine that accepts and never answers costs `timeout_s`, no more).
        Never connects a runner that is not connected.

        :raises RunStartError: no answer, or not an OK one; the message names the address.
        """
        client = self._client
        if client is None:
            raise RunStartError(f"not connected to the engine at {self.base_url}")
        api = client.api

        def call() -> None:
            if self.host.path is not None:  # docker-py would leak the socket of a refusal
                _probe_socket(self.host.path, timeout_s)
            api.get(f"{api.base_url}/_ping", timeout=timeout_s).raise_for_status()

        try:
            async with asyncio.timeout(timeout_s + 0.5):
                await asyncio.to_thread(call)
        except TimeoutError:
            raise RunStartError(f"{self.base_url}: no answer within {timeout_s:g} s") from None
        except Exception as exc:
            raise RunStartError(f"{self.base_url}: {_first_line(exc)}") from None

    async def engine_call(self, fn: Callable[[], Any], image: str | None = None) -> Any:
        """A blocking docker-py call for a neighbour (the serving containers), mapped alike.

        :raises RunStartError: as for a run's own calls.
        """
        return await self._call(fn, image)

    async def _call(self, fn: Callable[[], Any], image: str | None = None) -> Any:
        """Run a blocking docker-py call in a thread; map its failures to RunStartError.

        NotFound for a container passes through (callers read it as "gone").
        """
        try:
            return await asyncio.to_thread(fn)
        except docker.errors.ImageNotFound as exc:
            name = image or self.image
            raise RunStartError(f"image {name} is missing; run `assistant images build`") from exc
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as exc:
            raise RunStartError(self._explain(exc)) from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise RunStartError(
                f"no Docker engine answers at {self.base_url} ({_first_line(exc)}); "
                "start one with `scripts/docker-engine up`, or set DOCKER_HOST"
            ) from exc

    def _explain(self, exc: docker.errors.APIError) -> str:
        text = str(exc.explanation or exc)
        if "could not select device driver" in text:
            return (
                f"the Docker engine at {self.base_url} has no GPU runtime: install the NVIDIA "
                "Container Toolkit there (nvidia-ctk runtime configure --runtime=docker, then "
                f"restart dockerd), or launch without GPUs ({text})"
            )
        return f"the Docker engine at {self.base_url} refused: {text}"


def _probe_socket(path: str, timeout_s: float = 5) -> None:
    """Connect once ourselves: docker-py leaks the socket of a failed connect.

    :raises OSError: nothing listens there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)


def _kill_if_running(client: docker.DockerClient, ref: str, signal: str) -> None:
    try:
        client.api.kill(ref, signal=signal)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: it exists but has already ended
            raise


def _remove_if_ended(client: docker.DockerClient, ref: str) -> bool:
    """False while the container still runs; a container already gone counts as removed."""
    try:
        client.api.remove_container(ref)
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


def _remove_quietly(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.DockerException:
        return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
