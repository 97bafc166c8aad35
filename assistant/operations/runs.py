"""Run operations: launch (a recipe or a serving benchmark), stop, pause, resume, retry,
and the reads a reply needs (one run, its logs, the lists, a comparison).

`/run ...` parses its words into these arguments and the model's tools pass their JSON;
both land here, so a launch is checked the same way whoever asks. The requests go to the
run manager (`submit`, `stop`, `pause`, `resume`, `retry`), which owns the queue, the
runner and the run's state; this layer resolves ids, builds the spec and says no (one
line, a `Refused`) to what the host cannot do.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from assistant.errors import StateError
from assistant.jobs import protocol
from assistant.jobs.recipes import RECIPES
from assistant.operations.arguments import Arguments, Id, Params, whole
from assistant.operations.caller import Caller
from assistant.recipes.rules import RECIPE_NAME
from assistant.recipes.run_params import HOST_NAME
from assistant.runs import rundir
from assistant.runs.bench_report import compare_chart, compare_text, load_results
from assistant.runs.bench_spec import build_bench_spec, hardware_label
from assistant.runs.lifecycle import ACTIVE, RunState
from assistant.runs.report import log_tail
from assistant.runs.spec import RunSpec, build_spec

if TYPE_CHECKING:
    from assistant.config import Settings
    from assistant.hoststats import HostStats
    from assistant.recipes.catalog import RecipeCatalog
    from assistant.runs.manager import RunManager
    from storage.runs import RunRecord

MAX_LOG_LINES = 200
DEFAULT_LOG_LINES = 20


def _recipe(value: object) -> str:
    if not isinstance(value, str) or not RECIPE_NAME.fullmatch(value):
        raise ValueError(f"recipe must be a recipe name like gpt, got {value!r}")
    return value


RecipeName = Annotated[
    str,
    BeforeValidator(_recipe),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{RECIPE_NAME.pattern}$",
            "description": f"a recipe: built-in {', '.join(sorted(RECIPES))}, or one the"
            " admin declared (list_recipes shows them all)",
        }
    ),
]


class RunRef(Arguments):
    """One run, by its id or a unique prefix of it."""

    run_id: Id


def _host_name(value: object) -> object:
    if value is not None and not (isinstance(value, str) and HOST_NAME.match(value)):
        raise ValueError(
            f"host={value!r} is not a host name or label: a lower-case letter, then letters,"
            " digits or -, at most 32 (/status lists the hosts)"
        )
    return value


class LaunchTraining(Arguments):
    """A recipe with its parameters (checked by the recipe), and the GPUs it needs."""

    recipe: RecipeName
    params: Params = Field(default_factory=dict)
    gpus: Annotated[int | None, whole(0, 64, "gpus"), Field(ge=0, le=64)] = None
    # a pool's host (or a label of hosts) the run must go to; none: the first that fits
    host: Annotated[
        str | None,
        BeforeValidator(_host_name),
        WithJsonSchema({"type": "string", "pattern": HOST_NAME.pattern}),
    ] = None

    @model_validator(mode="after")
    def _gpus_once(self) -> Self:
        for name in ("gpus", "host"):
            if getattr(self, name) is not None and name in self.params:
                raise ValueError(f"give {name} once: as the {name} argument or in params, not both")
        return self

    def assignments(self) -> list[str]:
        """The parameters as the spec reads them (`key=value`), `gpus` among them."""
        words = [f"{key}={value}" for key, value in self.params.items()]
        if self.gpus is not None:
            words.append(f"gpus={self.gpus}")
        if self.host is not None:
            words.append(f"host={self.host}")
        return words


class LaunchBench(Arguments):
    """A serving benchmark: its `key=value` settings (model=, url=, gpus=, profiles=...)."""

    settings: tuple[str, ...]


class RecipeQuery(Arguments):
    """Every recipe, or one in full."""

    recipe: RecipeName | None = None


class RunLogs(RunRef):
    lines: Annotated[int, whole(1, MAX_LOG_LINES, "lines"), Field(ge=1, le=MAX_LOG_LINES)] = (
        DEFAULT_LOG_LINES
    )


class CompareRuns(Arguments):
    run_ids: Annotated[tuple[Id, ...], Field(min_length=2, max_length=12)]


@dataclass(frozen=True)
class Launched:
    """A submitted run, and what its reply says about where it waits."""

    spec: RunSpec
    run: RunRecord
    runner: str  # where it runs, in words
    building: bool  # the run image is being built first
    position: int | None  # its place among runs waiting for GPUs


@dataclass(frozen=True)
class Retried:
    original: RunRecord
    fresh: RunRecord


@dataclass(frozen=True)
class RunView:
    """One run with its state history and run dir, for `/run show`."""

    run: RunRecord
    history: list[tuple[str, str, str | None]]  # (timestamp, state, note)
    run_dir: Path
    artifacts: list[str]


@dataclass(frozen=True)
class RunLog:
    run: RunRecord
    lines: list[str]


@dataclass(frozen=True)
class Comparison:
    text: str
    chart: Path | None


class RunOperations:
    """Every request about runs, for commands and tools alike."""

    def __init__(self, manager: RunManager, settings: Settings, host: HostStats) -> None:
        self._manager = manager
        self._settings = settings
        self._host = host

    @property
    def catalog(self) -> RecipeCatalog:
        return self._manager.catalog

    async def find(self, prefix: str) -> RunRecord:
        """:raises NotFoundError, AmbiguousIdError: no run, or several, start with it."""
        return await self._manager.repo.resolve(prefix)

    # ---- launches ----------------------------------------------------------------------

    async def launch_training(self, caller: Caller, args: LaunchTraining) -> Launched:
        """:raises CommandError: an unknown recipe or parameter, a bad value.
        :raises CapacityError: more GPUs than the host has."""
        manager, settings = self._manager, self._settings
        spec = build_spec(
            manager.catalog.require(args.recipe),
            args.assignments(),
            chat_id=caller.chat_id,
            image=settings.run_image,
            default_gpus=min(1, len(manager.gpu_inventory)),
            memory_mb=settings.run_memory_mb,
            cpus=settings.run_cpus,
        )
        return await self._submit(caller, spec)

    async def launch_bench(self, caller: Caller, args: LaunchBench) -> Launched:
        """:raises CommandError: a bad setting. :raises CapacityError: too many GPUs."""
        manager, settings = self._manager, self._settings
        spec = build_bench_spec(
            list(args.settings),
            chat_id=caller.chat_id,
            run_image=settings.run_image,
            server_image=settings.bench_image,
            server_admin_args=shlex.split(settings.bench_server_args),
            default_gpus=min(1, len(manager.gpu_inventory)),
            memory_mb=settings.run_memory_mb,
            cpus=settings.run_cpus,
            hardware=hardware_label(self._host, manager.gpu_inventory),
            cluster_label=settings.cluster_label,
            engine_known=manager.servers is not None,
            allow_link_local=settings.bench_allow_link_local,
        )
        return await self._submit(caller, spec)

    async def _submit(self, caller: Caller, spec: RunSpec) -> Launched:
        """:raises CapacityError: more GPUs than the host has (the manager's check)."""
        manager = self._manager
        run = await manager.submit(spec, caller.event_id)
        building = run.state == "queued" and manager.building
        position = None
        if run.state == "queued" and spec.gpus and not building:
            position = await manager.queue_position(run)
        return Launched(spec, run, manager.runner.description, building, position)

    # ---- requests on one run -----------------------------------------------------------

    async def stop(self, caller: Caller, ref: RunRef) -> RunRecord:
        """:raises NotFoundError, AmbiguousIdError, StateError: see `find`; it has ended,
        or a button asked a run already stopping (typing /run stop again kills it)."""
        run = await self.find(ref.run_id)
        if caller.pressed and run.state == RunState.STOPPING:
            raise StateError(
                f"run {run.id} is already stopping; type /run stop {run.id} to kill it now"
            )
        return await self._manager.stop(run, caller.event_id)

    async def pause(self, caller: Caller, ref: RunRef) -> RunRecord:
        """:raises StateError: not live, or its recipe cannot resume."""
        return await self._manager.pause(await self.find(ref.run_id), caller.event_id)

    async def resume(self, caller: Caller, ref: RunRef) -> RunRecord:
        """:raises StateError: not paused, or no checkpoint."""
        return await self._manager.resume(await self.find(ref.run_id), caller.event_id)

    async def retry(self, caller: Caller, ref: RunRef) -> Retried:
        original = await self.find(ref.run_id)
        return Retried(original, await self._manager.retry(original, caller.event_id))

    # ---- reads -------------------------------------------------------------------------

    async def show(self, ref: RunRef) -> RunView:
        run = await self.find(ref.run_id)
        run_dir = self._manager.run_dir(run.id)
        history = await self._manager.repo.history(run.id)
        # follows no link the run left
        artifacts = rundir.names(run_dir, protocol.ARTIFACTS, dirs=True)
        return RunView(run, history, run_dir, artifacts)

    async def logs(self, args: RunLogs) -> RunLog:
        run = await self.find(args.run_id)
        return RunLog(run, log_tail(self._manager.run_dir(run.id), args.lines))

    async def overview(self, recent: int = 10) -> tuple[list[RunRecord], list[RunRecord]]:
        """Active runs (queued first, oldest first), then up to `recent` others, newest first."""
        repo = self._manager.repo
        active = await repo.in_states(ACTIVE)
        ended = [r for r in await repo.recent(recent + 5) if r.state not in ACTIVE]
        return active, ended[:recent]

    async def active(self) -> list[RunRecord]:
        return await self._manager.repo.in_states(ACTIVE)

    async def compare(self, args: CompareRuns) -> Comparison:
        """:raises StateError: a run that is not a benchmark, or has no results yet."""
        runs = [await self.find(run_id) for run_id in args.run_ids]
        not_bench = [r.id for r in runs if r.kind != "bench"]
        if not_bench:
            raise StateError(f"not benchmark runs: {', '.join(not_bench)}")
        manager = self._manager
        rows = [
            (r.id, str(r.params.get("model")), load_results(manager.run_dir(r.id))) for r in runs
        ]
        empty = [run_id for run_id, _, results in rows if not results]
        if empty:
            raise StateError(f"no results yet for: {', '.join(empty)}")
        name = f"compare-{'-'.join(args.run_ids)}.png"
        out = manager.run_dir(runs[0].id) / protocol.ARTIFACTS / name
        chart = await asyncio.to_thread(compare_chart, rows, out)
        return Comparison(compare_text(rows), chart)
