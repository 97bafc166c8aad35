"""A run's states, the moves between them, and the one place that makes those moves.

`Lifecycle.move` (and `Lifecycle.record` for a monitor pass that also changes the state)
is the only code that writes a run's state: it checks the move against `MOVES`, writes
it with the run's state history in one transaction, guarded by the states the move may
start from (a request and the monitor racing cannot overwrite each other), and records
it as an event in the run's chain, caused by the run's launch action. A move the table
does not allow is a programming error: `IllegalMove` is raised and nothing is written.

```mermaid
stateDiagram-v2
    [*] --> queued: manager.submit (retry = a new run)
    queued --> starting: manager.dispatch (GPUs or a CPU slot free), or a container adopted
    queued --> cancelled: stop (while queued)
    queued --> failed: image missing, image build failed
    starting --> queued: the engine did not answer the launch (waits for it)
    starting --> failed: the engine refused the launch
    starting --> running: monitor (a started event)
    starting --> pausing: pause
    running --> pausing: pause
    starting --> stopping: stop
    running --> stopping: stop
    starting --> lost: monitor.reconcile (no handle after a restart)
    starting --> preempted: monitor (the engine requeued it: Slurm preemption or requeue)
    running --> preempted: monitor (the engine requeued it: Slurm preemption or requeue)
    preempted --> running: monitor (a started event: it resumed from its last checkpoint)
    preempted --> paused: pause (while preempted: its queued job is cancelled)
    preempted --> cancelled: stop (while preempted: its queued job is cancelled)
    preempted --> ENDED_OR_PAUSED: settle()
    running --> ENDED_OR_PAUSED: settle()
    pausing --> ENDED_OR_PAUSED: settle()
    stopping --> ENDED_OR_PAUSED: settle()
    paused --> queued: resume (needs a checkpoint)
    paused --> cancelled: stop (while paused)
```

`ENDED_OR_PAUSED` is what `settle` decides once the runner says the process is gone,
reading the agent's result and exit codes (`assistant/jobs/protocol.py`) on this side.

The sets: `ACTIVE` (in the queue or executing), `LIVE` (something may be executing: the
monitor follows these), `ENDED` (never changes again). `paused` is in none of them on
purpose: nothing of it executes and it holds no GPU (not active, not live), yet it is not
over (`/run resume` queues it again): it is `HELD`. `preempted` is live: an engine with a
queue of its own (Slurm) took the run off its nodes and holds it until it starts again by
itself, from its last checkpoint; nothing of it executes meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from assistant.clock import Clock
from assistant.jobs import protocol
from assistant.jobs.text import valid_text
from assistant.observability import EventLog
from assistant.runs import rundir
from assistant.runs.events import valid_json
from assistant.runs.runner import ExitInfo
from storage.runs import Applied, Progress, RunRecord, RunRepo
from storage.timestamps import to_iso


class RunState(StrEnum):
    """Stored as its text (the `runs.state` column)."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    STOPPING = "stopping"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    PREEMPTED = "preempted"  # the engine requeued it; it resumes by itself (Slurm)


S = RunState
ACTIVE = (S.QUEUED, S.STARTING, S.RUNNING, S.PAUSING, S.STOPPING, S.PREEMPTED)
# something may be executing (a preempted run may start again any moment)
LIVE = (S.STARTING, S.RUNNING, S.PAUSING, S.STOPPING, S.PREEMPTED)
ENDED = (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST)
HELD = (S.PAUSED,)  # nothing executes, nothing held, not over: resume or stop moves it
HALTING = (S.PAUSING, S.STOPPING)  # asked to pause or stop, not yet ended

_SETTLED = (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSED, S.LOST)  # what settle() gives
MOVES: dict[RunState, frozenset[RunState]] = {
    S.QUEUED: frozenset({S.STARTING, S.CANCELLED, S.FAILED}),
    S.STARTING: frozenset({S.QUEUED, S.RUNNING, S.PAUSING, S.STOPPING, S.PREEMPTED, *_SETTLED}),
    S.RUNNING: frozenset({S.PAUSING, S.STOPPING, S.PREEMPTED, *_SETTLED}),
    S.PAUSING: frozenset(_SETTLED),
    S.STOPPING: frozenset(_SETTLED),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.LOST: frozenset(),
    S.PREEMPTED: frozenset({S.RUNNING, S.PAUSING, S.STOPPING, *_SETTLED}),
}


class IllegalMove(RuntimeError):
    """A move `MOVES` does not allow: a bug in the caller, not a user's mistake."""


def allowed(start: str, to: RunState) -> bool:
    return to in MOVES.get(RunState(start), frozenset())


def sources(to: RunState) -> tuple[str, ...]:
    """The states a move to `to` may start from (the guard of the stored write)."""
    return tuple(s for s, targets in MOVES.items() if to in targets)


@dataclass(frozen=True)
class Move:
    """A move announced in the chain (its event), to be written with a monitor pass."""

    to: RunState
    note: str | None
    event: int


class Lifecycle:
    """The only writer of a run's state; see the module docstring."""

    def __init__(self, repo: RunRepo, event_log: EventLog, clock: Clock) -> None:
        self._repo = repo
        self._log = event_log
        self._clock = clock

    def _check(self, run: RunRecord, to: RunState) -> None:
        if not allowed(run.state, to):
            raise IllegalMove(f"run {run.id}: {run.state} -> {to} is not a run state move")

    async def move(
        self,
        run: RunRecord,
        to: RunState,
        note: str | None = None,
        *,
        summary: str | None = None,
        content: object = None,
        caused_by: int | None = None,
        **columns: Any,
    ) -> int | None:
        """Move `run` to `to`, with other columns, and record the event; its id.

        None: the stored state had already moved on (to one `to` may not follow), so
        nothing was written: the caller's record was older than the run.

        :raises IllegalMove: `to` may not follow `run.state`.
        """
        self._check(run, to)
        now = to_iso(self._clock.now())
        if not await self._repo.set_state(run.id, to, now, note, sources=sources(to), **columns):
            return None
        return self._event(run, to, note, summary, content, caused_by)

    def announce(
        self,
        run: RunRecord,
        to: RunState,
        note: str | None = None,
        *,
        summary: str | None = None,
        content: object = None,
    ) -> Move:
        """The event of a move that `record` writes with the rest of a monitor pass.

        Announced where it happens among the run's other events, so the chain keeps
        their order.

        :raises IllegalMove: `to` may not follow `run.state`.
        """
        self._check(run, to)
        return Move(to, note, self._event(run, to, note, summary, content, None))

    async def record(self, run: RunRecord, progress: Progress, move: Move | None) -> bool:
        """Store a monitor pass (offset, progress), with its move if any; moved?"""
        now = to_iso(self._clock.now())
        if move is None:
            await self._repo.apply(run, progress, now)
            return False
        return await self._repo.apply(
            run, progress, now, state=move.to, note=move.note, sources=sources(move.to)
        )

    async def record_many(self, passes: list[tuple[RunRecord, Progress, Move | None]]) -> None:
        """Store a monitor pass over many runs, each with its move if any, in one commit."""
        await self._repo.apply_many(
            [
                Applied(run, progress)
                if move is None
                else Applied(run, progress, move.to, move.note, sources(move.to))
                for run, progress, move in passes
            ],
            to_iso(self._clock.now()),
        )

    def _event(
        self,
        run: RunRecord,
        to: RunState,
        note: str | None,
        summary: str | None,
        content: object,
        caused_by: int | None,
    ) -> int:
        return self._log.log_event(
            "run",
            run.id,
            summary=summary or f"run {run.id} {to}" + (f": {note}" if note else ""),
            content=content if content is not None else {"from": run.state, "to": to},
            caused_by=run.launch_action if caused_by is None else caused_by,
        )


# ---- how a run ended: the agent's exit codes and result, read from the host's side ---


def settle(
    run: RunRecord,
    run_dir: Path,
    exit_info: ExitInfo | None,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> tuple[RunState, str | None]:
    """The final state of a run whose process is gone, and the cause if it failed.

    The agent (`assistant/jobs/agent.py`) ends with `result.json` and one of the exit
    codes of `assistant/jobs/protocol.py`; this is the same mapping read back, in order:
    killed by the signal it was asked to stop with, OOM-killed, the result's status, the
    exit code, an error, a clean exit, nothing at all.
    """
    if result is None:
        found = valid_json(rundir.read_json(run_dir, protocol.RESULT))
        result = found if isinstance(found, dict) else None
    code = exit_info.exit_code if exit_info else None
    if run.state in HALTING and result is None and code in (-15, 143, -9, 137):
        # Asked to stop and ended by the signal itself: it had no checkpoint to write yet.
        return S.CANCELLED, None
    if exit_info is not None and exit_info.oom_killed:
        limit = f" (memory limit {run.memory_mb} MB)" if run.memory_mb else ""
        return S.FAILED, f"out of memory: the container was OOM-killed{limit}"
    status = (result or {}).get("status")
    if (
        exit_info is not None
        and exit_info.limit
        and status != "paused"
        and run.state not in HALTING
    ):
        # ended by the engine at its own limit (Slurm's --time): whatever the run wrote as
        # it was signalled ("stopped") is not why it ended
        return S.FAILED, exit_info.limit
    if status == "succeeded":
        return S.SUCCEEDED, None
    if status == "paused":
        return S.PAUSED, None
    if status == "stopped" or code == protocol.EXIT_STOPPED:
        return S.CANCELLED, None
    if code == protocol.EXIT_PAUSED:
        return S.PAUSED, None
    if status == "failed" or error is not None or (code not in (None, protocol.EXIT_OK)):
        recorded = error or (result or {}).get("error")
        if recorded is None:
            # The error event came in an earlier pass than the result event (which has no
            # error of its own), or was too long to be read: result.json keeps it.
            found = valid_json(rundir.read_json(run_dir, protocol.RESULT))
            recorded = found.get("error") if isinstance(found, dict) else None
        return S.FAILED, _cause(recorded, code, run_dir)
    if code == protocol.EXIT_OK:
        return S.SUCCEEDED, None
    return S.LOST, "the run's process is gone and left no result"


def _cause(error: object, code: int | None, run_dir: Path) -> str:
    """What made a run fail: its recorded error, else the traceback its output ends with.

    A run can end with no error recorded (its agent killed, or itself the failing part):
    the exception its output names still says more than an exit code.
    """
    from assistant.jobs.agent import TAIL_BYTES, classify_failure  # the agent's own reading

    if not isinstance(error, dict) and code is not None and 0 < code < 128:
        try:
            tail = rundir.read_tail(run_dir, protocol.STDOUT, limit=TAIL_BYTES)
        except OSError:  # none, or a link / FIFO: not quoted
            tail = b""
        found = classify_failure(code, tail.decode(errors="replace"))
        error = found if found["kind"] != "exit" else None
    if isinstance(error, dict):
        kind = error.get("kind")
        message = valid_text(str(error.get("message", "")))[:2000].strip()
        trace = error.get("traceback")
        trace = [valid_text(str(x))[:300] for x in trace] if isinstance(trace, list) else []
        if kind == "oom":
            return f"out of memory: {message}" if message else "out of memory"
        text = message or f"exit code {code}"
        if trace:
            text += "\n" + "\n".join(f"  {line}" for line in list(trace)[-8:])
        return text
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    if code in (137,):
        return "killed (SIGKILL: out of memory or stopped by force)"
    return f"exit code {code}"
