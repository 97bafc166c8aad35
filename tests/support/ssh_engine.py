"""A second Docker engine reachable only over SSH, the way a remote GPU host is.

`SshEngine` starts, on this machine:

- a second `dockerd` with its own data root, exec root, pid file and unix socket, and no
  bridge, iptables or ip6tables (so it coexists with the engine scripts/docker-engine
  started; runs use network_mode none or host anyway);
- an `sshd` (Debian's openssh-server, installed by scripts/test) on 127.0.0.1:<free port>
  with a throwaway host key, accepting only a throwaway user key whose authorized_keys
  line sets DOCKER_HOST to the second engine's socket (`PermitUserEnvironment yes`):
  docker-py's ssh transport runs `docker system dial-stdio` on the far side, which then
  reaches that engine and no other;
- a client home (`home`) whose .ssh/config names the key and whose .ssh/known_hosts holds
  the host key: the service is pointed at it with HOME=<home> and
  DOCKER_HOST=ssh://<user>@127.0.0.1:<port> (`url`).

The engine's files live under one fixed folder (`ROOT`), kept between test sessions so
an image loaded into it once (`load_image`: `docker save | docker load`) is there the next
time; a lock file makes a second session wait instead of starting a second dockerd on the
same data root. `serve_ssh()` starts one more sshd in front of the same engine, which a
test may stop (`SshServer.stop`) to see the engine drop.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

ROOT = Path("/tmp/assistant-ssh-engine")  # short: a unix socket's path is limited to 107 bytes
START_WAIT_S = 60.0


def missing_tools() -> list[str]:
    """What this machine lacks to run the second engine (scripts/test installs them)."""
    needed = {"dockerd": "docker.io", "docker": "docker.io", "sshd": "openssh-server"}
    needed["ssh-keygen"] = "openssh-client"
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [pkg for tool, pkg in needed.items() if shutil.which(tool, path=path) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd forks one per connection)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class SshServer:
    """One sshd in front of the second engine."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """The listener and every session it serves end (a host that went away)."""
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class SshEngine:
    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.user = getpass.getuser()
        self.socket = root / "docker.sock"
        self._keys = Path(tempfile.mkdtemp(prefix="ssh-engine-"))
        self.home = self._keys / "home"
        self._lock: int | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._servers: list[SshServer] = []
        self.server: SshServer | None = None

    # ---- what tests use ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """DOCKER_HOST for the service (with HOME=`home`)."""
        assert self.server is not None
        return f"ssh://{self.user}@127.0.0.1:{self.server.port}"

    def client(self) -> docker.DockerClient:
        """The second engine straight through its socket (for the test's own checks)."""
        return docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)

    def load_image(self, name: str) -> None:
        """Copy `name` from the first engine to this one, unless it has the same image."""
        first = docker.from_env(timeout=120)
        wanted = first.images.get(name).id
        second = self.client()
        try:
            with contextlib.suppress(docker.errors.ImageNotFound):
                if second.images.get(name).id == wanted:
                    return
            save = subprocess.Popen(["docker", "save", name], stdout=subprocess.PIPE)
            env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
            subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=env, check=True)
            assert save.stdout is not None
            save.stdout.close()
            if save.wait() != 0:
                raise AssertionError(f"docker save {name} failed")
        finally:
            second.close()
            first.close()

    @contextlib.contextmanager
    def serve_ssh(self) -> Iterator[SshServer]:
        """One more sshd in front of this engine, stopped at the end."""
        server = self._start_sshd()
        try:
            yield server
        finally:
            server.stop()

    # ---- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        self._lock = os.open(self.root / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another session's engine: wait for its end
        self._make_keys()
        self._start_dockerd()
        self.server = self._start_sshd()

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        if self._dockerd is not None:
            self._dockerd.terminate()
            try:
                self._dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._dockerd.kill()
                self._dockerd.wait(timeout=10)
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
        shutil.rmtree(self._keys, ignore_errors=True)

    def _make_keys(self) -> None:
        for name in ("host_key", "user_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self._keys / name)],
                check=True,
            )
        user_key = (self._keys / "user_key.pub").read_text().strip()
        (self._keys / "authorized_keys").write_text(
            f'environment="DOCKER_HOST=unix://{self.socket}" {user_key}\n'
        )
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        (ssh / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {self._keys / 'user_key'}\n")
        (ssh / "known_hosts").write_text("")  # filled per sshd, by port

    def _start_dockerd(self) -> None:
        for sub in ("data", "exec"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")  # not the first engine's settings
        self.socket.unlink(missing_ok=True)
        log = self.root / "dockerd.log"
        with log.open("wb") as out:
            self._dockerd = subprocess.Popen(
                [
                    "dockerd",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'dockerd.pid'}",
                    f"--host=unix://{self.socket}",
                    f"--config-file={self.root / 'daemon.json'}",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--log-level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_WAIT_S
        while True:
            if self._dockerd.poll() is not None:
                raise AssertionError(f"the second dockerd exited; its log: {log}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the second dockerd did not answer; log: {log}")
            time.sleep(0.3)

    def _answers(self) -> bool:
        # our own connect first: docker-py leaks the socket of a refused one
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        client = self.client()
        try:
            return bool(client.ping())
        except docker.errors.DockerException:
            return False
        finally:
            client.close()

    def _start_sshd(self) -> SshServer:
        port = _free_port()
        config = self._keys / f"sshd_{port}.conf"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self._keys / 'host_key'}",
                    f"AuthorizedKeysFile {self._keys / 'authorized_keys'}",
                    f"PidFile {self._keys / f'sshd_{port}.pid'}",
                    "PermitUserEnvironment yes",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        log = self._keys / f"sshd_{port}.log"
        sshd = shutil.which("sshd", path="/usr/sbin:/sbin") or "sshd"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host_key = (self._keys / "host_key.pub").read_text().split()
        with (self.home / ".ssh" / "known_hosts").open("a") as known:
            known.write(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"sshd exited: {log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd did not listen on {port}: {log.read_text()}")
            time.sleep(0.1)
        server = SshServer(port=port, proc=proc, log=log)
        self._servers.append(server)
        return server


@pytest.fixture(scope="session")
def ssh_engine() -> Iterator[SshEngine]:
    """The second engine behind sshd, for the whole session (see the module docstring).

    Missing tools are a failure, not a skip (as for the first engine); set
    ASSISTANT_TEST_NO_DOCKER=1 to skip the engine tests on purpose.
    """
    if os.environ.get("ASSISTANT_TEST_NO_DOCKER"):
        pytest.skip("ASSISTANT_TEST_NO_DOCKER is set")
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"the ssh engine tests need {', '.join(missing)}: ./scripts/test installs them"
            " as root (apt-get install " + " ".join(missing) + ")",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the ssh engine tests start a second dockerd: run them as root", pytrace=False)
    engine = SshEngine()
    try:
        engine.start()
        yield engine
    finally:
        engine.close()


@pytest.fixture
def ssh_home(ssh_engine: SshEngine, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME for this test: the client's ~/.ssh/config and known_hosts for the engine."""
    monkeypatch.setenv("HOME", str(ssh_engine.home))
    return ssh_engine.home
