"""Scheduled tasks: the `tasks` table decides, APScheduler only keeps time.

Each active task has one in-memory DateTrigger job (`task:<id>`) at its stored
`next_run_at`. When it fires, `fire()` claims the firing in `task_runs` (one row per task
and scheduled time, so nothing runs twice), stores the next fire time, re-arms the job,
then runs the task and sends its reply to the task's chat. Because the table is the truth,
a restart rebuilds every job from it and applies the missed-run policy to firings that
came due while the service was down.

Fire times come from APScheduler's triggers: cron expressions in the configured zone
(DST-correct; a fixed-time job runs once on the day clocks fall back), intervals anchored
at the task's creation, so late firings never make an interval drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from assistant.clock import Clock
from assistant.config import Settings
from assistant.durations import format_duration, parse_duration
from assistant.errors import CommandError, StateError
from assistant.observability import EventLog, traced
from storage.ids import encode, short_random_id
from storage.tasks import Task, TaskRepo
from storage.timestamps import from_iso, to_iso

log = logging.getLogger(__name__)

KINDS = ("cron", "every", "once")
CRON_EXAMPLE = '"0 2 * * *" (02:00 every day) or "*/15 9-17 * * 1-5"'
# A timer may wake a hair before its time (loop clock resolution); still the same firing.
EARLY_TOLERANCE = timedelta(milliseconds=500)
ONCE_MINIMUM = timedelta(seconds=1)
SCHEDULE_HINTS = {
    "cron": 'the cron expression, e.g. "0 2 * * *"',
    "every": "the interval, e.g. 2h or 1h30m",
    "once": "the time, e.g. +30m or 2026-11-24T09:00",
}
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class TaskRunner(Protocol):
    """What the scheduler needs from the rest of the service (the orchestrator)."""

    async def run_task(self, task: Task, event_id: int) -> str:
        """Execute `task.what`; return the reply to send to the task's chat; raise on failure."""
        ...

    async def notify(self, chat_id: str, text: str, caused_by: int | None) -> None:
        """Send `text` to a chat."""
        ...


@dataclass(frozen=True)
class Refusal:
    """Why a task may not act now. `lost` names the grant that would let it act again;
    None when no grant would (what it runs is never scheduled)."""

    reason: str
    lost: str | None = None  # "admin" or "allow", as in /chat admin|allow <id>


class TaskRights(Protocol):
    """Who may run what, asked when a task is added and each time it fires.

    A protocol here, implemented by `access.TaskRights`, because the answer depends on the
    chat commands' rules and the scheduler sits below the command layer.
    """

    def unscheduled(self, what: str) -> str | None:
        """Why `what` may never be scheduled, or None."""
        ...

    def refusal(self, chat_id: str, what: str) -> Refusal | None:
        """Why a task of `chat_id` that runs `what` may not act now, or None."""
        ...

    def admin_chats(self) -> list[str]: ...


@dataclass(frozen=True)
class TaskSummary:
    """The /status line about tasks."""

    active: int
    paused: int
    done: int
    next_due: Task | None


@dataclass
class TaskCounts:
    """Firings since start, for /metrics: task_runs rows are pruned, these only grow.

    fired: each firing that ran (schedule, manual or catch-up); failed: those that raised
    or were refused; missed: firings recorded missed while the service was down.
    """

    fired: int = 0
    failed: int = 0
    missed: int = 0


# ---- fire times ----------------------------------------------------------------------


def cron_trigger(expr: str, zone: ZoneInfo) -> CronTrigger:
    """A trigger for a standard 5-field crontab line, read in `zone`.

    Weekday numbers mean what they mean in crontab (0 or 7 = Sunday); APScheduler 3 counts
    from Monday, so they are translated to names first.

    :raises CommandError: naming the problem and showing an example.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise CommandError(
            f"a cron expression has 5 fields (minute hour day month weekday), {expr!r} has"
            f" {len(fields)}; e.g. {CRON_EXAMPLE}"
        )
    if fields[2] != "*" and fields[4] != "*":
        raise CommandError(
            f"cron expression {expr!r} restricts both day of month and weekday; give one"
            f" (cron would run on either), e.g. {CRON_EXAMPLE}"
        )
    try:
        fields[4] = _crontab_weekdays(fields[4])
        return CronTrigger.from_crontab(" ".join(fields), timezone=zone)
    except ValueError as exc:
        raise CommandError(f"bad cron expression {expr!r}: {exc}; e.g. {CRON_EXAMPLE}") from None


def _crontab_weekdays(field: str) -> str:
    """Crontab weekday field (0-7, names, ranges, steps) -> APScheduler day names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        body, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad weekday step in {item!r}")
        if body == "*":
            low, high = 0, 6
        else:
            start, dash, end = body.partition("-")
            low = _weekday(start)
            high = _weekday(end) if dash else (6 if step else low)
            if dash and high == 0 and low > 0:
                high = 7  # "5-7", "fri-sun": up to Sunday at the end of the week
            if high < low:
                raise ValueError(f"weekday range {item!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step or 1))
    if len(days) == 7:
        return "*"
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def _weekday(text: str) -> int:
    text = text.strip()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7
    if text[:3] in _WEEKDAYS and len(text) == 3:
        return _WEEKDAYS.index(text)
    raise ValueError(f"{text!r} is not a weekday (0-7 or sun..sat)")


def _fixed_time(expr: str) -> bool:
    """True when minute and hour are fixed (not `*`, `*/n`): such a job runs once when a
    wall-clock hour repeats, as in cron; wildcard jobs follow elapsed time through it."""
    minute, hour = expr.split()[:2]
    return not minute.startswith("*") and not hour.startswith("*")


def next_fire_after(task: Task, after: datetime, zone: ZoneInfo) -> datetime | None:
    """The task's first fire time strictly after `after` (UTC), or None if it has none."""
    after = after.astimezone(UTC)
    if task.kind == "once":
        moment = from_iso(task.schedule)
        return moment if moment > after else None
    # Stored times have milliseconds; asking from the next one keeps the answer strict.
    probe = after + timedelta(milliseconds=1)
    if task.kind == "every":
        interval = IntervalTrigger(
            seconds=int(task.schedule), start_date=task.created, timezone=UTC
        )
        found: datetime | None = interval.get_next_fire_time(None, probe)
        return None if found is None else _whole_ms(found)
    trigger = cron_trigger(task.schedule, zone)
    fixed = _fixed_time(task.schedule)
    for _ in range(1000):
        found = trigger.get_next_fire_time(None, probe)
        if found is None:
            return None
        found = found.astimezone(UTC)
        if found <= after:  # never trust a trigger to move forward on its own
            probe = probe + timedelta(seconds=1)
            continue
        if fixed and _repeated_wall_time(found, zone):
            probe = found + timedelta(seconds=1)  # its first occurrence an hour ago counted
            continue
        return found
    raise RuntimeError(f"no fire time found for cron {task.schedule!r} after {after}")


def _repeated_wall_time(moment: datetime, zone: ZoneInfo) -> bool:
    """True for the second pass of a wall-clock time when clocks fall back."""
    local = moment.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _whole_ms(moment: datetime) -> datetime:
    """Round float-derived times to the millisecond we store."""
    micro = round(moment.microsecond / 1000) * 1000
    return moment.replace(microsecond=0).astimezone(UTC) + timedelta(microseconds=micro)


def describe_schedule(task: Task, zone: ZoneInfo) -> str:
    """ "cron: 0 2 * * *", "every 2h", "once at 2026-11-24 09:00 CET"."""
    if task.kind == "cron":
        return f"cron: {task.schedule}"
    if task.kind == "every":
        return f"every {format_duration(timedelta(seconds=int(task.schedule)), parts=5)}"
    moment = from_iso(task.schedule).astimezone(zone)
    return f"once at {moment:%Y-%m-%d %H:%M %Z}"


def refusal_notice(task: Task, refusal: Refusal, action: str) -> str:
    """What the admin chats read when a task was paused instead of run."""
    what = task.what if len(task.what) <= 120 else task.what[:119] + "…"
    remedy = _remedy(task, refusal)
    return (
        f"Task {task.id} of {task.chat_id} was paused, not run: {refusal.reason}.\n"
        f"It does: {what}\n"
        f"{remedy[0].upper()}{remedy[1:]}. /debug why {action} shows the chain."
    )


def _remedy(task: Task, refusal: Refusal) -> str:
    if refusal.lost is None:
        return f"it can never run as a task: /task delete {task.id} removes it"
    return (
        f"to run it again: give {task.chat_id} the rights back (/chat {refusal.lost}"
        f" {task.chat_id}), then /task resume {task.id}; /task delete {task.id} removes it"
    )


# ---- the scheduler -------------------------------------------------------------------


class TaskScheduler:
    """Adds, changes and fires tasks; `start()` after the channels, `aclose()` before them."""

    def __init__(
        self,
        repo: TaskRepo,
        log: EventLog,
        settings: Settings,
        clock: Clock,
        runner: TaskRunner,
        rights: TaskRights,
    ) -> None:
        self._repo = repo
        self._rights = rights
        self._log = log
        self.event_log = log  # for @traced: task operations are tool calls in the chain
        self._settings = settings
        self._zone = settings.zone
        self._clock = clock
        self._runner = runner
        self._timer = AsyncIOScheduler(
            timezone=self._zone,
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.counts = TaskCounts()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the timer from the table and deal with what happened while we were down.

        Runs left 'running' become 'interrupted' (never re-run; their chats are told once).
        Each active task due in the past gets the missed-run policy: under 'grace' it runs
        once now if it is at most `missed_run_grace_s` late, else it is recorded missed;
        'skip' records it missed; 'always' runs it once. Many missed firings of one task
        count as one. Catch-up runs go on in the background (`wait_idle()` awaits them).
        """
        now = self._clock.now()
        self._timer.start()
        for run in await self._repo.mark_interrupted(
            at=to_iso(now), error="interrupted by a restart"
        ):
            task = await self._repo.get(run.task_id)
            if task is not None:
                await self._notify(
                    task.chat_id,
                    f"Task {task.id} was interrupted by a restart while running;"
                    " it was not re-run.",
                    run.event_id,
                )
        for task in await self._repo.list_all():
            if task.status == "active":
                try:
                    await self._recover(task, now)
                except Exception:  # one unreadable task must not stop the others
                    log.exception("could not schedule task %s at start", task.id)

    async def _recover(self, task: Task, now: datetime) -> None:
        """Apply the missed-run policy to one active task, then arm its timer."""
        due = task.next_run
        if due is None:
            await self._advance(task, now)
        elif due <= now:
            late = now - due
            policy = self._settings.missed_run_policy
            grace = timedelta(seconds=self._settings.missed_run_grace_s)
            if policy == "always" or (policy == "grace" and late <= grace):
                self._spawn(self.fire(task.id, trigger="catch-up"))
                return  # the firing arms the timer again
            await self._miss(task, due, late)
        await self._arm(task.id)

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop the timer; give running tasks `grace_s` seconds, then cancel them.

        A cancelled run stays 'running' in the table and is reported as interrupted at the
        next start.
        """
        self._closing = True
        if self._timer.running:
            self._timer.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for job in pending:
                job.cancel()
            if pending:
                await asyncio.wait(pending)

    async def wait_idle(self) -> None:
        """Wait for every firing in progress (tests, and shutdown paths that want it)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    # ---- commands --------------------------------------------------------------------

    @traced("task.add")
    async def add(
        self, chat_id: str, kind: str, schedule: str, what: str, *, triggered_by: int | None = None
    ) -> Task:
        """Validate and store a task, and arm its timer.

        `triggered_by` is the event that asked (a message or command), as in `log_action`.

        :raises CommandError: for an unknown kind, a bad cron expression or duration, a time
            in the past, or nothing to do.
        """
        what = what.strip()
        kind = kind.strip().lower()
        schedule = schedule.strip()
        if kind not in KINDS:
            raise CommandError(f"unknown kind {kind!r}; use cron, every or once")
        if not schedule:
            raise CommandError(f"missing {SCHEDULE_HINTS[kind]}")
        if not what:
            raise CommandError("missing what the task should do: a command like /status, or text")
        never = self._rights.unscheduled(what)
        if never is not None:
            raise CommandError(never)
        now = self._clock.now()
        stored = self._stored_schedule(kind, schedule, now)
        for _ in range(5):
            draft = Task(
                id=short_random_id(),
                chat_id=chat_id,
                kind=kind,
                schedule=stored,
                what=what,
                status="active",
                created_at=to_iso(now),
            )
            first = next_fire_after(draft, now, self._zone)
            if first is None:
                raise CommandError(
                    f"cron expression {schedule!r} never matches a date; e.g. {CRON_EXAMPLE}"
                    if kind == "cron"
                    else "that time is not in the future; give a later one"
                )
            task = replace(draft, next_run_at=to_iso(first))
            try:
                await self._repo.create(task)
            except sqlite3.IntegrityError:
                continue  # id taken: draw another
            break
        else:
            raise RuntimeError("could not draw a free task id")
        self._log.log_action(
            triggered_by,
            "task_scheduled",
            target=chat_id,
            content={"task": task.id, "kind": kind, "schedule": stored, "what": what},
        )
        await self._arm(task.id)
        return task

    def _stored_schedule(self, kind: str, schedule: str, now: datetime) -> str:
        if kind == "cron":
            cron_trigger(schedule, self._zone)
            return " ".join(schedule.split())
        if kind == "every":
            return str(int(parse_duration(schedule).total_seconds()))
        return to_iso(self._parse_time(schedule, now))

    def _parse_time(self, text: str, now: datetime) -> datetime:
        """ "+2h" or an ISO time (naive = the configured zone), which must be in the future."""
        if text.startswith("+"):
            return now + parse_duration(text[1:], minimum=ONCE_MINIMUM)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError(
                f"could not read {text!r} as a time; give an ISO time like 2026-11-24T09:00"
                f" ({self._settings.tz}) or a delay like +2h"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self._zone)
        moment = moment.astimezone(UTC)
        if moment <= now:
            local = moment.astimezone(self._zone)
            raise CommandError(
                f"that time is in the past ({local:%Y-%m-%d %H:%M %Z},"
                f" {format_duration(now - moment)} ago)"
            )
        return moment

    @traced("task.pause")
    async def pause(self, prefix: str, *, triggered_by: int | None = None) -> Task:
        """:raises StateError: if the task is paused or done already."""
        task = await self._repo.resolve(prefix)
        if task.status == "paused":
            raise StateError(f"task {task.id} is already paused")
        if task.status == "done":
            raise StateError(f"task {task.id} is done; it does not run again")
        await self._repo.set_status(task.id, "paused", None)
        await self._arm(task.id)
        self._changed(task, "paused", triggered_by)
        return await self._reload(task)

    @traced("task.resume")
    async def resume(self, prefix: str, *, triggered_by: int | None = None) -> Task:
        """Resume from now: a paused task does not replay what it missed while paused.

        :raises StateError: if the task is not paused, is a one-off whose time passed, or
            its chat lacks the rights it needs to act (the same check as when it fires).
        """
        task = await self._repo.resolve(prefix)
        if task.status == "active":
            raise StateError(f"task {task.id} is not paused")
        if task.status == "done":
            raise StateError(f"task {task.id} is done; it does not run again")
        refusal = self._rights.refusal(task.chat_id, task.what)
        if refusal is not None:
            raise StateError(f"{refusal.reason}; {_remedy(task, refusal)}")
        now = self._clock.now()
        upcoming = next_fire_after(task, now, self._zone)
        if upcoming is None:
            when = from_iso(task.schedule).astimezone(self._zone)
            raise StateError(
                f"task {task.id} was a one-off for {when:%Y-%m-%d %H:%M %Z}, which passed"
                f" while it was paused; /task run {task.id} runs it now"
            )
        await self._repo.set_status(task.id, "active", to_iso(upcoming))
        await self._arm(task.id)
        self._changed(task, "resumed", triggered_by)
        return await self._reload(task)

    @traced("task.delete")
    async def delete(self, prefix: str, *, triggered_by: int | None = None) -> Task:
        """Delete a task and its run history; returns it as it was."""
        task = await self._repo.resolve(prefix)
        await self._repo.delete(task.id)
        await self._arm(task.id)
        self._changed(task, "deleted", triggered_by)
        return task

    @traced("task.run")
    async def run_now(self, prefix: str, caused_by: int | None) -> Task:
        """Start a manual firing in the background, whatever the task's status.

        `caused_by` is the action that asked (e.g. the /task command's action): the run's
        `scheduled_task` event hangs off it in the chain. The schedule is untouched: the
        next scheduled firing still happens.
        """
        task = await self._repo.resolve(prefix)
        self._spawn(self._run_manual(task.id, caused_by))
        return task

    async def list_tasks(self) -> list[Task]:
        return await self._repo.list_all()

    async def summary(self) -> TaskSummary:
        counts = await self._repo.counts()
        return TaskSummary(
            active=counts.get("active", 0),
            paused=counts.get("paused", 0),
            done=counts.get("done", 0),
            next_due=await self._repo.next_due(),
        )

    async def prune_runs(self) -> int:
        """Delete task runs older than the retention, in bounded batches; returns the count."""
        days = self._settings.task_run_retention_days
        if days <= 0:
            return 0
        cutoff = to_iso(self._clock.now() - timedelta(days=days))
        batch = self._settings.prune_batch
        total = 0
        while True:
            deleted = await self._repo.prune_runs(cutoff, batch)
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)  # let other writers in between batches

    # ---- firing ------------------------------------------------------------------------

    async def run_due(self) -> int:
        """Fire every active task that is due by the clock; returns how many ran."""
        fired = 0
        for task in await self._repo.due(to_iso(self._clock.now())):
            if await self.fire(task.id):
                fired += 1
        return fired

    async def fire(self, task_id: str, *, trigger: str = "schedule") -> bool:
        """Run the task's stored next firing if it is due; the timer's job calls this.

        Never raises: a failing task is reported to its chat and recorded, and the
        scheduler goes on. Returns True if this call ran the firing.
        """
        try:
            async with self._lock(task_id):
                task = await self._repo.get(task_id)
                if task is None or task.status != "active" or task.next_run is None:
                    await self._arm(task_id)
                    return False
                now = self._clock.now()
                if task.next_run > now + EARLY_TOLERANCE:
                    await self._arm(task_id)  # already fired (elsewhere), or woken early
                    return False
                scheduled_for = task.next_run_at
                assert scheduled_for is not None
                run_id = await self._repo.claim(
                    task.id, scheduled_for, trigger, started_at=to_iso(now)
                )
                await self._advance(task, now)
                await self._arm(task.id)
                if run_id is None:
                    log.debug("task %s firing %s was claimed before", task.id, scheduled_for)
                    return False
                await self._execute(task, run_id, trigger, scheduled_for, None)
                return True
        except Exception:
            log.exception("firing task %s failed inside the scheduler", task_id)
            return False

    async def _run_manual(self, task_id: str, caused_by: int | None) -> None:
        try:
            async with self._lock(task_id):
                task = await self._repo.get(task_id)
                if task is None:
                    return
                moment = self._clock.now()
                if to_iso(moment) == task.next_run_at:
                    moment += timedelta(milliseconds=1)  # leave the scheduled firing its claim
                for _ in range(100):  # two manual runs in one millisecond: the next one
                    run_id = await self._repo.claim(
                        task.id, to_iso(moment), "manual", started_at=to_iso(moment)
                    )
                    if run_id is not None:
                        break
                    moment += timedelta(milliseconds=1)
                else:
                    return
                await self._execute(task, run_id, "manual", to_iso(moment), caused_by)
        except Exception:
            log.exception("manual run of task %s failed inside the scheduler", task_id)

    async def _execute(
        self, task: Task, run_id: int, trigger: str, scheduled_for: str, caused_by: int | None
    ) -> None:
        """Run a claimed firing, record how it went, and tell the chat."""
        started = to_iso(self._clock.now())
        self.counts.fired += 1
        event_id = self._log.log_event(
            "scheduled_task",
            task.id,
            summary=f"task {task.id} ({trigger}): {task.what[:80]}",
            content={
                "task": task.id,
                "trigger": trigger,
                "scheduled_for": scheduled_for,
                "what": task.what,
                "chat": task.chat_id,
                "run": run_id,
            },
            caused_by=caused_by,
        )
        await self._repo.attach_event(run_id, event_id)
        refusal = self._rights.refusal(task.chat_id, task.what)
        if refusal is not None:
            await self._refuse(task, run_id, event_id, refusal)
            return
        try:
            async with self._log.action(event_id, "task_run", target=task.chat_id) as act:
                reply = await self._runner.run_task(task, event_id)
                act.content = {"task": task.id, "reply": reply[:500]}
        except Exception as exc:
            self.counts.failed += 1
            error = str(exc) or type(exc).__name__
            finished = to_iso(self._clock.now())
            await self._repo.finish(run_id, "failed", error, finished_at=finished)
            await self._repo.record_outcome(task.id, started, "failed", error)
            await self._notify(task.chat_id, f"Task {task.id} failed: {error}", event_id)
            return
        await self._repo.finish(run_id, "succeeded", finished_at=to_iso(self._clock.now()))
        await self._repo.record_outcome(task.id, started, "ok")
        if reply.strip():
            await self._notify(task.chat_id, reply, event_id)

    async def _refuse(self, task: Task, run_id: int, event_id: int, refusal: Refusal) -> None:
        """Pause, not run, a task whose chat lacks the rights now; record why, tell the admins.

        The refusal is a failed `task_refused` action under the firing's event, so /debug
        why shows it; the admin chats are told, never the task's own chat (it may be the
        one whose rights were taken away).
        """
        now = to_iso(self._clock.now())
        self.counts.failed += 1
        action_id = self._log.log_action(
            event_id,
            "task_refused",
            target=task.chat_id,
            content={"task": task.id, "what": task.what, "chat": task.chat_id},
            ok=False,
            error=refusal.reason,
        )
        await self._repo.finish(run_id, "failed", f"refused: {refusal.reason}", finished_at=now)
        await self._repo.record_outcome(task.id, now, "refused", refusal.reason)
        await self._repo.set_status(task.id, "paused", None)
        await self._arm(task.id)
        log.warning("task %s of %s paused, not run: %s", task.id, task.chat_id, refusal.reason)
        text = refusal_notice(task, refusal, encode(action_id))
        for chat_id in self._rights.admin_chats():
            await self._notify(chat_id, text, event_id)

    async def _advance(self, task: Task, now: datetime) -> None:
        """Store the next fire time after this firing (and after now: no backlog replays)."""
        reference = max(now, task.next_run) if task.next_run is not None else now
        upcoming = next_fire_after(task, reference, self._zone)
        await self._repo.set_next_run(
            task.id,
            None if upcoming is None else to_iso(upcoming),
            expected=task.next_run_at,
            status="done" if upcoming is None else None,
        )

    async def _miss(self, task: Task, due: datetime, late: timedelta) -> None:
        """Record a firing that will not run, tell the chat, and move on to the next one."""
        scheduled_for = task.next_run_at
        assert scheduled_for is not None
        now = self._clock.now()
        note = f"missed while the service was down ({format_duration(late)} late)"
        recorded = await self._repo.record_missed(
            task.id, scheduled_for, at=to_iso(now), error=note
        )
        await self._advance(task, now)
        if not recorded:
            return
        self.counts.missed += 1
        fresh = await self._repo.get(task.id)
        upcoming = fresh.next_run if fresh is not None else None
        following = (
            f" Next run in {format_duration(upcoming - now)}"
            f" ({upcoming.astimezone(self._zone):%Y-%m-%d %H:%M %Z})."
            if upcoming is not None
            else " It does not run again."
        )
        event_id = self._log.log_event(
            "scheduled_task",
            task.id,
            summary=f"task {task.id} missed its run at {scheduled_for}",
            content={
                "task": task.id,
                "scheduled_for": scheduled_for,
                "late_s": int(late.total_seconds()),
            },
        )
        await self._notify(
            task.chat_id,
            f"Task {task.id} ({task.what[:50]}) missed its run at"
            f" {due.astimezone(self._zone):%Y-%m-%d %H:%M %Z}: the service was down"
            f" ({format_duration(late)} late).{following}",
            event_id,
        )

    # ---- plumbing ----------------------------------------------------------------------

    async def _arm(self, task_id: str) -> None:
        """Point the task's timer job at its stored next firing, or remove the job."""
        if not self._timer.running or self._closing:
            return
        task = await self._repo.get(task_id)
        job_id = f"task:{task_id}"
        if task is None or task.status != "active" or task.next_run is None:
            if self._timer.get_job(job_id) is not None:
                with contextlib.suppress(LookupError):
                    self._timer.remove_job(job_id)
            return
        self._timer.add_job(
            self._on_timer,
            DateTrigger(run_date=self._timer_date(task.next_run)),
            args=[task_id],
            id=job_id,
            name=f"task {task_id}",
            replace_existing=True,
        )

    def _timer_date(self, moment: datetime) -> datetime:
        """`moment` on APScheduler's clock (the real one): now + how long our clock waits.

        The same instant with the system clock; with a test clock the timer keeps its
        distance instead of firing everything at once.
        """
        return datetime.now(UTC) + (moment - self._clock.now())

    async def _on_timer(self, task_id: str) -> None:
        """The job: hand off at once, so the job never counts as still running when the
        next one (possibly already due) is armed."""
        self._spawn(self.fire(task_id))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(job)
        job.add_done_callback(self._inflight.discard)

    def _lock(self, task_id: str) -> asyncio.Lock:
        """One firing of a task at a time in this process (a slow run delays the next)."""
        return self._locks.setdefault(task_id, asyncio.Lock())

    async def _reload(self, task: Task) -> Task:
        return await self._repo.get(task.id) or task

    def _changed(self, task: Task, change: str, triggered_by: int | None) -> None:
        self._log.log_action(
            triggered_by,
            "task_changed",
            target=task.chat_id,
            content={"task": task.id, "change": change, "what": task.what},
        )

    async def _notify(self, chat_id: str, text: str, caused_by: int | None) -> None:
        """Tell a chat; a failed send is logged, never raised into the scheduler."""
        try:
            await self._runner.notify(chat_id, text, caused_by)
        except Exception:
            log.exception("could not notify %s", chat_id)
