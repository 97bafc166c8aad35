"""The runner interface: start a run's agent somewhere, watch it, stop it.

Two implementations share the run-dir protocol (assistant/jobs/protocol.py): `DockerRunner`
runs the agent in a hardened container, `ProcessRunner` in a local subprocess when no
engine is reachable. The host learns everything else from the run dir.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

RunnerKind = Literal["docker", "process"]
# An image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest]
IMAGE_REF = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::\d{1,5})?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


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
    image: str  # for DockerRunner; ignored by ProcessRunner
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


@dataclass(frozen=True)
class RunnerState:
    running: bool
    exit: ExitInfo | None = None  # set when not running
    gone: bool = False  # the container/process no longer exists at all


class Runner(ABC):
    """Subclasses implement every abstract method; `aclose` is optional."""

    kind: RunnerKind

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for /status: which runner, where (engine address, GPUs seen)."""

    @abstractmethod
    async def launch(self, request: LaunchRequest) -> RunHandle:
        """Start the agent for `request.run_dir`; returns once it is started.

        :raises RunStartError: with the engine's reason (image missing, no GPU, ...).
        """

    @abstractmethod
    async def state(self, handle: RunHandle) -> RunnerState:
        """Running, or how it ended."""

    @abstractmethod
    async def signal_stop(self, handle: RunHandle) -> None:
        """Send SIGTERM (the agent checkpoints and exits); never raises if already gone."""

    @abstractmethod
    async def kill(self, handle: RunHandle) -> None:
        """Force the end (after the grace period); never raises if already gone."""

    @abstractmethod
    async def find_active(self) -> list[RunHandle]:
        """Runs of ours still running (by label or pid), for reconciling at start."""

    def view(self, mount: Mount) -> str:
        """Where the run sees a mounted host folder: the folder itself, without a container."""
        return str(mount.source)

    def run_dir_view(self, run_dir: Path) -> str:
        """Where the run sees its own run dir."""
        return str(run_dir)

    async def image_ready(self, image: str) -> bool:
        """Whether runs of `image` can start now; runners without images always can."""
        return True

    async def build_image(self, image: str, on_line: Callable[[str], Awaitable[None]]) -> None:
        """Build `image`, passing progress lines along.

        :raises RunStartError: with why it could not be built.
        """
        return None

    async def remove(self, handle: RunHandle) -> None:
        """Free what the ended run still holds (a stopped container); default: nothing."""
        return None

    async def aclose(self) -> None:
        return None
