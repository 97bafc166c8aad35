"""Where a queued run starts: one engine's GPUs and CPU slots, or a pool of hosts.

The manager's dispatch asks a `Plan` made for one pass (`take(run)` for each queued run,
oldest first) and starts what it places. On one engine the plan is `OneHost`: the
configured GPU indices minus those live runs hold, first come first served (a GPU run
that does not fit holds back later GPU runs), and `ASSISTANT_MAX_CPU_RUNS` CPU slots.
An engine that is a pool of hosts (runs/pool.py) declares `Capabilities.hosts`, a `Hosts`,
whose plans choose a host too; `Hosts` also says what /status, /runs and /run show of
each host and of a run whose host does not answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from storage.runs import RunRecord


@dataclass(frozen=True)
class Place:
    """Where one run starts: a host of the pool ("" on a single engine) and its GPUs."""

    host: str
    gpus: list[int]


class Plan(Protocol):
    """One dispatch pass: each `take` places a run (oldest first) or says it waits."""

    def take(self, run: RunRecord) -> Place | None: ...


@dataclass
class OneHost:
    """The plan of a single engine (what dispatch always did)."""

    free: list[int]
    cpu_live: int
    max_cpu: int
    gpu_blocked: bool = field(default=False)

    def take(self, run: RunRecord) -> Place | None:
        if run.gpus_wanted == 0:
            if self.cpu_live >= self.max_cpu:
                return None
            self.cpu_live += 1
            return Place("", [])
        if self.gpu_blocked or len(self.free) < run.gpus_wanted:
            self.gpu_blocked = True  # first come, first served: later GPU runs wait
            return None
        assigned, self.free = self.free[: run.gpus_wanted], self.free[run.gpus_wanted :]
        return Place("", assigned)


class Hosts(Protocol):
    """A pool of engines (runs/pool.py), as the manager and the commands see it."""

    @property
    def gpu_count(self) -> int:
        """GPUs of the largest host: the most one run may ask for."""
        ...

    def plan(self, live: list[RunRecord], max_cpu_runs: int) -> Plan:
        """A plan for one dispatch pass, given the live runs (on their hosts)."""
        ...

    def check(self, gpus: int, host: str | None) -> None:
        """Whether a run asking `gpus` (on `host`: a host's name or a label) can ever fit.

        :raises NotFoundError: no host has that name or label.
        :raises CapacityError: no such host has that many GPUs.
        """
        ...

    def unknown(self, run: RunRecord) -> str | None:
        """ "unknown: host gpu2 not answering since 14:03" for a live run whose host is
        silent; None when its host answers (or it is on no host)."""
        ...

    def waiting(self, run: RunRecord, live: list[RunRecord]) -> str | None:
        """Why a queued run has not started (every host it may go to, and what each lacks)."""
        ...

    def status_lines(self, runs: list[RunRecord]) -> list[str]:
        """/status: each host, up or not, its GPUs free and used, its runs."""
        ...

    def when_back(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """`callback(host name)` is awaited when a host answers again (a stop waiting for
        it is delivered, queued runs may start there)."""
        ...
