"""Delivering a stop, pause or kill to a live run: now if the engine answers, else later.

What was asked is stored first (the run's `wanted`: stop, pause or kill, with
`wanted_at`), so it survives an outage and a restart; `control.json` is already written
by then. It is pending until `signalled_at` says when it reached the run. A command tries
the engine once; the monitor tries again each pass the engine's backoff allows. Each
attempt is an action `run_signal` with its engine call as a tool call, under the event
of the move that asked for it, so `/debug run` shows what was tried and what the engine
said. A run still alive `grace_s` after its signal was delivered is killed.

Whether the engine answers is kept per host (`EngineWatches`, keyed by the run's `host`):
in a pool, a stop that finds one host silent holds back only that host's runs, and is
delivered as soon as the pool sees the host answer (`host_back`), not when a backoff
shared with every host next allows. While the pool sees a host silent, the monitor does
not try it at all: a call to a silent ssh host costs its whole timeout, and the pool's
own probe is what hears it first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from assistant.clock import Clock
from assistant.observability import EventLog
from assistant.runs.engine_watch import UNANSWERED, EngineWatches, silence
from assistant.runs.lifecycle import HALTING
from assistant.runs.runner import RunHandle, Runner
from storage.runs import RunRecord, RunRepo
from storage.timestamps import from_iso, to_iso

log = logging.getLogger(__name__)

WANTS = ("stop", "pause", "kill")


def pending(run: RunRecord) -> bool:
    """Something was asked of the run that has not reached it yet (the engine's silence)."""
    return run.wanted is not None and run.signalled_at is None


class Signals:
    def __init__(
        self,
        repo: RunRepo,
        runner: Runner,
        event_log: EventLog,
        clock: Clock,
        engines: EngineWatches,
        engine_name: str,
        grace_s: float,
        silent: Callable[[RunRecord], bool] | None = None,
    ) -> None:
        self._repo = repo
        self._runner = runner
        self._log = event_log
        self._clock = clock
        self.engines = engines
        self._engine_name = engine_name
        self._grace_s = grace_s
        # whether the pool sees the run's host silent: its stop then waits for `host_back`
        self._silent = silent or (lambda run: False)
        self._asked: dict[str, int] = {}  # run -> the event its attempts go under

    async def ask(self, run: RunRecord, wanted: str, event: int | None) -> RunRecord:
        """Record `wanted` (stop, pause, kill) and try to deliver it once; the fresh run."""
        assert wanted in WANTS
        if event is not None:
            self._asked[run.id] = event
        now = to_iso(self._clock.now())
        await self._repo.update(run.id, wanted=wanted, wanted_at=now, signalled_at=None)
        fresh = await self._repo.get(run.id) or run
        await self.deliver(fresh)
        return await self._repo.get(run.id) or fresh

    async def deliver(self, run: RunRecord) -> bool:
        """One attempt at what `run` wants; whether it reached the run (or nothing is due)."""
        wanted = run.wanted
        if not pending(run) or run.handle is None or run.runner is None:
            return True
        handle = RunHandle(run.runner, run.handle, run.id)  # type: ignore[arg-type]
        kill = wanted == "kill"
        try:
            async with self._log.action(self._event(run), "run_signal", target=run.id) as act:
                act.content = {"wanted": wanted, "asked_at": run.wanted_at}
                name = f"{self._runner.kind}.{'kill' if kill else 'signal'}"
                async with self._log.tool_call(name, {"signal": "SIGKILL" if kill else "SIGTERM"}):
                    if kill:
                        await self._runner.kill(handle)
                    else:
                        await self._runner.signal_stop(handle)
        except UNANSWERED as exc:
            why = silence(self._engine_name, exc)
            self.engines.of(run.host).failed(why)
            await self._repo.update(run.id, blocked=why)
            return False
        self.engines.of(run.host).answered()
        await self._repo.update(run.id, signalled_at=to_iso(self._clock.now()), blocked=None)
        return True

    async def tend(self, runs: list[RunRecord]) -> None:
        """A monitor pass: deliver what waits, and kill what outlived its grace period.

        The grace period counts from the delivered signal, not from the request: a stop
        asked during an outage gets its whole grace once it reaches the run.
        """
        for run in runs:
            if run.state not in HALTING or not self.engines.of(run.host).due():
                continue
            if self._silent(run):  # the pool's probe hears it first, then `host_back`
                continue
            if pending(run):
                await self.deliver(run)
            elif run.wanted in ("stop", "pause") and run.signalled_at is not None:
                waited = (self._clock.now() - from_iso(run.signalled_at)).total_seconds()
                if waited >= self._grace_s:
                    log.warning("run %s did not stop within the grace period: killing it", run.id)
                    await self.ask(run, "kill", None)

    async def host_back(self, host: str) -> None:
        """Pool host `host` answers again: what waits for it is delivered now, each run's
        chain saying why it is tried now."""
        self.engines.of(host).answered()
        for run in await self._repo.in_states(HALTING):
            if run.host != host or not pending(run):
                continue
            self._log.log_event(
                "run",
                run.id,
                summary=f"run {run.id}: host {host} answers again; its {run.wanted} is"
                " delivered now",
                content={"host": host, "wanted": run.wanted},
                caused_by=run.launch_action,
            )
            await self.deliver(run)

    def forget(self, run_id: str) -> None:
        """The run has ended: nothing of it is kept."""
        self._asked.pop(run_id, None)

    def _event(self, run: RunRecord) -> int:
        """The event attempts go under: the move that asked, else (after a restart) one
        saying the request is still to deliver."""
        event = self._asked.get(run.id)
        if event is None:
            event = self._log.log_event(
                "run",
                run.id,
                summary=f"run {run.id}: {run.wanted} asked at {run.wanted_at}, still to deliver",
                content={"wanted": run.wanted, "asked_at": run.wanted_at},
                caused_by=run.launch_action,
            )
            self._asked[run.id] = event
        return event
