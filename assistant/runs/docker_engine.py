"""One Docker engine (local socket, tcp:// or ssh://), and every call to it bounded.

docker-py is blocking (requests), so each call runs in a thread of the engine's own pool
(a hung engine never holds the threads the rest of the service uses), under two bounds:
the request's own socket timeout (`call_timeout_s`, 4 s) and the wait for its thread (1 s
more); a call still queued when its caller gave up is never made. An engine that does not
answer (socket gone, refused, reset, or black-holed: it accepts and never answers) raises
`EngineUnavailable` naming its address and why in a few words within those ~5 s, never
docker-py's default 60; an engine that answered "no" raises `RunStartError` with its
reason. Raw requests/docker/OS exceptions never leave this module.

The one slower call is a container's start, which runs the GPU runtime's hook: it gets
`START_TIMEOUT_S`, and only after a create the engine answered within the ordinary bound.
Image builds are not engine calls here: they run deploy/build-images.sh in the background
(docker_runner.build_images), never on a command's path.

An ssh:// engine is reached with paramiko (docker-py's ssh transport; `docker system
dial-stdio` runs on the far side): its socket timeouts bound every call like a local
socket's, and it reads the usual client files, ~/.ssh/config (User, Port, IdentityFile,
ProxyCommand) and ~/.ssh/known_hosts (an unknown host key is refused, never accepted). An
ssh failure (refused, host key unknown, key refused, session gone) is `EngineUnavailable`
naming what to check, and the clients are dropped so the next call connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import paramiko
import requests
from docker.tls import TLSConfig

from assistant.errors import ConfigError, EngineUnavailable, RunStartError
from assistant.runs.runner import ENGINE_CALL_S

T = TypeVar("T")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Which assistant owns a container: two assistants on one engine must never reconcile
# (and stop) each other's runs or servers.
INSTANCE_LABEL = "assistant.instance"
CALL_TIMEOUT_S = ENGINE_CALL_S - 1  # the socket's; the thread's wait adds 1 s
START_TIMEOUT_S = 30.0
ENGINE_THREADS = 8  # calls in flight to one engine; more wait (within their bound)

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


@dataclass
class _Clients:
    quick: docker.DockerClient  # every call but a start: CALL_TIMEOUT_S
    start: docker.DockerClient  # container starts: START_TIMEOUT_S
    version: str
    gpu_runtime: bool

    def close(self) -> None:
        self.quick.close()
        self.start.close()


class DockerEngine:
    """The connection to one engine, made on first use, and its bounded calls.

    :param base_url: DOCKER_HOST form.
    :param tls_cert_dir: for tcp:// with TLS: a dir holding ca.pem, cert.pem and key.pem.
    :param instance: this assistant's name on the engine (the `INSTANCE_LABEL` value).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_DOCKER_HOST,
        *,
        tls_cert_dir: Path | None = None,
        use_ssh_client: bool = False,
        call_timeout_s: float = CALL_TIMEOUT_S,
        instance: str = "default",
    ) -> None:
        self.host = parse_docker_host(base_url)
        self.instance = instance
        self.call_timeout_s = call_timeout_s
        self._tls_cert_dir = tls_cert_dir
        self._use_ssh_client = use_ssh_client
        self._clients: _Clients | None = None
        self._lost: str | None = None  # why the ssh session was dropped, until a reconnect
        self._connect_lock = asyncio.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def bound_s(self) -> float:
        """What one call may cost at most before it raises `EngineUnavailable`."""
        return self.call_timeout_s + 1

    @property
    def version(self) -> str | None:
        """The engine's version once connected; None before."""
        return self._clients.version if self._clients is not None else None

    @property
    def lost(self) -> str | None:
        """Why the ssh session was dropped ("connection lost: ..."), until a reconnect."""
        return self._lost

    @property
    def gpu_runtime(self) -> bool:
        return self._clients is not None and self._clients.gpu_runtime

    async def connect(self) -> docker.DockerClient:
        """The client, made on first use (making one already talks to the engine).

        :raises EngineUnavailable: no engine answers at the address within the bound.
        :raises RunStartError: it answered, with an error.
        """
        return (await self._connect()).quick

    async def _connect(self) -> _Clients:
        if self._clients is not None:
            return self._clients
        try:
            async with asyncio.timeout(self.bound_s):
                async with self._connect_lock:
                    if self._clients is None:
                        self._clients = await self._in_thread(self._make_clients)
                        self._lost = None
        except TimeoutError:
            raise self._unavailable(f"no answer within {self.bound_s:g} s") from None
        return self._clients

    def _make_clients(self) -> _Clients:
        if self.host.path is not None:
            _probe_socket(self.host.path, self.call_timeout_s)
        tls: TLSConfig | bool = False
        if self._tls_cert_dir is not None:
            d = self._tls_cert_dir
            tls = TLSConfig(
                client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                ca_cert=str(d / "ca.pem"),
                verify=True,
            )
        ssh = self._use_ssh_client and self.host.scheme == "ssh"
        quick = docker.DockerClient(
            base_url=self.url, tls=tls, timeout=self.call_timeout_s, use_ssh_client=ssh
        )
        try:
            version = quick.version()
            info = quick.info()
            start = docker.DockerClient(
                base_url=self.url,
                tls=tls,
                timeout=START_TIMEOUT_S,
                use_ssh_client=ssh,
                version=quick.api.api_version,  # known: no second version request
            )
        except BaseException:
            quick.close()
            raise
        return _Clients(
            quick=quick,
            start=start,
            version=str(version.get("Version", "?")),
            gpu_runtime="nvidia" in (info.get("Runtimes") or {}),
        )

    async def call(self, fn: Callable[[docker.DockerClient], T], *, image: str | None = None) -> T:
        """`fn(client)` in a thread, bounded; its failures mapped (see the module docstring).

        NotFound for a container passes through: callers read it as "gone".

        :raises EngineUnavailable: the engine did not answer within `bound_s`.
        :raises RunStartError: it answered no (`image` names a missing image).
        """
        client = await self.connect()
        return await self._bounded(lambda: fn(client), self.bound_s, image)

    async def has_image(self, name: str) -> bool:
        """Whether the engine holds image `name` (bounded like every call)."""
        return await self.call(lambda client: _has_image(client, name))

    async def start(self, container_id: str, *, image: str | None = None) -> None:
        """Start a created container: the one call bounded by `START_TIMEOUT_S`."""
        clients = await self._connect()
        await self._bounded(
            lambda: clients.start.api.start(container_id), START_TIMEOUT_S + 1, image
        )

    async def ping(self, timeout_s: float) -> None:
        """Does the engine answer `GET /_ping` within `timeout_s`? Never connects.

        :raises EngineUnavailable: no answer, or not an OK one; the message names the address.
        """
        clients = self._clients
        if clients is None:
            raise self._unavailable(self._lost or "not connected yet")
        api = clients.quick.api

        def call() -> None:
            api.get(f"{api.base_url}/_ping", timeout=timeout_s).raise_for_status()

        try:
            await self._bounded(call, timeout_s + 0.5, None, probe_s=timeout_s)
        except RunStartError as exc:  # it answered, but not OK
            raise self._unavailable(str(exc)) from None

    async def aclose(self) -> None:
        """Close the clients and let the threads go; a later call starts afresh."""
        if self._clients is not None:
            clients, self._clients = self._clients, None
            await asyncio.to_thread(clients.close)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False)  # a call still in flight ends by its own timeout

    async def _bounded(
        self,
        fn: Callable[[], T],
        bound_s: float,
        image: str | None,
        *,
        probe_s: float | None = None,
    ) -> T:
        def guarded() -> T:
            if self.host.path is not None:  # docker-py would leak the socket of a refusal
                _probe_socket(self.host.path, probe_s or self.call_timeout_s)
            return fn()

        try:
            async with asyncio.timeout(bound_s):
                return await self._in_thread(guarded, image)
        except TimeoutError:
            raise self._unavailable(f"no answer within {bound_s:g} s") from None

    async def _in_thread(self, fn: Callable[[], T], image: str | None = None) -> T:
        """Run `fn` in one of the engine's threads; a late result is closed.

        The engine's own pool: calls stuck on an engine that does not answer never hold
        the threads the rest of the service runs blocking work in.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(ENGINE_THREADS, thread_name_prefix="docker-engine")
        given_up = threading.Event()

        def unless_given_up() -> T:
            # A call still waiting for a thread when its caller gave up is never made: the
            # caller was told the engine did not answer, and a kill must not land later.
            if given_up.is_set():
                raise _GivenUp
            return fn()

        task = asyncio.get_running_loop().run_in_executor(self._pool, unless_given_up)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            given_up.set()
            task.add_done_callback(_discard)
            raise
        except docker.errors.ImageNotFound as exc:
            name = image or "the image"
            raise RunStartError(f"image {name} is missing; run `assistant images build`") from exc
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as exc:
            raise RunStartError(self.explain(exc)) from exc
        except (
            docker.errors.DockerException,
            requests.RequestException,
            OSError,
            paramiko.SSHException,
        ) as exc:
            why = _reason(exc)
            if self.host.scheme == "ssh":
                self._drop_clients(why)  # a dead ssh session is never reused: reconnect
            raise self._unavailable(why) from exc

    def _drop_clients(self, why: str) -> None:
        """Forget the clients; the next call (not a ping) connects again."""
        if self._clients is not None:
            self._lost = f"connection lost: {why}"
        clients, self._clients = self._clients, None
        if clients is not None:
            with contextlib.suppress(Exception):
                clients.close()

    def _unavailable(self, why: str) -> EngineUnavailable:
        if self.host.scheme == "ssh":
            return EngineUnavailable(
                f"no Docker engine answers at {self.url} ({why}); check that sshd answers"
                f" there, that ~/.ssh/known_hosts has its host key (ssh {self.host.host} once"
                " adds it) and ~/.ssh/config its IdentityFile, and that `docker info` works"
                " in an ssh session there"
            )
        return EngineUnavailable(
            f"no Docker engine answers at {self.url} ({why}); start one with "
            "`scripts/docker-engine up`, or set DOCKER_HOST"
        )

    def explain(self, exc: docker.errors.APIError) -> str:
        """What the engine said, with the fix where we know it."""
        text = str(exc.explanation or exc)
        if "could not select device driver" in text:
            return (
                f"the Docker engine at {self.url} has no GPU runtime: install the NVIDIA "
                "Container Toolkit there (nvidia-ctk runtime configure --runtime=docker, then "
                f"restart dockerd), or launch without GPUs ({text})"
            )
        return f"the Docker engine at {self.url} refused: {text}"


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


class _GivenUp(Exception):
    """A queued call whose caller stopped waiting: not made."""


def _discard(task: asyncio.Future[Any]) -> None:
    """A late result nobody waits for: close what it opened, swallow what it raised."""
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, _Clients):
        result.close()


def _probe_socket(path: str, timeout_s: float) -> None:
    """Connect once ourselves: docker-py leaks the socket of a failed connect.

    :raises OSError: nothing listens there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)


def _reason(exc: BaseException) -> str:
    """Why the engine did not answer, in a few words (docker-py nests the cause deep)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    lowered = text.lower()
    if any(isinstance(e, TimeoutError | requests.Timeout) for e in chain) or "timed out" in lowered:
        found = re.search(r"timeout=([\d.]+)", text)
        return f"no answer within {float(found.group(1)):g} s" if found else "no answer in time"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in lowered:
        return "connection refused"
    if any(isinstance(e, FileNotFoundError) for e in chain) or "no such file" in lowered:
        return "no socket there"
    if "reset" in lowered or "aborted" in lowered or "disconnected" in lowered:
        return "connection reset"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first if len(first) <= 120 else first[:119] + "…"
