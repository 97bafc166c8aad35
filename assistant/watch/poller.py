"""`Watcher`: adds, follows and ends watches; one background loop that never stops.

Each pass asks every active watch's source how the job is and reads its new output
(bounded per watch: `FOLLOW_BOUND_S`, and the sources' own byte limits), stores every
watch's new offset with what its lines said in one transaction, then records and tells
what changed: a start, an end with its report and plot. A watch whose pass fails is
that watch's problem alone: counted, logged, tried again next pass.

The chain: `/watch ...` is a command event; `watch_added` (A, with the source's call as
T) is under it; every change of the job is an event (source `watch`, its id) caused by
`watch_added`, and the chat message it sends is an action under that event. `/debug
watch <id>` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from assistant.background import cancel
from assistant.clock import Clock
from assistant.config import Settings
from assistant.errors import EngineUnavailable, Refused, StateError
from assistant.jobs.recipes import lower_is_better
from assistant.jobs.text import valid_text
from assistant.observability import EventLog
from assistant.reply import Reply
from assistant.runs.docker_engine import DEFAULT_DOCKER_HOST, DockerEngine
from assistant.runs.report import Notify
from assistant.runs.slurm_cli import SlurmCli
from assistant.watch import report
from assistant.watch.output import Chunk, LineReader, line_text
from assistant.watch.sources import (
    ContainerSource,
    Observation,
    PidSource,
    Resolved,
    Sig,
    Signalled,
    SlurmSource,
    Source,
)
from storage.timestamps import to_iso
from storage.watches import ACTIVE, WatchPass, WatchRecord, WatchRepo

log = logging.getLogger(__name__)

FOLLOW_BOUND_S = 10.0  # one watch's part of a pass, at most
KILL_WAIT_S = 5.0  # how long a SIGKILLed job may take to be seen ended
STOP_CHECK_S = 0.2  # how often a stop looks whether the job has ended
START_TAIL_BYTES = 16 * 1024 * 1024  # a log file longer than this is read from its last part
NUMBERS = ("step", "total", "ts", "type", "elapsed_s")  # progress fields that are not metrics


@dataclass
class Followed:
    """One watch's pass: what to store, and how the job is."""

    passed: WatchPass
    seen: Observation
    ended: bool  # its end is to be settled now (the output is read up to it)
    result: str | None = None  # a `result` report line's status, if one came


@dataclass
class PassStats:
    """The last pass, for /status and the benchmark."""

    watches: int = 0
    seconds: float = 0.0
    failures: int = 0  # watches whose pass failed, since start
    problems: dict[str, str] = field(default_factory=dict)  # watch -> what is wrong, told once


class Watcher:
    """Every watch of this service: its sources, its loop, and the requests on it.

    :param engine: the Docker engine container watches ask; None: one for DOCKER_HOST (or
        the local socket) is made on first use and closed with the watcher.
    """

    def __init__(
        self,
        repo: WatchRepo,
        event_log: EventLog,
        notify: Notify,
        settings: Settings,
        clock: Clock,
        *,
        engine: DockerEngine | None = None,
        slurm: Source | None = None,
    ) -> None:
        self.repo = repo
        self.event_log = event_log
        self.notify = notify
        self.settings = settings
        self.clock = clock
        self._engine = engine
        self._own_engine: DockerEngine | None = None
        self.container = ContainerSource(self.engine)
        self.pid = PidSource(settings.assistant_home)
        self.slurm = slurm or SlurmSource(self.slurm_cli, settings.assistant_home)
        self._slurm_cli: SlurmCli | None = None
        self._readers: dict[str, LineReader] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = PassStats()
        # the active watches as last stored: read again only when one is added or removed
        # or changes state, not on every pass (this service is the only writer)
        self._active: list[WatchRecord] | None = None

    def engine(self) -> DockerEngine:
        if self._engine is not None:
            return self._engine
        if self._own_engine is None:
            self._own_engine = DockerEngine(
                self.settings.docker_host or DEFAULT_DOCKER_HOST, instance="watch"
            )
        return self._own_engine

    def slurm_cli(self) -> SlurmCli:
        """The cluster's client commands (SLURM_CONF in the service's environment).

        :raises StateError: this host has no Slurm client commands.
        """
        if self._slurm_cli is None:
            if shutil.which("squeue") is None:
                raise StateError(
                    "this host has no Slurm client commands (squeue): install slurm-client"
                    " and point SLURM_CONF at the cluster's slurm.conf"
                )
            self._slurm_cli = SlurmCli()
        return self._slurm_cli

    def source(self, kind: str) -> Source:
        if kind == "container":
            return self.container
        if kind == "pid":
            return self.pid
        if kind == "slurm":
            return self.slurm
        raise StateError(f"{kind} watches are not available on this host")

    def folder(self, watch_id: str) -> Path:
        return report.watch_dir(self.settings.assistant_home, watch_id)

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="watch-poller")

    async def aclose(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._own_engine is not None:
            engine, self._own_engine = self._own_engine, None
            await engine.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("watch pass failed")
            await asyncio.sleep(self.settings.watch_interval_s)

    # ---- requests ----------------------------------------------------------------------

    async def add(
        self,
        chat_id: str,
        event_id: int | None,
        kind: str,
        target: str,
        *,
        pattern: str | None = None,
        rules: dict[str, Any] | None = None,
        log_path: str | None = None,
    ) -> tuple[WatchRecord, str | None]:
        """Find the job, and follow it from now on; the watch and a note for the reply.

        :raises NotFoundError: no such job. :raises Refused: watched already, one of our
            runs, a log file that may not be read.
        """
        async with self.event_log.action(event_id, "watch_added", target=f"{kind} {target}") as act:
            async with self.event_log.tool_call(
                f"{kind}.resolve", {"target": target, "log": log_path}
            ) as call:
                found = await self._resolve(kind, target, log_path)
                call.output = {"ref": found.ref, "state": found.state, "log": found.log_path}
            twin = await self.repo.find_active(kind, found.ref)
            if twin is not None:
                raise Refused(f"{kind} {target} is watched already: watch {twin.id}")
            watch = await self.repo.create(
                kind=kind,
                target=target,
                ref=found.ref,
                label=found.label,
                chat_id=chat_id,
                pattern=pattern,
                rules=rules or {},
                log_path=found.log_path,
                state=found.state,
                now=to_iso(self.clock.now()),
                out_offset=self._first_offset(found),
                added_action=act.id,
            )
            report.make_dir(self.settings.assistant_home, watch.id)
            act.content = {"watch": watch.id, "ref": found.ref, "state": found.state}
        self._active = None
        return watch, found.note

    async def _resolve(self, kind: str, target: str, log_path: str | None) -> Resolved:
        if kind == "container":
            return await self.container.resolve(target)
        if kind == "pid":
            return await asyncio.to_thread(self.pid.resolve, int(target), log_path)
        if kind == "slurm" and isinstance(self.slurm, SlurmSource):
            return await self.slurm.resolve(target)
        raise StateError(f"{kind} watches are not available on this host")

    @staticmethod
    def _first_offset(found: Resolved) -> int:
        """A long log is read from its last part: its whole history would take hours."""
        if found.log_path is None:
            return 0
        with contextlib.suppress(OSError):
            size = Path(found.log_path).stat().st_size
            return max(0, size - START_TAIL_BYTES)
        return 0

    async def unwatch(self, watch: WatchRecord, event_id: int | None) -> WatchRecord:
        """:raises StateError: it is over already."""
        async with self.event_log.action(event_id, "watch_removed", target=watch.id) as act:
            moved = await self.repo.move(
                watch.id, "unwatched", sources=ACTIVE, ended_at=to_iso(self.clock.now())
            )
            if not moved:
                raise StateError(f"watch {watch.id} is {watch.state} already")
            act.content = {"watch": watch.id, "was": watch.state}
        self._forget(watch.id)
        return await self.repo.get(watch.id) or watch

    async def stop(self, watch: WatchRecord, event_id: int | None) -> str:
        """Stop the watched job (the caller checked the admin's setting); what happened.

        A container or process gets SIGTERM and `watch_stop_grace_s` to end; one still
        there then (a pid 1 without --init ignores SIGTERM, a process may trap it) gets
        SIGKILL. The answer says which, from what the source saw, never what was only
        hoped: "stopped with SIGTERM", "did not stop on SIGTERM within 10 s; killed with
        SIGKILL", or that SIGKILL was sent and its end is not seen yet. A Slurm job gets
        `scancel`, which escalates by itself (Slurm's KillWait).

        :raises StateError: the watch is over. :raises Refused: the job cannot be signalled.
        """
        if watch.state not in ACTIVE:
            raise StateError(f"watch {watch.id} is {watch.state}: nothing to stop")
        source = self.source(watch.kind)
        async with self.event_log.action(event_id, "watch_stop", target=watch.id) as act:
            if isinstance(source, (ContainerSource, PidSource)):
                said = await self._escalate(watch, source)
            else:
                async with self.event_log.tool_call(
                    f"{watch.kind}.stop", {"ref": watch.ref}
                ) as call:
                    said = await source.stop(watch)
                    call.output = said
            act.content = said
        return said

    async def _escalate(self, watch: WatchRecord, source: Signalled) -> str:
        grace = self.settings.watch_stop_grace_s
        name = source.named(watch)
        await self._signal(watch, source, "SIGTERM")
        if await self._ends_within(watch, source, grace):
            return f"{name} stopped with SIGTERM"
        if not await self._signal(watch, source, "SIGKILL"):
            return f"{name} stopped with SIGTERM (it ended just as its {grace:g} s ran out)"
        if await self._ends_within(watch, source, KILL_WAIT_S):
            return f"{name} did not stop on SIGTERM within {grace:g} s; killed with SIGKILL"
        return (
            f"{name} did not stop on SIGTERM within {grace:g} s; SIGKILL sent, but it is not"
            f" seen ended {KILL_WAIT_S:g} s later"
        )

    async def _signal(self, watch: WatchRecord, source: Signalled, name: Sig) -> bool:
        """One signal, as a tool call of the stop; whether it reached the job."""
        kind = "stop" if name == "SIGTERM" else "kill"
        async with self.event_log.tool_call(
            f"{watch.kind}.{kind}", {"ref": watch.ref, "signal": name}
        ) as call:
            sent = await source.signal(watch, name)
            call.output = "sent" if sent else "it had ended"
        return sent

    async def _ends_within(self, watch: WatchRecord, source: Signalled, seconds: float) -> bool:
        """Whether the job is seen ended within `seconds` (asked every STOP_CHECK_S; an
        engine that does not answer meanwhile is not an end)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                if (await source.observe(watch)).state == "ended":
                    return True
            except (EngineUnavailable, TimeoutError) as exc:
                log.warning("watch %s: while waiting for its end: %s", watch.id, exc)
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(STOP_CHECK_S, left))

    def tail(self, watch: WatchRecord, n: int = report.TAIL_LINES) -> list[str]:
        return report.output_tail(self.folder(watch.id), n)

    def reload(self) -> None:
        """Read the active watches again on the next pass (after a write not made here)."""
        self._active = None

    def _forget(self, watch_id: str) -> None:
        self._active = None
        self._readers.pop(watch_id, None)
        self.container.dropping.pop(watch_id, None)
        self.pid.outputs.pop(watch_id, None)
        if isinstance(self.slurm, SlurmSource):
            self.slurm.outputs.pop(watch_id, None)
        self.stats.problems.pop(watch_id, None)

    # ---- one pass ----------------------------------------------------------------------

    async def poll(self) -> None:
        """One pass over every active watch; one watch's failure is its own."""
        began = time.perf_counter()
        if self._active is None:
            self._active = await self.repo.active()
        watches = self._active
        followed: list[tuple[WatchRecord, Followed]] = []
        for watch in watches:
            try:
                if watch.kind == "pid":  # /proc and a local file: nothing to wait for
                    followed.append((watch, await self.follow(watch)))
                    continue
                async with asyncio.timeout(FOLLOW_BOUND_S):
                    followed.append((watch, await self.follow(watch)))
            except (EngineUnavailable, TimeoutError) as exc:
                await self._problem(watch, f"its source does not answer: {exc}")
            except Exception as exc:
                self.stats.failures += 1
                log.exception("following watch %s failed", watch.id)
                await self._problem(watch, f"{type(exc).__name__}: {valid_text(str(exc))[:200]}")
        moved = [(w, f) for w, f in followed if _changed(w, f)]
        await self.repo.record((w, f.passed) for w, f in moved)
        known = {w.id: _after(w, f.passed) for w, f in moved}
        if self._active is watches:  # what was stored, kept as the next pass's view
            self._active = [known.get(w.id, w) for w in watches]
        for watch, f in followed:
            try:
                await self._changes(watch, f)
            except Exception:
                self.stats.failures += 1
                log.exception("settling watch %s failed", watch.id)
        self.stats.watches = len(watches)
        self.stats.seconds = time.perf_counter() - began

    async def follow(self, watch: WatchRecord) -> Followed:
        """How the job is, and its new output read into lines and events (not stored yet)."""
        source = self.source(watch.kind)
        seen = await source.observe(watch)
        chunk = await source.read(watch, final=seen.state == "ended")
        passed, result = self._absorb(watch, chunk)
        if chunk.problem is not None:
            await self._problem(watch, chunk.problem)
        elif self.stats.problems.pop(watch.id, None) is not None:
            log.info("watch %s: its output reads again", watch.id)
        # an end is settled once its output is read up to it (a backlog takes passes)
        return Followed(passed, seen, seen.state == "ended" and not chunk.more, result)

    def _absorb(self, watch: WatchRecord, chunk: Chunk) -> tuple[WatchPass, str | None]:
        passed = WatchPass(out_offset=chunk.offset, lines=len(chunk.lines), skipped=chunk.skipped)
        if not chunk.lines:
            return passed, None
        reader = self._readers.get(watch.id)
        if reader is None:
            reader = self._readers[watch.id] = LineReader(watch.rules)
            reader.step = watch.step
        key = str(watch.rules.get("key_metric") or "loss")
        mode = str(watch.rules.get("key_metric_mode") or "min")
        texts: list[str] = []
        plotted: list[dict[str, Any]] = []
        result: str | None = None
        for line in chunk.lines:
            text = line_text(line)
            texts.append(text)
            for event in reader.events(text):
                kind = event.get("type")
                step = event.get("step")
                if isinstance(step, int) and kind in ("progress", "metric"):
                    passed.step = step
                if kind == "progress":
                    if isinstance(event.get("total"), int):
                        passed.total = event["total"]
                    for name, value in event.items():
                        if name not in NUMBERS and _is_number(value):
                            passed.metrics[name] = value
                    plotted.append(event)
                elif kind == "metric":
                    name, value = str(event["name"]), event["value"]
                    passed.metrics[name] = value
                    best = {**watch.best, **passed.best}.get(name)
                    lower = lower_is_better(name, key, mode)
                    if best is None or (value < best if lower else value > best):
                        passed.best[name] = value
                    plotted.append(event)
                elif kind == "result" and isinstance(event.get("status"), str):
                    result = event["status"]
        if texts or plotted:
            folder = self.folder(watch.id)
            if not folder.is_dir():
                report.make_dir(self.settings.assistant_home, watch.id)
            if texts:
                report.append_output(folder, texts)
            if plotted:
                report.append_events(folder, plotted)
        return passed, result

    async def _problem(self, watch: WatchRecord, problem: str) -> None:
        """Something wrong following a watch: an event in its chain once, not each pass."""
        if self.stats.problems.get(watch.id) == problem:
            return
        self.stats.problems[watch.id] = problem
        log.warning("watch %s: %s", watch.id, problem)
        self.event_log.log_event(
            "watch",
            watch.id,
            summary=f"watch {watch.id}: {problem[:200]}",
            content={"problem": problem},
            caused_by=watch.added_action,
        )

    async def _changes(self, watch: WatchRecord, f: Followed) -> None:
        if watch.state == f.seen.state and not f.ended:
            return
        self._active = None  # a state moves: the next pass reads the watches again
        now = to_iso(self.clock.now())
        seen = f.seen
        if (
            watch.state == "pending"
            and seen.state == "running"
            and await self.repo.move(watch.id, "running", sources=("pending",), started_at=now)
        ):
            event = self.event_log.log_event(
                "watch",
                watch.id,
                summary=f"watch {watch.id}: {watch.kind} {watch.target} started",
                content={"state": "running"},
                caused_by=watch.added_action,
            )
            await self.notify(
                watch.chat_id, f"Watch {watch.id}: {report.what(watch)} started.", event
            )
        if not f.ended:
            return
        how = seen.how or "ended"
        ok = seen.ok
        if ok is None and f.result is not None:  # its last report line says how it went
            how += f"; its last report line says {f.result}"
            ok = f.result == "succeeded"
        moved = await self.repo.move(
            watch.id, "ended", sources=ACTIVE, status=how, exit_code=seen.exit_code, ended_at=now
        )
        if not moved:
            return  # unwatched meanwhile
        self._forget(watch.id)
        event = self.event_log.log_event(
            "watch",
            watch.id,
            summary=f"watch {watch.id}: {watch.kind} {watch.target} ended: {how}"[:300],
            content={"state": "ended", "how": how, "exit_code": seen.exit_code},
            caused_by=watch.added_action,
        )
        ended = await self.repo.get(watch.id) or watch
        await self._report(ended, ok, event)

    async def _report(self, watch: WatchRecord, ok: bool | None, event: int) -> None:
        folder = self.folder(watch.id)
        text = report.end_text(watch, ok, self.clock.now(), folder)
        images: tuple[Path, ...] = ()
        try:
            picture = await asyncio.to_thread(report.plot, watch, folder)
            if picture is not None:
                images = (picture,)
        except Exception:
            log.exception("could not plot watch %s", watch.id)
        await self.notify(watch.chat_id, Reply(text, images), event)


def _changed(watch: WatchRecord, f: Followed) -> bool:
    p = f.passed
    return bool(p.out_offset != watch.out_offset or p.lines or p.skipped)


def _after(watch: WatchRecord, p: WatchPass) -> WatchRecord:
    """The watch as `WatchRepo.record` leaves it after storing `p`."""
    return replace(
        watch,
        out_offset=p.out_offset,
        step=p.step if p.step is not None else watch.step,
        total=p.total if p.total is not None else watch.total,
        metrics={**watch.metrics, **p.metrics},
        best={**watch.best, **p.best},
        lines=watch.lines + p.lines,
        skipped=watch.skipped + p.skipped,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
