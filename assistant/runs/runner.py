"""The runner interface: start a run's agent somewhere, watch it, stop it.

`Runner` is a Protocol of the few operations every engine can do; what only some engines
can do is declared as data in `Capabilities`, never found out with `isinstance`:

- `images`: an `ImageStore` (is an image there, build it) where runs start from images;
  None where they do not (local processes);
- `servers`: a `ServerPool` (a benchmark's serving containers) where the engine can run
  them beside a run; None elsewhere (`/run bench` then needs `url=`);
- `paths`: where the run sees its run dir and a mounted folder (a container's own paths,
  or the host's);
- `network_isolation`, `resource_limits`: whether a run asked for no network has none,
  and whether memory/CPU/pids limits are enforced;
- `run_dir_shared`: whether the engine sees this host's run dir (False for an ssh://
  engine: the runner keeps the local run dir a mirror, so the host reads it the same way).

Three engines implement it, sharing the run-dir protocol (assistant/jobs/protocol.py):
`DockerRunner` runs the agent in a hardened container, `ProcessRunner` in a local
subprocess when no engine is reachable, `SlurmRunner` (runs/slurm_runner.py) in a Slurm
batch job on a run dir the cluster shares; Slurm places its GPUs (`places_gpus`) and says
why a job waits (`RunnerState.waiting`) or that it was requeued (`requeued`). The host
learns everything else from the run dir.

A further engine plugs in by implementing every member of `Runner`, declaring its
`Capabilities` (None for what it cannot do), adding its name to `RunnerKind`, and passing
tests/runs/test_runner_contract.py with a fixture of its own. Nothing else in the host
changes: the manager and the monitor read capabilities.

Every call that reaches an engine is bounded: one that does not answer (refused, reset,
black-holed) raises `EngineUnavailable` within a few seconds; `RunStartError` means the
engine answered "no".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from assistant.runs.placement import Hosts

RunnerKind = Literal["docker", "process", "slurm"]
# How long one ordinary engine call may take before the engine counts as not answering.
ENGINE_CALL_S = 5.0


@dataclass(frozen=True)
class Mount:
    """A host folder the run sees besides its run dir (a declared recipe's working dir)."""

    source: Path  # absolute, on the host
    target: str  # where a container sees it
    read_only: bool = True


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a runner needs; built by the host from a validated `RunSpec`."""

    run_id: str
    recipe: str
    run_dir: Path  # absolute, on the host; the only writable path the run gets
    image: str  # for engines with images; ignored by the others
    gpus: tuple[int, ...] = ()  # host GPU indices given to this run
    nproc: int = 1  # processes (torchrun) the recipe runs with
    memory_mb: int | None = None
    cpus: float | None = None
    pids_limit: int = 512
    network: bool = False  # training: no network; a benchmark reaching an endpoint: yes
    labels: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    # the image is not ours (a declared recipe's): bring the agent in, run by its python3
    bring_agent: bool = False
    # GPUs the run asked for: an engine that places GPUs itself (Slurm) takes this count,
    # since `gpus` (host indices) is empty for it
    gpus_wanted: int = 0
    host: str = ""  # a pool's host the run was placed on (runs/pool.py); "" on one engine


@dataclass(frozen=True)
class RunHandle:
    """How to find the run again, also after the orchestrator restarts."""

    runner: RunnerKind
    ref: str  # container id, or pid
    run_id: str


@dataclass(frozen=True)
class ExitInfo:
    """What the engine (or the OS) says about a run that is no longer running."""

    exit_code: int | None  # None: unknown (e.g. a process that was not our child)
    oom_killed: bool = False
    error: str | None = None  # the engine's own error, if any
    # the engine ended it at a limit it enforces (Slurm's --time): the cause, in words
    limit: str | None = None


@dataclass(frozen=True)
class RunnerState:
    running: bool
    exit: ExitInfo | None = None  # set when not running
    gone: bool = False  # the container/process no longer exists at all
    # an engine with a queue of its own (Slurm) holds the run before it executes: why
    # ("Resources", "Priority"); None when it executes or ended. Such a run is not over.
    waiting: str | None = None
    # the engine put the run back in its queue after it ran (preemption, a requeue): it
    # starts again by itself, from its last checkpoint
    requeued: bool = False
    # the host holding the run does not answer (a pool's host): why and since when. While
    # running, nothing is known of the run (no stall either); once gone, it was given up.
    silent: str | None = None


# ---- capabilities ---------------------------------------------------------------------


class PathView(Protocol):
    """Where a run sees host paths: spec.json tells the run its own view of them."""

    def run_dir(self, run_dir: Path) -> str: ...

    def mount(self, mount: Mount) -> str: ...


@dataclass(frozen=True)
class HostPaths:
    """The run sees the host's own paths (nothing between them)."""

    def run_dir(self, run_dir: Path) -> str:
        return str(run_dir)

    def mount(self, mount: Mount) -> str:
        return str(mount.source)


@dataclass(frozen=True)
class ContainerPaths:
    """The run sees its run dir at `run_mount` and each mount at its target."""

    run_mount: str

    def run_dir(self, run_dir: Path) -> str:
        return self.run_mount

    def mount(self, mount: Mount) -> str:
        return mount.target


class ImageStore(Protocol):
    """The images runs start from, on an engine that has them."""

    async def ready(self, image: str) -> bool:
        """Whether runs of `image` can start now (bounded; no pull is ever tried)."""
        ...

    async def build(self, image: str, on_line: Callable[[str], Awaitable[None]]) -> None:
        """Build `image`, passing progress lines along; long, so never on a command's path.

        :raises RunStartError: with why it could not be built.
        """
        ...


@dataclass(frozen=True)
class StartedServer:
    ref: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class ServerPool(Protocol):
    """A benchmark's serving containers: started before its run, removed after it."""

    async def start(
        self,
        run_id: str,
        image: str,
        args: tuple[str, ...],
        gpus: tuple[int, ...],
        *,
        shm_size: str,
        hf_cache: Path | None,
    ) -> StartedServer:
        """Create and start one; it is still loading when this returns.

        :raises RunStartError: the engine's reason (image missing, no GPU runtime, ...).
        """
        ...

    async def logs(self, ref: str, since: float | None = None, tail: int | None = None) -> str:
        """Its output since a time (unix seconds) or its last `tail` lines; "" if gone."""
        ...

    async def stop(self, ref: str, log_path: Path) -> list[str]:
        """Keep its output in `log_path`, remove it, and return its last lines."""
        ...

    async def remove(self, ref: str) -> None: ...

    async def running(self) -> dict[str, str]:
        """Servers of this assistant on the engine: ref -> run id."""
        ...


class ClusterView(Protocol):
    """A cluster an engine schedules on (Slurm), as /status shows it."""

    async def cluster_lines(self) -> list[str]:
        """Partitions, nodes idle/allocated/down, GPUs free, this assistant's jobs.

        :raises EngineUnavailable: the cluster does not answer.
        """
        ...


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond `Runner`'s members; absent ones are None or False."""

    paths: PathView
    images: ImageStore | None = None
    servers: ServerPool | None = None
    network_isolation: bool = False  # a run that asks for no network has none
    resource_limits: bool = False  # memory, CPU and pids limits are enforced
    # the engine mounts this host's run dir; False: the run writes on the engine's host and
    # the runner mirrors what the host reads into the local run dir (runs/remote_dir.py)
    run_dir_shared: bool = True
    # the engine places runs on GPUs itself (Slurm's --gres): the manager counts no host
    # GPUs or CPU slots for it and hands every queued run over at once
    places_gpus: bool = False
    # an engine that is a cluster (Slurm): what /status shows of it
    cluster: ClusterView | None = None
    # a pool of engines (runs/pool.py): where runs go and what is known of each host
    hosts: Hosts | None = None


# ---- the interface --------------------------------------------------------------------


class Runner(Protocol):
    """What the manager and the monitor may ask of any engine (see the module docstring).

    Unreachability is `EngineUnavailable` from every member that talks to an engine.
    """

    @property
    def kind(self) -> RunnerKind:
        """Stored with each run's handle: which engine to ask about it after a restart."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def description(self) -> str:
        """One line for /status: which runner, where (engine address, GPUs seen)."""
        ...

    async def launch(self, request: LaunchRequest) -> RunHandle:
        """Start the agent for `request.run_dir`; returns once it is started.

        :raises RunStartError: with the engine's reason (image missing, no GPU, ...).
        :raises EngineUnavailable: the engine did not answer; nothing may have started.
        """
        ...

    async def state(self, handle: RunHandle) -> RunnerState:
        """Running, or how it ended."""
        ...

    async def signal_stop(self, handle: RunHandle) -> None:
        """Send SIGTERM (the agent checkpoints and exits); never raises if already gone."""
        ...

    async def kill(self, handle: RunHandle) -> None:
        """Force the end (after the grace period); never raises if already gone."""
        ...

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        """The agent's own last output as the engine kept it ("" when none): why a
        run ended that never wrote its events (a crash before the agent could report)."""
        ...

    async def list_managed(self) -> list[RunHandle]:
        """Runs of this assistant still running (by label or pid), for reconciling."""
        ...

    async def remove(self, handle: RunHandle) -> None:
        """Free what the ended run still holds (a stopped container); gone is removed.

        :raises StateError: it is still running (stop it first).
        """
        ...

    async def ping(self, timeout_s: float) -> None:
        """Does the engine answer within `timeout_s`? For /healthz and /status.

        :raises EngineUnavailable: no answer; the message names the engine's address.
        """
        ...

    async def aclose(self) -> None: ...
