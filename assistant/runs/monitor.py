"""`RunMonitor`: follows every live run through its events.jsonl and its runner.

Each pass reads the new complete lines from the stored offset, updates the run (offset and
what the lines said, in one transaction), records notable events in the chain, watches
heartbeats for a stall, and, once the runner says the run is over, settles its final
state and sends the report. At start it reconciles with what is still running.

A pass costs what changed, not what exists: the live runs are kept in memory between
passes and only the rows written since the last pass (their `rev`, raised by a trigger
on every write, whoever makes it) are read again; a run's events.jsonl is read only when
one lstat says it changed (size, mtime, inode) since the read that reached its end. A
file that shrank below the offset or is another file (a new inode) is read from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from assistant.background import cancel
from assistant.clock import Clock
from assistant.config import Settings
from assistant.durations import format_duration
from assistant.errors import RunStartError
from assistant.jobs import protocol
from assistant.jobs.declared import from_json
from assistant.jobs.recipes import RECIPES, lower_is_better
from assistant.jobs.text import valid_text
from assistant.observability import EventLog
from assistant.reply import Reply, run_thread
from assistant.runs import rundir
from assistant.runs.bench_outcome import bench_report, engine_metrics, reads_server_metrics
from assistant.runs.engine_watch import UNANSWERED, EngineWatch, silence
from assistant.runs.events import MAX_READ, EventBatch, read_new
from assistant.runs.lifecycle import LIVE, Lifecycle, Move, RunState, settle
from assistant.runs.manager import SECRETS_DIR
from assistant.runs.offers import in_thread, resumable, run_actions
from assistant.runs.report import (
    Notify,
    ShowProgress,
    eta,
    plot,
    rate_text,
    read_events,
    summary_text,
)
from assistant.runs.runner import ExitInfo, RunHandle, Runner, RunnerState
from assistant.runs.signals import Signals, pending
from storage.runs import Progress, RunRecord, RunRepo
from storage.timestamps import from_iso, to_iso

log = logging.getLogger(__name__)

ENGINE_READ_S = 5.0  # how often a benchmark server's statistics are read from its log
NOTABLE = ("started", "checkpoint", "error", "result")
SKIP_AFTER = 3  # passes failing at the same offset before its lines are skipped


@dataclass
class Trouble:
    """What went wrong following one run: counted, told to its chat once, and shown at its end."""

    skipped: int = 0  # event lines left out (unreadable, wrong shape, unsafe checkpoint)
    first: str | None = None  # the first reason, for the report
    told: bool = False  # its chat has been told once
    failures: int = 0  # passes in a row that failed for this run
    failed_at: int | None = None  # the offset those passes started from
    problem: str | None = None  # events.jsonl itself unreadable (told once, not each pass)


@dataclass(frozen=True)
class Seen:
    """A run's events.jsonl as the last read found it, to skip a read that finds nothing."""

    mark: tuple[int, int, int, int]  # (device, inode, size, mtime ns), lstat before the read
    offset: int  # where that read left the offset
    more: bool  # that read stopped at its bound before the end: the next one goes on


@dataclass
class Absorbed:
    """One run's new lines taken in: stored with the other runs' in one transaction, then
    settled (progress shown, skipped lines told, its end checked)."""

    before: RunRecord  # as the pass found it
    run: RunRecord  # as stored after the pass's write
    batch: EventBatch
    progress: Progress
    live: Live
    move: Move | None
    write: bool  # something to store: new events, a server's figures, a moved offset
    result: dict[str, Any] | None
    error: dict[str, Any] | None


@dataclass
class Live:
    """Throughput of a live run, for /status (kept in memory, rebuilt after a restart).

    Its rate is measured on the monitor's clock, between observations at least SPAN_S
    apart: events of one pass arrive together whatever steps they carry (a backlog after
    a restart, a burst of a benchmark's requests), so they make one observation. A run's
    first move says nothing of its speed (warm-up, compiling, a resume's jump to its
    checkpoint's step): the rate counts from the observation after it. A step going back
    (a new attempt) starts over, and a rate no new step has confirmed for a while is not
    given at all: no number is better than a wild one.
    """

    # not fields (no annotation): the measuring rules
    SAME_PASS_S = 0.25  # notes closer than this to the first of a pass belong to that pass
    SPAN_S = 10.0  # the least wall time a rate is measured over
    WINDOW_S = 120.0  # a training run's rate follows its latest this-many seconds
    STALE_S = 60.0  # no new step for this long (and 3 usual gaps): no rate, no ETA
    MAX_SEEN = 512  # observations kept for a benchmark (its rate spans all its profiles)

    seen: tuple[tuple[float, int], ...] = ()  # (monitor clock, step), one per pass
    moved: bool = False  # the step has moved since the first observation
    pass_at: float | None = None  # when the pass of the latest observation began
    total: int | None = None  # the total its progress events state
    bench: bool = False  # a benchmark: its step is requests done over all its profiles
    tokens_per_s: float | None = None
    mfu: float | None = None
    progress_message: str | None = None  # the chat message edited with progress
    progress_shown_at: float = 0.0
    engine_read_at: float | None = None  # a benchmark server's log, read up to (unix s)
    profile: str | None = None  # the benchmark profile running now
    profile_done: int = 0
    profile_total: int = 0

    def note(self, step: int, event: dict[str, Any], now: float | None = None) -> None:
        """A progress event, seen by the monitor at `now` (its clock; time.monotonic())."""
        self.bench = self.bench or event.get("profile") is not None
        self._observe(time.monotonic() if now is None else now, step)
        total = event.get("total")
        if isinstance(total, int) and total > 0:
            self.total = total
        if event.get("tokens_per_s") is not None:
            self.tokens_per_s = float(event["tokens_per_s"])
        if event.get("mfu") is not None:
            self.mfu = float(event["mfu"])
        if event.get("profile") is not None:
            self.profile = str(event["profile"])
            self.profile_done = int(event.get("profile_done") or 0)
            self.profile_total = int(event.get("profile_total") or 0)

    def _observe(self, now: float, step: int) -> None:
        if self.seen and step < self.seen[-1][1]:
            self.seen, self.moved = (), False  # a new attempt: the old pace is not its own
        if self.seen and self.pass_at is not None and now - self.pass_at < self.SAME_PASS_S:
            self.seen = (*self.seen[:-1], (now, step))  # the pass's latest step stands for it
        else:
            self.pass_at = now
            self.seen = (*self.seen, (now, step))
        if not self.moved and step != self.seen[0][1]:
            self.moved, self.seen = True, ((now, step),)  # the first move is not counted
        if self.bench:
            if len(self.seen) > self.MAX_SEEN:
                self.seen = (self.seen[0], *self.seen[2:])
            return
        while len(self.seen) > 2 and self.seen[1][0] <= now - self.WINDOW_S:
            self.seen = self.seen[1:]

    @property
    def step(self) -> int | None:
        """The latest step its progress events said (a benchmark: requests done)."""
        return self.seen[-1][1] if self.seen else None

    @property
    def unit(self) -> str:
        return "requests" if self.bench else "steps"

    def rate(self, now: float | None = None) -> float | None:
        """Steps (a benchmark: requests) per second; None while there is no sound figure."""
        if not self.moved or len(self.seen) < 2:
            return None
        (t0, s0), (t1, s1) = self.seen[0], self.seen[-1]
        if (
            t1 - t0 < self.SPAN_S
            or s1 <= s0
            or self._stale(time.monotonic() if now is None else now)
        ):
            return None
        return (s1 - s0) / (t1 - t0)

    def _stale(self, now: float) -> bool:
        """No new step for longer than STALE_S and three of its usual gaps between steps."""
        changes = len({s for _, s in self.seen}) - 1  # steps only rise within `seen`
        changed_at = next(t for t, s in self.seen if s == self.seen[-1][1])
        gap = (self.seen[-1][0] - self.seen[0][0]) / max(1, changes)
        return now - changed_at > max(self.STALE_S, 3 * gap)

    @property
    def steps_per_s(self) -> float | None:
        return self.rate()

    def counts(self, run: RunRecord) -> tuple[int, int | None]:
        """Steps done and the total, as the rate counts them.

        A benchmark's progress events say requests done and requested over all its
        profiles; its run's stored step also follows its metric events, which carry only
        the requests of the profiles already finished.
        """
        if self.step is not None:
            return self.step, run.total or self.total
        return run.step, run.total


class RunMonitor:
    """Follows every live run; built from what it uses, not from the manager.

    :param wake: set by whoever launched a run, so its first lines are read at once.
    :param dispatch: starts the queued runs that can start (after a run ends and frees
        its GPUs, and while launches wait for the engine).
    :param engine: whether the engine answers, shared with the manager; its backoff
        decides when a pass asks the engine again after it did not answer.
    :param signals: delivers stops and pauses that wait for the engine, and kills a run
        that outlives its grace period.
    """

    def __init__(
        self,
        repo: RunRepo,
        runner: Runner,
        lifecycle: Lifecycle,
        event_log: EventLog,
        notify: Notify,
        settings: Settings,
        clock: Clock,
        *,
        dispatch: Callable[[], Awaitable[None]],
        wake: asyncio.Event,
        engine: EngineWatch,
        signals: Signals,
        show_progress: ShowProgress | None = None,
    ) -> None:
        self.repo = repo
        self.runner = runner
        self.lifecycle = lifecycle
        self.event_log = event_log
        self.notify = notify
        self.settings = settings
        self.clock = clock
        self.dispatch = dispatch
        self.show_progress = show_progress
        self.servers = runner.capabilities.servers
        self.live: dict[str, Live] = {}
        # why the engine holds a run in its own queue (Slurm's reason), by run; for /status
        self.waiting: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = wake
        self.engine = engine
        self.engine_name = {"docker": "Docker", "slurm": "Slurm"}.get(runner.kind, runner.kind)
        self.signals = signals
        # run -> (host, outage) its chain was told of; (chat, host) -> the outage it was told
        # of ("" is the one engine; a pool host's outages are its own)
        self._told: dict[str, tuple[str, int]] = {}
        self._told_chats: dict[tuple[str, str], int] = {}
        self.events_absorbed = 0
        self.trouble: dict[str, Trouble] = {}
        self.lines_skipped = 0  # over all runs, since start (for /status and /debug)
        self.pass_failures = 0  # runs whose pass failed, since start
        # the live and queued runs as last stored, by id (None: read them all on the next
        # pass), and the highest `rev` read: rows written since are read again
        self._runs: dict[str, RunRecord] | None = None
        self._rev = 0
        self._seen: dict[str, Seen] = {}  # run -> its events.jsonl at the last read
        self._paths: dict[str, str] = {}  # run -> its events.jsonl's path

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.reconcile()
        self._task = asyncio.create_task(self._loop(), name="run-monitor")

    async def aclose(self) -> None:
        await cancel(self._task)
        self._task = None

    async def reconcile(self) -> None:
        """After a restart: re-attach what still runs; the loop settles what ended meanwhile.

        A run left 'starting' without a handle died during launch: it is lost. Containers
        of ours that no live run claims are stopped (nothing would ever watch them); one
        of a queued run is its launch whose answer was lost, which dispatch adopts. An
        engine that does not answer leaves all that to the passes after it answers.
        """
        for run in await self.repo.in_states(LIVE):
            if run.handle is None:
                await self._finish(
                    run, RunState.LOST, "the service stopped while launching it", None
                )
        claimed = {r.id for r in await self.repo.in_states((*LIVE, RunState.QUEUED))}
        try:
            for handle in await self.runner.list_managed():
                if handle.run_id in claimed:
                    log.info("re-attached run %s (%s)", handle.run_id, handle.ref)
                    continue
                log.warning("stopping run %s: it runs but no live run claims it", handle.run_id)
                await self.runner.kill(handle)
                await self.runner.remove(handle)
            if self.servers is not None:
                for ref, run_id in (await self.servers.running()).items():
                    if run_id not in claimed:
                        log.warning("removing the server of run %s: the run is over", run_id)
                        await self.servers.remove(ref)
        except UNANSWERED as exc:
            self.engine.failed(silence(self.engine_name, exc))
            log.warning("reconciling runs waits for the engine: %s", exc)
        await self.dispatch()

    async def _loop(self) -> None:
        interval = self.settings.monitor_interval_s
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("run monitor pass failed")
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that lands as the event fires, and aclose() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

    def run_dir(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id

    # ---- one pass ----------------------------------------------------------------------

    async def poll(self) -> None:
        """One pass over every live run; one run's failure is that run's alone.

        Requests waiting for the engine (a stop, a launch) are tried again first, as the
        engine's backoff allows.
        """
        runs = await self._live()
        if any(r.wanted for r in runs):
            await self.signals.tend(runs)
            runs = await self._live()
        if self.engine.due() and any(r.blocked for r in self._queued()):
            await self.dispatch()
        absorbed: list[Absorbed] = []
        for run in runs:
            try:
                absorbed.append(await self._absorb(run))
            except Exception as exc:
                await self._follow_failed(run, exc)
        unstored = await self._store(absorbed)
        for done in absorbed:
            run = done.before
            try:
                if run.id in unstored:
                    raise unstored[run.id]
                await self._settle(done)
            except Exception as exc:
                await self._follow_failed(run, exc)
            else:
                trouble = self.trouble.get(run.id)
                if trouble is not None:
                    trouble.failures, trouble.failed_at = 0, None
        if self.signals.engines.any_down():
            await self._say_outage()

    async def _live(self) -> list[RunRecord]:
        """The live runs as stored now, from memory and the rows written since the last look.

        The database stays the truth: a run launched, stopped or changed by any path (a
        command, the scheduler, another process) raises its row's `rev`, and is read again.
        """
        runs = self._runs
        if runs is None:
            self._rev = await self.repo.max_rev()  # first: a write after it is seen later
            found = await self.repo.in_states((*LIVE, RunState.QUEUED))
            runs = self._runs = {r.id: r for r in found}
        else:
            changes = await self.repo.changes(self._rev)
            stale = []
            for run_id, rev, state in changes:
                self._rev = max(self._rev, rev)
                if state not in (*LIVE, RunState.QUEUED):
                    self._drop(run_id)
                elif run_id not in runs or runs[run_id].rev != rev:
                    stale.append(run_id)
            for run in await self.repo.some(stale) if stale else []:
                self._keep(run)
        live = [r for r in runs.values() if r.state in LIVE]
        live.sort(key=lambda r: (r.created_at, r.id))
        return live

    def _queued(self) -> list[RunRecord]:
        return [r for r in (self._runs or {}).values() if r.state == RunState.QUEUED]

    def _keep(self, run: RunRecord) -> None:
        """A run as just read from the database (newer than what memory held, if anything)."""
        if self._runs is None:
            return
        held = self._runs.get(run.id)
        if held is not None and held.rev > run.rev:
            return
        if run.state in (*LIVE, RunState.QUEUED):
            self._runs[run.id] = run
        else:
            self._drop(run.id)

    def _drop(self, run_id: str) -> None:
        if self._runs is not None:
            self._runs.pop(run_id, None)
        self._seen.pop(run_id, None)
        self._paths.pop(run_id, None)

    def health_note(self) -> str | None:
        """What /status and /debug report say of runs' unreadable output; None: nothing."""
        if not (self.lines_skipped or self.pass_failures):
            return None
        return (
            f"Run monitor: {self.lines_skipped:,} event line(s) skipped,"
            f" {self.pass_failures:,} failed pass(es) since start; /debug run <id> shows each"
        )

    async def _follow_failed(self, run: RunRecord, exc: Exception) -> None:
        """Log it, tell the run's chat once, and past SKIP_AFTER tries skip what it read.

        Without the skip, lines that make every pass fail would hold the run in place for
        good, and again after a restart (the offset is stored only by a pass that ends).
        """
        self.pass_failures += 1
        log.exception("following run %s failed", run.id)
        trouble = self.trouble.setdefault(run.id, Trouble())
        if trouble.failed_at != run.events_offset:
            trouble.failures, trouble.failed_at = 0, run.events_offset
        trouble.failures += 1
        why = f"{type(exc).__name__}: {valid_text(str(exc))[:200]}"
        if trouble.failures < SKIP_AFTER:
            return
        with contextlib.suppress(Exception):
            batch = read_new(self.run_dir(run.id), run.events_offset)
            if batch.offset != run.events_offset:
                await self.repo.update(run.id, events_offset=batch.offset)
                count = len(batch.events) + len(batch.skipped)
                await self._skipped(run, [f"{count} line(s) made following it fail ({why})"])
                trouble.failures, trouble.failed_at = 0, None

    async def _skipped(self, run: RunRecord, reasons: list[str]) -> None:
        """Lines of a run left out: logged, counted, in the event chain; its chat told once."""
        trouble = self.trouble.setdefault(run.id, Trouble())
        trouble.skipped += len(reasons)
        self.lines_skipped += len(reasons)
        trouble.first = trouble.first or reasons[0]
        for reason in reasons[:5]:
            log.warning("run %s: skipped in %s: %s", run.id, protocol.EVENTS, reason)
        event = self.event_log.log_event(
            "run",
            run.id,
            summary=f"run {run.id}: {len(reasons)} event line(s) skipped: {reasons[0][:150]}",
            content={"skipped": reasons[:20]},
            caused_by=run.launch_action,
        )
        if not trouble.told:
            trouble.told = True
            await self.notify(
                run.chat_id,
                in_thread(
                    run,
                    f"Run {run.id} ({run.recipe}): a line of its {protocol.EVENTS} was skipped"
                    f" ({reasons[0][:200]}). The run goes on; further skipped lines are counted"
                    " in its report.",
                ),
                event,
            )

    def _read_events(self, run: RunRecord) -> EventBatch:
        """The new lines of a run's events.jsonl; none, without a read, if it did not change.

        One lstat decides (it never follows a link; the read itself goes through rundir,
        which refuses links and FIFOs as before). A file smaller than the offset, or
        another file than the one read last (a new inode), is read from its start.
        """
        offset = run.events_offset
        path = self._paths.get(run.id)
        if path is None:  # made once: a Path join costs more than the lstat
            path = self._paths[run.id] = os.path.join(self.run_dir(run.id), protocol.EVENTS)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return EventBatch([], offset)
        except OSError:
            return read_new(self.run_dir(run.id), offset)  # says why it cannot be read
        if not stat.S_ISREG(st.st_mode):
            return read_new(self.run_dir(run.id), offset)  # refused there, with the reason
        mark = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._seen.get(run.id)
        if seen is not None and seen.mark == mark and seen.offset == offset and not seen.more:
            return EventBatch([], offset)
        if st.st_size < offset or (seen is not None and seen.mark[:2] != mark[:2]):
            log.info(
                "run %s: %s was truncated or replaced; read from its start", run.id, protocol.EVENTS
            )
            offset = 0
        batch = read_new(self.run_dir(run.id), offset)
        self._seen[run.id] = Seen(mark, batch.offset, offset + MAX_READ < st.st_size)
        return batch

    async def follow(self, run: RunRecord) -> None:
        """One run's part of a pass: its new lines read, stored, and what they call for."""
        done = await self._absorb(run)
        unstored = await self._store([done])
        if run.id in unstored:
            raise unstored[run.id]
        await self._settle(done)

    async def _absorb(self, run: RunRecord) -> Absorbed:
        """A run's new lines, taken in: what to store, and what to do once it is stored."""
        batch = self._read_events(run)
        events = batch.events
        progress = Progress(offset=batch.offset)
        live = self.live.get(run.id)
        if live is None:
            live = self.live[run.id] = Live()
        now = to_iso(self.clock.now()) if events else ""
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        move: Move | None = None  # starting -> running, at its started event
        key: tuple[str, str] | None = None  # the run's key metric, looked up once a pass
        for event in events:
            kind = event.get("type")
            self.events_absorbed += 1
            if kind == "checkpoint":
                problem = self._checkpoint_problem(run, event.get("path"))
                if problem is not None:
                    batch.skipped.append(f"checkpoint {event.get('path')!r} ignored: {problem}")
                    continue
            step = event.get("step")
            if isinstance(step, int):
                progress.step = step
            if kind in ("progress", "started", "checkpoint", "metric"):
                # Signs of work. A heartbeat only says the agent lives: a hung collective
                # keeps it beating while the steps stop, and that is the stall to catch.
                progress.beat_at = now
            if kind == "started":
                progress.total = event.get("total") or progress.total
                self.live[run.id] = live = Live()
                if run.state in (RunState.STARTING, RunState.PREEMPTED) and move is None:
                    move = self.lifecycle.announce(
                        run,
                        RunState.RUNNING,
                        "started",
                        summary=f"run {run.id} {_describe(event)}",
                        content=event,
                    )
                    continue
            elif kind == "progress":
                if isinstance(step, int):
                    live.note(step, event)
                if event.get("total"):
                    progress.total = int(event["total"])
                if event.get("loss") is not None:
                    progress.metrics["loss"] = event["loss"]
            elif kind == "metric":
                name, value = str(event.get("name")), event.get("value")
                progress.metrics[name] = value
                # a benchmark's numbers belong to their profile: no "best" across them
                if run.kind != "bench":
                    key = key or key_metric(run)
                    if _better(name, value, {**run.best, **progress.best}, key):
                        progress.best[name] = value
            elif kind == "checkpoint":
                progress.checkpoint = str(event.get("path"))
            elif kind == "result":
                result = event
            elif kind == "error":
                error = event
            if kind in NOTABLE:
                self.event_log.log_event(
                    "run",
                    run.id,
                    summary=f"run {run.id} {_describe(event)}",
                    content=event,
                    caused_by=run.launch_action,
                )
        engine = await self._engine_stats(run, live)
        if engine:
            progress.metrics.update(engine)
        write = bool(events or engine or progress.offset != run.events_offset)
        return Absorbed(run, run, batch, progress, live, move, write, result, error)

    async def _store(self, passes: list[Absorbed]) -> dict[str, Exception]:
        """What the runs' new lines said, with their offsets, in one transaction.

        One commit a pass, not one a run. Should it fail, each run is stored on its own, so
        one run's bad write is that run's failure alone (returned, by run).
        """
        todo = [p for p in passes if p.write]
        if not todo:
            return {}
        failed: dict[str, Exception] = {}
        try:
            await self.lifecycle.record_many([(p.run, p.progress, p.move) for p in todo])
        except Exception:
            log.warning("storing a pass of %d runs failed; storing each alone", len(todo))
            for p in todo:
                try:
                    await self.lifecycle.record(p.run, p.progress, p.move)
                except Exception as exc:
                    failed[p.run.id] = exc
        stored = [p for p in todo if p.run.id not in failed]
        fresh = {r.id: r for r in await self.repo.some([p.run.id for p in stored])}
        for p in stored:
            p.run = fresh.get(p.run.id, p.run)
            self._keep(p.run)
        return failed

    async def _settle(self, done: Absorbed) -> None:
        """After the store: the progress message, skipped lines told, and the end checked."""
        run, batch, live = done.run, done.batch, done.live
        if done.write:
            await self._show_progress(run, live)
        # told after the offset is stored: a failing chat cannot make them count twice
        if batch.skipped:
            await self._skipped(run, batch.skipped)
        trouble = self.trouble.get(run.id)
        if batch.problem is not None and (trouble is None or trouble.problem != batch.problem):
            self.trouble.setdefault(run.id, Trouble()).problem = batch.problem
            await self._skipped(run, [batch.problem])
        if batch.events and done.result is None and done.error is None:
            return  # it just wrote: alive, and not stalled; the engine need not be asked
        await self._check_end(run, done.result, done.error)

    def _checkpoint_problem(self, run: RunRecord, path: object) -> str | None:
        """Why a checkpoint a run names is not taken: a symlink, outside, not a file."""
        root = self.run_dir(run.id)
        if run.definition is not None:
            declared = from_json(run.definition)
            resume = declared.resume
            if resume is not None and resume.location == "workdir" and declared.workdir:
                root = Path(declared.workdir)
        return rundir.checkpoint_problem(root, path)

    async def _engine_stats(self, run: RunRecord, live: Live) -> dict[str, float]:
        """A benchmark server's own statistics from its log, every ENGINE_READ_S.

        Only while the job has not read the server's /metrics: those figures come as the
        job's own metric events, and the log would overwrite them with coarser ones.
        """
        servers, ref = self.servers, (run.server or {}).get("ref")
        now = time.time()
        if servers is None or not ref or run.state != RunState.RUNNING or reads_server_metrics(run):
            return {}
        if live.engine_read_at is not None and now - live.engine_read_at < ENGINE_READ_S:
            return {}
        since, live.engine_read_at = live.engine_read_at, now
        try:
            text = await servers.logs(str(ref), since=since, tail=None if since else 200)
        except RunStartError:
            return {}
        except UNANSWERED:
            return {}
        return engine_metrics(text.splitlines())

    async def _show_progress(self, run: RunRecord, live: Live) -> None:
        """One message per run, edited in place as it goes (never a stream of new ones)."""
        every = self.settings.progress_interval_s
        if self.show_progress is None or every <= 0 or run.state != RunState.RUNNING:
            return
        clock = time.monotonic()
        if live.progress_message is not None and clock - live.progress_shown_at < every:
            return
        live.progress_shown_at = clock
        live.progress_message = await self.show_progress(
            run.chat_id, progress_text(run, live), live.progress_message, run_thread(run.id)
        )

    async def _check_end(
        self, run: RunRecord, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        if run.handle is None or run.runner is None:
            return
        handle = RunHandle(run.runner, run.handle, run.id)  # type: ignore[arg-type]
        # the engine did not answer lately: the run keeps its state meanwhile. (A pool keeps
        # each host's health itself and answers for a silent host without asking it.)
        if not self.engine.due() and self.runner.capabilities.hosts is None:
            return
        try:
            state = await self.runner.state(handle)
        except UNANSWERED as exc:
            self.engine.failed(silence(self.engine_name, exc))
            return
        self.engine.answered()
        if state.running and await self._engine_queue(run, state):
            return  # held in the engine's own queue (Slurm): no stall while it waits
        if state.running:
            if state.silent is None:  # a silent pool host says nothing of a stall
                await self._check_stall(run)
            return
        # Over: late lines first (the agent writes its last events just before exiting).
        late = read_new(self.run_dir(run.id), run.events_offset)
        if late.offset != run.events_offset:
            self._seen.pop(run.id, None)  # read them, whatever the last lstat said
            await self.follow(run)
            return
        final, cause = settle(run, self.run_dir(run.id), state.exit, result, error)
        if state.silent is not None and final == RunState.LOST:
            cause = state.silent  # a pool host given up: why it is lost
        try:
            await self.runner.remove(handle)
        except UNANSWERED as exc:  # ended all the same; the container is left behind
            log.warning("run %s: its container was not removed: %s", run.id, exc)
        await self._finish(run, final, cause, state.exit)

    async def _engine_queue(self, run: RunRecord, state: RunnerState) -> bool:
        """A run its engine holds in its own queue (Slurm): whether it waits there.

        Its reason ("Resources", "Priority") is kept for /status and /runs (`waiting`) and
        each new one is an event in its chain. A run the engine requeued after it ran
        (preemption, `scontrol requeue`) is `preempted` until its started event: it
        resumes from its last checkpoint by itself, and its chat is told so. The stall
        clock starts when it leaves the queue.
        """
        before = self.waiting.get(run.id)
        engine = "Slurm" if self.runner.kind == "slurm" else self.engine_name
        if state.waiting is None:
            if before is not None:
                del self.waiting[run.id]
                await self.repo.update(run.id, last_beat_at=to_iso(self.clock.now()))
            return False
        self.waiting[run.id] = state.waiting
        if state.requeued and run.state in (RunState.STARTING, RunState.RUNNING):
            where = f"step {run.step}" if run.checkpoint else "the start (no checkpoint yet)"
            event = await self.lifecycle.move(
                run,
                RunState.PREEMPTED,
                f"requeued by the engine (waiting: {state.waiting})",
                summary=f"run {run.id} preempted: back in the {engine} queue"
                f" ({state.waiting}); it resumes from {where} by itself",
            )
            if event is not None:
                await self.notify(
                    run.chat_id,
                    f"Run {run.id} ({run.recipe}) was preempted: {engine} put it back"
                    f" in its queue (waiting: {state.waiting}). It resumes from {where} by"
                    f" itself; /run stop {run.id} ends it.",
                    event,
                )
        elif before != state.waiting:
            self.event_log.log_event(
                "run",
                run.id,
                summary=f"run {run.id} waits in the {engine} queue: {state.waiting}",
                content={"waiting": state.waiting},
                caused_by=run.launch_action,
            )
        return True

    async def _say_outage(self) -> None:
        """While the engine does not answer, each live run's chain and chat are told so,
        once an outage (whichever call found it out: a state, a signal, a command's). In a
        pool each host is its own engine: only the silent host's runs and chats are told."""
        engines = self.signals.engines
        for run in await self.repo.in_states(LIVE):
            host = engines.of(run.host)
            watch, key = (host, run.host or "") if host.down else (engines.main, "")
            if not watch.down:
                continue
            if self._told.get(run.id) == (key, watch.outage):
                continue
            self._told[run.id] = (key, watch.outage)
            why = watch.why or f"the {self.engine_name} engine does not answer"
            waits = f"; its {run.wanted} is delivered then" if pending(run) else ""
            event = self.event_log.log_event(
                "run",
                run.id,
                summary=f"run {run.id} waits: {why}{waits}",
                content={"state": run.state, "wanted": run.wanted},
                caused_by=run.launch_action,
            )
            if self._told_chats.get((run.chat_id, key)) == watch.outage:
                continue
            self._told_chats[(run.chat_id, key)] = watch.outage
            await self.notify(
                run.chat_id,
                f"{why[0].upper()}{why[1:]}. {f'Runs on host {key}' if key else 'Runs'} keep"
                " their state until it answers: nothing is reported ended that may still run,"
                " and stops, pauses and launches asked meanwhile happen when it answers.",
                event,
            )

    async def _check_stall(self, run: RunRecord) -> None:
        if (
            run.stalled
            or run.last_beat_at is None
            or run.state
            not in (
                RunState.RUNNING,
                RunState.STARTING,
            )
        ):
            return
        silent = (self.clock.now() - from_iso(run.last_beat_at)).total_seconds()
        if silent < self.settings.stall_timeout_s:
            return
        await self.repo.update(run.id, stalled=1)
        event = self.event_log.log_event(
            "run",
            run.id,
            summary=f"run {run.id} stalled: no progress for {silent:.0f}s",
            content={"step": run.step, "silent_s": round(silent)},
            caused_by=run.launch_action,
        )
        await self.notify(
            run.chat_id,
            in_thread(
                run,
                f"Run {run.id} ({run.recipe}) looks stalled: no progress for"
                f" {silent:.0f}s (last step {run.step}). /run logs {run.id} shows its output;"
                f" /run stop {run.id} ends it.",
            ),
            event,
        )

    async def _finish(
        self, run: RunRecord, final: RunState, cause: str | None, exit_info: ExitInfo | None
    ) -> None:
        now = to_iso(self.clock.now())
        code = exit_info.exit_code if exit_info else None
        event = await self.lifecycle.move(
            run,
            final,
            cause,
            content={"state": final, "cause": cause, "exit_code": code},
            ended_at=now if final != RunState.PAUSED else None,
            exit_code=code,
            error=cause if final in (RunState.FAILED, RunState.LOST) else None,
            gpus=[],
        )
        self.live.pop(run.id, None)
        self.waiting.pop(run.id, None)
        self.signals.forget(run.id)
        self._told.pop(run.id, None)
        self._drop(run.id)
        if event is None:
            return  # another pass settled it already
        # a declared recipe's secrets, if its agent died before it could delete them
        shutil.rmtree(self.run_dir(run.id) / SECRETS_DIR, ignore_errors=True)
        server_tail = await self._stop_server(run)
        ended = await self.repo.get(run.id) or run
        await self._report(ended, cause, event, server_tail)
        await self.dispatch()

    async def _stop_server(self, run: RunRecord) -> list[str]:
        """Stop a benchmark's server, keeping its log; its last lines for the report."""
        servers, ref = self.servers, (run.server or {}).get("ref")
        if servers is None or not ref:
            return []
        log_path = self.run_dir(run.id) / protocol.ARTIFACTS / "server.log"
        try:
            return await servers.stop(str(ref), log_path)
        except (RunStartError, OSError) as exc:
            log.warning("could not stop the server of run %s: %s", run.id, exc)
            return []
        except UNANSWERED as exc:
            log.warning("could not stop the server of run %s: %s", run.id, exc)
            return []

    async def _report(
        self, run: RunRecord, cause: str | None, event: int, server_tail: list[str]
    ) -> None:
        run_dir = self.run_dir(run.id)
        # A paused run has no end time; its report measures up to now.
        report_run = run if run.ended_at else replace(run, ended_at=to_iso(self.clock.now()))
        if run.kind == "bench":
            reply = await bench_report(self.repo, self.settings, report_run, cause, server_tail)
            await self.notify(run.chat_id, in_thread(run, reply), event)
            return
        text = summary_text(report_run, cause, run_dir)
        trouble = self.trouble.pop(run.id, None)
        if trouble is not None and trouble.skipped:
            text += f"\nSkipped event lines: {trouble.skipped} (first: {trouble.first})"
        images: tuple[Path, ...] = ()
        try:
            picture = await asyncio.to_thread(
                plot, run, read_events(run_dir), run_dir / protocol.ARTIFACTS / "curves.png"
            )
            if picture is not None:
                images = (picture,)
        except Exception:
            log.exception("could not plot run %s", run.id)
        offered = run_actions(run, resumable=resumable(run))
        await self.notify(run.chat_id, in_thread(run, Reply(text, images), actions=offered), event)


def _better(name: str, value: object, best: dict[str, Any], key: tuple[str, str]) -> bool:
    if not isinstance(value, int | float):
        return False
    current = best.get(name)
    if current is None:
        return True
    lower = lower_is_better(name, *key)
    return bool(value < current) if lower else bool(value > current)


def key_metric(run: RunRecord) -> tuple[str, str]:
    """The metric that decides a run's best, and whether lower or higher is better."""
    if run.definition is not None:
        declared = from_json(run.definition)
        return declared.key_metric, declared.key_metric_mode
    info = RECIPES.get(run.recipe)
    return (info.key_metric, info.key_metric_mode) if info else ("loss", "min")


def _describe(event: dict[str, Any]) -> str:
    kind = event.get("type")
    if kind == "started":
        return f"started at step {event.get('step', 0)} on {event.get('device', '?')}"
    if kind == "checkpoint":
        best = " (best)" if event.get("best") else ""
        return f"checkpoint at step {event.get('step')}{best}"
    if kind == "error":
        return f"error: {str(event.get('message', ''))[:120]}"
    if kind == "result":
        return f"result {event.get('status')} at step {event.get('step')}"
    return str(kind)


def progress_text(run: RunRecord, live: Live, now: float | None = None) -> str:
    """The live line: step/total with a bar (a benchmark: requests), loss, throughput, ETA."""
    done, total = live.counts(run)
    label = "requests" if live.bench else "step"
    parts = [f"Run {run.id} ({run.recipe}) · {label} {done}" + (f"/{total}" if total else "")]
    if total:
        filled = max(0, min(10, int(10 * done / total)))
        parts[0] += f" [{'#' * filled}{'.' * (10 - filled)}]"
    parts.extend(run_numbers(run, live, now))
    return " · ".join(parts)


def run_numbers(run: RunRecord, live: Live | None, now: float | None = None) -> list[str]:
    """Latest loss, throughput and ETA: what both /status and the progress line show.

    `now` is the monitor's clock (time.monotonic()); a rate not sound then is left out.
    """
    parts = []
    if live is not None and live.profile:
        parts.append(f"profile {live.profile} ({live.profile_done}/{live.profile_total} requests)")
    for name, label in (("engine_gen_tok_s", "server gen tok/s"), ("kv_cache_pct", "KV cache %")):
        if isinstance(run.metrics.get(name), int | float):
            parts.append(f"{label} {run.metrics[name]:,.0f}")
    loss = run.metrics.get("loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.4g}")
    if live is not None:
        rate = live.rate(now)
        if live.tokens_per_s:
            parts.append(f"{live.tokens_per_s:,.0f} tok/s")
        if rate is not None and (live.bench or not live.tokens_per_s):
            parts.append(rate_text(rate, f"{live.unit}/s"))
        done, total = live.counts(run)
        left = eta(done, total, rate)
        if left is not None:
            parts.append(f"ETA {format_duration(left)}")
    return parts
