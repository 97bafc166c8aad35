"""Run operations: submit, stop, pause, resume, retry, and the queue that starts runs.

Commands (and later the model's tools) call these; each is traced as a tool call. Runs
wait for GPUs instead of failing: a run asking for N GPUs starts when N of the configured
inventory are free, in the order asked. The chain of a run:

    message ─> run_queued ─> event "run ab12 starting" ─> run_launched (engine tool calls)
           ─> events "started", "checkpoint", ..., "succeeded" ─> message_sent (the report)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from assistant.clock import Clock
from assistant.config import Settings
from assistant.errors import CapacityError, RunStartError, StateError
from assistant.jobs import protocol
from assistant.jobs.declared import DeclaredRecipe, from_json, to_json
from assistant.observability import EventLog, traced
from assistant.recipes.catalog import RecipeCatalog
from assistant.recipes.workdir import check_workdir
from assistant.runs import rundir
from assistant.runs.engine_watch import UNANSWERED, EngineWatch, EngineWatches, silence
from assistant.runs.lifecycle import ACTIVE, HALTING, LIVE, Lifecycle, RunState
from assistant.runs.offers import in_thread, resumable
from assistant.runs.placement import OneHost, Plan
from assistant.runs.report import Notify, ShowProgress
from assistant.runs.runner import LaunchRequest, Mount, RunHandle, Runner
from assistant.runs.signals import Signals, pending
from assistant.runs.spec import RunSpec
from storage.runs import RunRecord, RunRepo
from storage.timestamps import to_iso

log = logging.getLogger(__name__)

WORKDIR_MOUNT = "/workspace/code"  # where a container sees a declared recipe's working dir
SECRETS_DIR = ".secrets"  # in the run dir, for the moment between launch and the command


class RunManager:
    """Owns the run queue and every change of a run's state made on request."""

    def __init__(
        self,
        repo: RunRepo,
        runner: Runner,
        event_log: EventLog,
        settings: Settings,
        clock: Clock,
        notify: Notify,
        gpu_inventory: list[int],
        show_progress: ShowProgress | None = None,
        launched: asyncio.Event | None = None,
    ) -> None:
        self.repo = repo
        self.runner = runner
        self.event_log = event_log
        self.settings = settings
        self.clock = clock
        self.notify = notify
        self.gpu_inventory = gpu_inventory
        self.show_progress = show_progress
        self.lifecycle = Lifecycle(repo, event_log, clock)
        self.engine = EngineWatch()  # shared with the monitor: one view of the engine
        self.engine_name = {"docker": "Docker", "slurm": "Slurm"}.get(runner.kind, runner.kind)
        # signals keep a view per pool host (a silent host holds back only its own runs)
        hosts = runner.capabilities.hosts
        self.signals = Signals(
            repo,
            runner,
            event_log,
            clock,
            EngineWatches(self.engine),
            self.engine_name,
            settings.stop_grace_s,
            silent=None if hosts is None else (lambda run: hosts.unknown(run) is not None),
        )
        self._recheck = True  # look for containers of queued runs before launching them
        self._waiting: dict[str, tuple[int, int]] = {}  # run -> (outage, its wait event)
        self._dispatch_lock = asyncio.Lock()
        self._building: asyncio.Task[None] | None = None
        self.build_note: str | None = None  # shown by /status while an image builds
        self.launched = launched or asyncio.Event()  # set at each launch: the monitor wakes
        self.servers = runner.capabilities.servers
        if runner.capabilities.hosts is not None:  # a pool host answers again: start what waits
            runner.capabilities.hosts.when_back(self._host_back)
        self.catalog = RecipeCatalog(
            settings.recipes_path,
            allowed_roots=settings.recipe_roots,
            secrets_dir=settings.secrets_dir,
            protected=(settings.assistant_home,),
        )

    def run_dir(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id

    @property
    def _places_gpus(self) -> bool:
        """The engine places runs on GPUs itself (Slurm): no host GPU or CPU slot counted."""
        return self.runner.capabilities.places_gpus

    def _now(self) -> str:
        return to_iso(self.clock.now())

    # ---- requests ----------------------------------------------------------------------

    @traced("run.submit")
    async def submit(
        self, spec: RunSpec, triggered_by: int | None, *, retry_of: str | None = None
    ) -> RunRecord:
        """Queue a validated run and start it if its GPUs are free.

        :raises CapacityError: if it asks for more GPUs than the host has.
        """
        hosts = self.runner.capabilities.hosts
        if hosts is not None:
            hosts.check(spec.gpus, spec.host)  # a pool: some host (or host=) must fit it
        elif spec.gpus > len(self.gpu_inventory) and not self._places_gpus:
            have = len(self.gpu_inventory)
            raise CapacityError(
                f"the run asks for {spec.gpus} GPU(s) but this host has {have}"
                + ("" if have else " (set ASSISTANT_GPUS, or gpus=0 to run on the CPU)")
            )
        run = await self.repo.create(
            kind=spec.kind,
            recipe=spec.recipe,
            params=spec.params,
            image=spec.image,
            gpus_wanted=spec.gpus,
            nproc=spec.nproc,
            memory_mb=spec.memory_mb,
            cpus=spec.cpus,
            chat_id=spec.chat_id,
            total=spec.total,
            now=self._now(),
            state=RunState.QUEUED,
            retry_of=retry_of,
            definition=spec.definition,
            server=spec.server,
            host_asked=spec.host or "",
        )
        action = self.event_log.log_action(
            triggered_by,
            "run_queued",
            target=run.id,
            content={"recipe": spec.recipe, "params": spec.overrides, "gpus": spec.gpus},
        )
        await self.repo.update(run.id, launch_action=action)
        await self.dispatch()
        fresh = await self.repo.get(run.id)
        assert fresh is not None
        return fresh

    @traced("run.stop")
    async def stop(self, run: RunRecord, triggered_by: int | None) -> RunRecord:
        """Cancel a queued run, or ask a live one to stop (it checkpoints first).

        A paused run is cancelled at once: nothing of it is running, and its checkpoint
        stays in its run dir (`/run retry` starts the same spec afresh).

        :raises StateError: if the run has ended.
        """
        return await self._halt(run, "stop", triggered_by)

    @traced("run.pause")
    async def pause(self, run: RunRecord, triggered_by: int | None) -> RunRecord:
        """Checkpoint and stop the container; its GPUs are freed until resumed.

        :raises StateError: if the run is not live or its recipe cannot resume.
        """
        if not self.supports_resume(run):
            raise StateError(
                f"run {run.id} ({run.recipe}) cannot be paused: its recipe declares no way to"
                f" resume from a checkpoint; /run stop {run.id} ends it"
            )
        return await self._halt(run, "pause", triggered_by)

    def supports_resume(self, run: RunRecord) -> bool:
        return resumable(run)

    async def _halt(self, run: RunRecord, action: str, triggered_by: int | None) -> RunRecord:
        """Cancel what does not execute; ask a live run, now if the engine answers.

        The request is stored first (`wanted`) and control.json written, so an engine that
        does not answer delays it without losing it: the monitor delivers it later. A stop
        of a run already stopping whose signal was delivered kills it.
        """
        if run.state in (RunState.QUEUED, RunState.PAUSED):
            if action == "pause":
                if run.state == RunState.PAUSED:
                    raise StateError(f"run {run.id} is already paused; /run resume {run.id}")
                raise StateError(f"run {run.id} has not started; /run stop {run.id} cancels it")
            await self.lifecycle.move(
                run, RunState.CANCELLED, f"cancelled while {run.state}", ended_at=self._now()
            )
            self._changed(run, "cancelled", triggered_by)
            await self.dispatch()
            return await self._reload(run)
        if run.state == RunState.PREEMPTED:
            return await self._halt_preempted(run, action, triggered_by)
        if run.state in HALTING:
            return await self._halt_again(run, action, triggered_by)
        if run.state not in LIVE or run.handle is None or run.runner is None:
            raise StateError(f"run {run.id} is {run.state}; only a running run can {action}")
        write_control(self.run_dir(run.id), action)
        state = RunState.PAUSING if action == "pause" else RunState.STOPPING
        event = await self.lifecycle.move(run, state, f"{action} asked", signalled_at=None)
        self._changed(run, f"{action} asked", triggered_by)
        if event is None:  # it ended meanwhile
            return await self._reload(run)
        return await self.signals.ask(await self._reload(run), action, event)

    async def _halt_preempted(
        self, run: RunRecord, action: str, triggered_by: int | None
    ) -> RunRecord:
        """A preempted run's job waits in the engine's queue and nothing of it executes: its
        job is cancelled, and a stop ends the run, a pause keeps its checkpoint, at once.

        control.json is written first, so a job that starts meanwhile pauses or stops as
        asked. An engine that does not answer makes it an ordinary stop or pause, which
        the monitor delivers once it answers.

        :raises StateError: a pause before the run's first checkpoint.
        """
        if action == "pause" and run.checkpoint is None:
            raise StateError(
                f"run {run.id} was preempted before its first checkpoint: nothing to resume"
                f" from; /run stop {run.id} ends it"
            )
        write_control(self.run_dir(run.id), action)
        if run.handle is None or run.runner is None:
            return run
        handle = RunHandle(run.runner, run.handle, run.id)  # type: ignore[arg-type]
        try:
            async with self.event_log.tool_call(f"{self.runner.kind}.kill", {"queued": True}):
                await self.runner.kill(handle)
        except UNANSWERED:
            state = RunState.PAUSING if action == "pause" else RunState.STOPPING
            event = await self.lifecycle.move(run, state, f"{action} asked", signalled_at=None)
            self._changed(run, f"{action} asked", triggered_by)
            if event is None:
                return await self._reload(run)
            return await self.signals.ask(await self._reload(run), action, event)
        paused = action == "pause"
        await self.lifecycle.move(
            run,
            RunState.PAUSED if paused else RunState.CANCELLED,
            f"{'paused' if paused else 'cancelled'} while preempted (its queued job cancelled)",
            ended_at=None if paused else self._now(),
            gpus=[],
        )
        self._changed(run, f"{action}: its queued job cancelled", triggered_by)
        return await self._reload(run)

    async def _halt_again(self, run: RunRecord, action: str, triggered_by: int | None) -> RunRecord:
        """A second stop or pause of a run already pausing or stopping.

        Still undelivered: one more try now. A stop of a stopping run whose signal was
        delivered: kill it (it may lose the steps since its last checkpoint).

        :raises StateError: anything else (a stop of a pausing run, a third stop, ...).
        """
        same = (action, run.state) in (("stop", RunState.STOPPING), ("pause", RunState.PAUSING))
        if pending(run):
            await self.signals.deliver(run)
            if same:
                return await self._reload(run)  # asked again: tried again
            run = await self._reload(run)
        elif same and action == "stop" and run.wanted == "stop":
            self._changed(run, "kill asked", triggered_by)
            return await self.signals.ask(run, "kill", None)
        waits = (
            f"; the {run.wanted} reaches it when the engine answers ({run.blocked})"
            if pending(run)
            else ""
        )
        raise StateError(f"run {run.id} is already {run.state}{waits}")

    @traced("run.resume")
    async def resume(self, run: RunRecord, triggered_by: int | None) -> RunRecord:
        """Queue a paused run again; it relaunches from its checkpoint.

        :raises StateError: if it is not paused or has no checkpoint.
        """
        if run.state != RunState.PAUSED:
            raise StateError(f"run {run.id} is {run.state}, not paused")
        if run.checkpoint is None:
            raise StateError(f"run {run.id} has no checkpoint to resume from; /run retry it")
        action = self.event_log.log_action(
            triggered_by, "run_resumed", target=run.id, content={"from": run.checkpoint}
        )
        with contextlib.suppress(OSError):  # a run dir gone since: the start says so
            rundir.unlink(self.run_dir(run.id), protocol.CONTROL)
        await self.lifecycle.move(
            run,
            RunState.QUEUED,
            f"resume from {run.checkpoint}",
            caused_by=action,
            launch_action=action,
            handle=None,
            exit_code=None,
            error=None,
            ended_at=None,
        )
        await self.dispatch()
        return await self._reload(run)

    async def retry(self, run: RunRecord, triggered_by: int | None) -> RunRecord:
        """The same spec as a fresh run."""
        spec = RunSpec(
            kind=run.kind,
            recipe=run.recipe,
            params=run.params,
            gpus=run.gpus_wanted,
            nproc=run.nproc,
            memory_mb=run.memory_mb or self.settings.run_memory_mb,
            cpus=run.cpus or self.settings.run_cpus,
            image=run.image,
            chat_id=run.chat_id,
            total=run.total,
            definition=run.definition,
            server=None if run.server is None else fresh_server(run.server),
            host=run.host_asked or None,
        )
        return await self.submit(spec, triggered_by, retry_of=run.id)

    def _changed(self, run: RunRecord, change: str, triggered_by: int | None) -> None:
        self.event_log.log_action(triggered_by, "run_changed", target=run.id, content=change)

    async def _reload(self, run: RunRecord) -> RunRecord:
        return await self.repo.get(run.id) or run

    # ---- the queue ---------------------------------------------------------------------

    def free_gpus(self, live: list[RunRecord]) -> list[int]:
        busy = {g for r in live for g in r.gpus}
        return [g for g in self.gpu_inventory if g not in busy]

    async def _host_back(self, host: str) -> None:
        """A pool host answers again: the stops and pauses waiting for it reach their runs
        first, then queued runs may start there."""
        await self.signals.host_back(host)
        await self.dispatch()

    async def dispatch(self) -> None:
        """Start every queued run whose resources are free, oldest first.

        An engine that does not answer leaves them queued, each marked with why
        (`blocked`), and stops this pass: the monitor dispatches again when the engine's
        backoff allows.
        """
        async with self._dispatch_lock:
            runs = await self.repo.in_states(ACTIVE)
            queued = [r for r in runs if r.state == RunState.QUEUED]
            if not queued:
                return
            try:
                await self._dispatch(runs, queued)
            except UNANSWERED as exc:
                await self._engine_silent(exc)

    async def _dispatch(self, runs: list[RunRecord], queued: list[RunRecord]) -> None:
        if self._recheck:
            queued = await self._adopt(queued)
        live = [r for r in runs if r.state in LIVE]
        if self._places_gpus:
            for run in queued:  # the engine's own queue places them (Slurm): all go now
                await self._start(run, [])
            return
        plan = self._plan(live)
        for run in queued:
            if not await self._image_ready(run):
                if run.image != self.settings.run_image:
                    await self._image_missing(run)
                else:
                    self._build_in_background(run)
                continue
            place = plan.take(run)
            if place is not None:
                await self._start(run, place.gpus, place.host)

    def _plan(self, live: list[RunRecord]) -> Plan:
        """Where queued runs go this pass: a pool's hosts, or this engine's GPUs and CPU
        slots (runs/placement.py)."""
        hosts = self.runner.capabilities.hosts
        if hosts is not None:
            return hosts.plan(live, self.settings.max_cpu_runs)
        cpu_live = sum(1 for r in live if r.gpus_wanted == 0)
        return OneHost(self.free_gpus(live), cpu_live, self.settings.max_cpu_runs)

    async def _image_ready(self, run: RunRecord) -> bool:
        """Is the run's image there; asked again for a run waiting for the engine, as an
        action of that wait (each attempt in the chain).

        :raises EngineUnavailable: the engine did not answer.
        """
        images = self.runner.capabilities.images
        if images is None:
            return True
        if run.blocked is None:
            ready = await images.ready(run.image)
        else:
            call = self.event_log.tool_call(f"{self.runner.kind}.image_ready", {"image": run.image})
            async with (
                self.event_log.action(self._wait_event(run), "run_retry", target=run.id),
                call,
            ):
                ready = await images.ready(run.image)
            await self.repo.update(run.id, blocked=None)  # it waits for the engine no more
            self._waiting.pop(run.id, None)
        if self.engine.answered():
            log.info("the %s engine answers again", self.engine_name)
        return ready

    def _wait_event(self, run: RunRecord) -> int:
        """The event that says `run` waits for the engine, once an outage; its id."""
        outage, event = self._waiting.get(run.id, (-1, 0))
        if outage != self.engine.outage:
            event = self.event_log.log_event(
                "run",
                run.id,
                summary=f"run {run.id} waits: {run.blocked or 'the engine does not answer'};"
                " it starts when the engine answers",
                caused_by=run.launch_action,
            )
            self._waiting[run.id] = (self.engine.outage, event)
        return event

    async def _engine_silent(self, exc: Exception) -> None:
        """Queued runs wait, each saying why; each says it in its chain once an outage."""
        why = silence(self.engine_name, exc)
        self.engine.failed(why)
        for run in await self.repo.in_states((RunState.QUEUED,)):
            await self.repo.update(run.id, blocked=why)
            self._wait_event(replace(run, blocked=why))

    async def _adopt(self, queued: list[RunRecord]) -> list[RunRecord]:
        """Containers of queued runs (a launch whose answer was lost, a restart since) are
        taken as the runs' own instead of starting a second; the runs left to start.

        :raises EngineUnavailable: the engine did not answer.
        """
        found = {h.run_id: h for h in await self.runner.list_managed()}
        self._recheck = False
        left = []
        for run in queued:
            handle = found.get(run.id)
            if handle is None:
                left.append(run)
                continue
            log.warning("run %s: adopting its container %s", run.id, handle.ref)
            await self.lifecycle.move(
                run,
                RunState.STARTING,
                "adopted",
                summary=f"run {run.id} adopted: its container {handle.ref[:12]} already runs",
                content={"handle": handle.ref},
                runner=handle.runner,
                handle=handle.ref,
                host=handle.ref.split("/", 1)[0] if "/" in handle.ref else run.host,
                started_at=run.started_at or self._now(),
                last_beat_at=self._now(),
                blocked=None,
            )
            if run.events_offset > 0:  # its started event was read before: it runs
                fresh = await self._reload(run)
                await self.lifecycle.move(fresh, RunState.RUNNING, "adopted while running")
            self.launched.set()
        return left

    @property
    def building(self) -> bool:
        return self._building is not None and not self._building.done()

    def _build_in_background(self, run: RunRecord) -> None:
        """Build a missing image once, telling the asking chat how it goes, then dispatch."""
        if self.building:
            return
        self._building = asyncio.create_task(self._build(run), name="image-build")

    async def _build(self, run: RunRecord) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_said = started
        event = self.event_log.log_event(
            "run", run.id, summary=f"building image {run.image}", caused_by=run.launch_action
        )
        await self.notify(
            run.chat_id,
            in_thread(
                run,
                f"Image {run.image} is missing: building it first (a few minutes the first time;"
                f" run {run.id} starts after).",
            ),
            event,
        )

        async def on_line(line: str) -> None:
            nonlocal last_said
            self.build_note = f"building {run.image}: {line[:80]}"
            if line.startswith("==") and loop.time() - last_said > 20:
                last_said = loop.time()
                await self.notify(
                    run.chat_id, in_thread(run, f"Image build: {line.lstrip('= ')}"), event
                )

        try:
            async with self.event_log.action(event, "image_built", target=run.image):
                images = self.runner.capabilities.images
                if images is not None:
                    await images.build(run.image, on_line)
        except Exception as exc:
            self.build_note = None
            for waiting in await self.repo.in_states((RunState.QUEUED,)):
                if waiting.image == run.image:
                    await self.lifecycle.move(
                        waiting,
                        RunState.FAILED,
                        "image build failed",
                        caused_by=event,
                        error=str(exc),
                        ended_at=self._now(),
                    )
            await self.notify(
                run.chat_id,
                in_thread(run, f"Run {run.id} could not start: the image build failed: {exc}"),
                event,
            )
            return
        self.build_note = None
        took = loop.time() - started
        await self.notify(
            run.chat_id, in_thread(run, f"Image {run.image} built in {took:.0f}s."), event
        )
        await self.dispatch()

    async def _image_missing(self, run: RunRecord) -> None:
        """A declared recipe's own image is the admin's to build: say so, start nothing."""
        why = (
            f"image {run.image} is not on the engine ({self.runner.description}); build or load"
            f" it there (docker build -t {run.image} ...) and /run retry {run.id}"
        )
        event = await self.lifecycle.move(
            run,
            RunState.FAILED,
            "image missing",
            summary=f"run {run.id} could not start",
            error=why,
            ended_at=self._now(),
        )
        await self.notify(
            run.chat_id, in_thread(run, f"Run {run.id} could not start: {why}"), event
        )

    async def queue_position(self, run: RunRecord) -> int:
        queued = [r for r in await self.repo.in_states((RunState.QUEUED,)) if r.gpus_wanted > 0]
        return next((i + 1 for i, r in enumerate(queued) if r.id == run.id), 0)

    async def _start(self, run: RunRecord, gpus: list[int], host: str = "") -> None:
        """Write the run dir and launch; a refusal fails the run and tells its chat."""
        run_dir = self.run_dir(run.id)
        resume_from = run.checkpoint if run.started_at is not None else None
        event_id = await self.lifecycle.move(
            run,
            RunState.STARTING,
            summary=f"run {run.id} {'resuming' if resume_from else 'starting'}"
            f" ({run.recipe}, {len(gpus)} GPU)",
            content={"gpus": gpus, "resume_from": resume_from, "host": host or None},
            gpus=gpus,
            blocked=None,
            host=host or run.host,
        )
        if event_id is None:
            return  # stopped meanwhile
        run = await self._reload(run)
        try:
            async with self.event_log.action(event_id, "run_launched", target=run.id) as act:
                url = await self._start_server(run, gpus)
                request = self._launch_request(run, run_dir, gpus, resume_from, url)
                request = replace(request, host=host)
                async with self.event_log.tool_call(
                    f"{self.runner.kind}.launch",
                    {"image": run.image, "gpus": gpus, "memory_mb": run.memory_mb},
                ) as call:
                    handle = await self.runner.launch(request)
                    call.output = {"handle": handle.ref}
                act.content = {"handle": handle.ref, "runner": handle.runner}
        except (RunStartError, OSError) as exc:
            end = await self.lifecycle.move(
                run,
                RunState.FAILED,
                "could not start",
                summary=f"run {run.id} could not start",
                caused_by=act.id,
                content={"error": str(exc)},
                error=str(exc),
                ended_at=self._now(),
            )
            await self.notify(
                run.chat_id, in_thread(run, f"Run {run.id} could not start: {exc}"), end
            )
            return
        except UNANSWERED as exc:
            # Unanswered, not refused: the container may exist. It waits, queued again,
            # and the next dispatch looks for it before launching another.
            self._recheck = True
            await self.lifecycle.move(
                run,
                RunState.QUEUED,
                "the engine did not answer the launch",
                caused_by=act.id,
                content={"error": str(exc)},
                gpus=[],
            )
            raise
        started_at = run.started_at or self._now()
        await self.repo.update(
            run.id,
            runner=handle.runner,
            handle=handle.ref,
            launch_action=act.id,
            started_at=started_at,
            last_beat_at=self._now(),
            stalled=0,
        )
        self.launched.set()

    async def _start_server(self, run: RunRecord, gpus: list[int]) -> str | None:
        """A benchmark's serving container, started on the run's GPUs; its URL.

        :raises RunStartError: no engine to start it on, or the engine refused.
        """
        if run.server is None:
            return None
        if self.servers is None:
            raise RunStartError("a serving container needs a Docker engine; give url= instead")
        args = tuple(str(a) for a in run.server["args"])
        async with self.event_log.tool_call(
            "docker.start_server", {"image": run.server["image"], "args": list(args)}
        ) as call:
            started = await self.servers.start(
                run.id,
                str(run.server["image"]),
                args,
                tuple(gpus),
                shm_size=self.settings.bench_shm_size,
                hf_cache=self.settings.hf_cache,
            )
            call.output = {"container": started.ref, "url": started.url}
        await self.repo.update(
            run.id, server={**run.server, "ref": started.ref, "port": started.port}
        )
        return started.url

    def _launch_request(
        self,
        run: RunRecord,
        run_dir: Path,
        gpus: list[int],
        resume_from: str | None,
        url: str | None = None,
    ) -> LaunchRequest:
        """Write the run dir and say how to launch it.

        :raises RunStartError: a declared recipe's working dir or secret is gone.
        """
        declared = from_json(run.definition) if run.definition is not None else None
        mounts: tuple[Mount, ...] = ()
        extra: dict[str, Any] = {}
        secrets: dict[str, bytes] = {}
        if declared is not None:
            count = run.gpus_wanted if self._places_gpus else len(gpus)
            mounts, extra, secrets = self._declared_parts(declared, run_dir, count)
        if url is not None:  # the job benchmarks the server we just started
            extra["params"] = {**run.params, "url": url}
        prepare_run_dir(run_dir, run, resume_from, extra)
        if secrets:
            write_secrets(run_dir, secrets)
        return LaunchRequest(
            run_id=run.id,
            recipe=run.recipe,
            run_dir=run_dir,
            image=run.image,
            gpus=tuple(gpus),
            gpus_wanted=run.gpus_wanted,
            nproc=run.nproc,
            memory_mb=run.memory_mb,
            cpus=run.cpus,
            pids_limit=self.settings.run_pids_limit,
            # a benchmark reaches its endpoint; a declared recipe may ask for the network
            network=run.kind == "bench" or (declared is not None and declared.network),
            labels={"assistant.recipe": run.recipe},
            mounts=mounts,
            bring_agent=declared is not None and run.image != self.settings.run_image,
        )

    def _declared_parts(
        self, declared: DeclaredRecipe, run_dir: Path, gpus: int
    ) -> tuple[tuple[Mount, ...], dict[str, Any], dict[str, bytes]]:
        """The working-dir mount, what spec.json says of paths, and the secrets' values.

        Secrets go to files under the run dir, readable by the run's user only, which the
        agent reads into the command's environment and deletes before the command starts:
        never in spec.json, a container's environment or a command line.
        """
        mounts: list[Mount] = []
        paths = {"run_dir": self.runner.capabilities.paths.run_dir(run_dir)}
        if declared.workdir is not None:
            # checked again: the folder (or a symlink on its path) may have changed since
            _, problems = check_workdir(
                Path(declared.workdir),
                allowed_roots=self.settings.recipe_roots,
                protected=(self.settings.assistant_home,),
            )
            if problems:
                raise RunStartError(
                    f"recipe {declared.name}: workdir {declared.workdir} {problems[0]}"
                )
            mount = Mount(Path(declared.workdir), WORKDIR_MOUNT, not declared.workdir_writable)
            mounts.append(mount)
            paths["workdir"] = self.runner.capabilities.paths.mount(mount)
        secret_files, values = {}, {}
        for env_name, secret in declared.secrets:
            try:
                values[secret] = (self.settings.secrets_dir / secret).read_bytes()
            except OSError:
                raise RunStartError(
                    f"recipe {declared.name}: secret {secret!r} is missing; put it in"
                    f" {self.settings.secrets_dir / secret} (mode 0600)"
                ) from None
            secret_files[env_name] = f"{paths['run_dir']}/{SECRETS_DIR}/{secret}"
        extra = {"declared": to_json(declared), "gpus": gpus, "paths": paths}
        if secret_files:
            extra["secret_files"] = secret_files
        return tuple(mounts), extra, values


def fresh_server(server: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's server config without the container and port of an earlier attempt."""
    return {**server, "ref": None, "port": None}


def write_secrets(run_dir: Path, secrets: dict[str, bytes]) -> None:
    """Each value in its own new file under the run dir's secrets folder, mode 0400.

    The folder is made afresh (whatever a paused run left under its name is removed, not
    followed), and each file is created with O_EXCL | O_NOFOLLOW in it: a secret is never
    written through a link the run planted.
    """
    shutil.rmtree(run_dir / SECRETS_DIR, ignore_errors=True)  # fd-based: follows no link
    rundir.unlink(run_dir, SECRETS_DIR)  # a link or file under that name
    rundir.make_dir(run_dir, SECRETS_DIR, 0o700)
    with rundir.directory(run_dir, SECRETS_DIR) as folder:
        for name, value in secrets.items():
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o400,
                dir_fd=folder,
            )
            with os.fdopen(fd, "wb") as out:
                out.write(value)


def write_control(run_dir: Path, action: str) -> None:
    """control.json for the agent; whatever the run left under that name is replaced, never
    followed: a link goes by the rename, a folder (which a rename cannot replace) first.

    :raises OSError: the run dir itself is gone or unusable.
    """
    data = _json({"action": action})
    try:
        rundir.write_file(run_dir, protocol.CONTROL, data)
    except IsADirectoryError:
        shutil.rmtree(run_dir / protocol.CONTROL)  # fd-based: follows no link inside
        rundir.write_file(run_dir, protocol.CONTROL, data)


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2).encode()


def prepare_run_dir(
    run_dir: Path, run: RunRecord, resume_from: str | None, extra: dict[str, Any] | None = None
) -> None:
    """spec.json and the folders; a fresh start clears what a failed start may have left.

    On a resume the run dir holds what the run wrote: nothing in it is followed, and the
    host's own files are replaced, not written through.
    """
    if resume_from is None and (run_dir.exists() or run_dir.is_symlink()):
        if run_dir.is_symlink() or not run_dir.is_dir():
            run_dir.unlink()
        else:
            shutil.rmtree(run_dir)  # fd-based on Linux: it follows no link inside
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (protocol.RESULT, protocol.CONTROL):  # from the paused part of the run
        rundir.unlink(run_dir, stale)
    for sub in (protocol.CHECKPOINTS, protocol.ARTIFACTS):
        rundir.make_dir(run_dir, sub, replace=True)
    spec = {
        "run_id": run.id,
        "recipe": run.recipe,
        "params": run.params,
        "nproc": run.nproc,
        "resume_from": resume_from,
        "heartbeat_s": 5,
        **(extra or {}),
    }
    rundir.write_file(run_dir, protocol.SPEC, _json(spec))
