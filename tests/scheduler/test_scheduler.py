"""The scheduler against a real SQLite file: fire times, claims, restarts, missed runs.

Time is a ManualClock the tests move; `run_due()` / `fire()` are what the timer would
call. One test runs the real APScheduler timer with the system clock.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from assistant.clock import ManualClock, SystemClock
from assistant.errors import CommandError, NotFoundError, StateError
from assistant.scheduler import next_fire_after
from storage.tasks import Task
from storage.timestamps import from_iso, to_iso
from tests.support.scheduler_harness import CHAT, START, Harness, MakeHarness

BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def fire_next(h: Harness, clock: ManualClock, task_id: str) -> str:
    """Move the clock to the task's next firing and let it fire; returns that time."""
    task = await h.tasks.get(task_id)
    assert task is not None and task.next_run is not None
    clock.set(task.next_run)
    assert await h.scheduler.run_due() == 1
    assert task.next_run_at is not None
    return task.next_run_at


# ---- fire times ----------------------------------------------------------------------


async def test_cron_across_spring_forward_in_berlin(harness: Harness, clock: ManualClock) -> None:
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
    clock.set(utc("2026-03-27T12:00:00"))
    task = await harness.scheduler.add(CHAT, "cron", "30 2 * * *", "/status")
    fired = [await fire_next(harness, clock, task.id) for _ in range(4)]
    assert fired == [
        "2026-03-28T01:30:00.000Z",  # 02:30 CET
        "2026-03-29T01:30:00.000Z",  # 03:30 CEST: the missing 02:30, an hour late, once
        "2026-03-30T00:30:00.000Z",  # 02:30 CEST
        "2026-03-31T00:30:00.000Z",
    ]
    assert len(harness.runner.ran) == 4


async def test_cron_across_fall_back_in_berlin_fires_once(
    harness: Harness, clock: ManualClock
) -> None:
    # 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 happens twice that day.
    clock.set(utc("2026-10-23T12:00:00"))
    task = await harness.scheduler.add(CHAT, "cron", "30 2 * * *", "/status")
    fired = [await fire_next(harness, clock, task.id) for _ in range(2)]
    assert fired == ["2026-10-24T00:30:00.000Z", "2026-10-25T00:30:00.000Z"]  # 02:30 CEST
    after = await harness.tasks.get(task.id)
    assert after is not None and after.next_run_at == "2026-10-26T01:30:00.000Z"  # 02:30 CET
    clock.set(utc("2026-10-25T01:30:00"))  # the second 02:30 of the day: nothing to do
    assert await harness.scheduler.run_due() == 0
    assert await fire_next(harness, clock, task.id) == "2026-10-26T01:30:00.000Z"
    on_the_day = [
        r for r in await harness.tasks.runs(task.id) if r.scheduled_for.startswith("2026-10-25")
    ]
    assert len(on_the_day) == 1


def test_wildcard_hour_cron_follows_elapsed_time_through_fall_back() -> None:
    task = Task("x", CHAT, "cron", "30 * * * *", "/status", "active", to_iso(START))
    moment = utc("2026-10-24T23:00:00")
    seen = []
    for _ in range(4):
        found = next_fire_after(task, moment, BERLIN)
        assert found is not None
        seen.append(to_iso(found))
        moment = found
    # 01:30 CEST, 02:30 CEST, 02:30 CET, 03:30 CET: hourly means hourly.
    assert seen == [
        "2026-10-24T23:30:00.000Z",
        "2026-10-25T00:30:00.000Z",
        "2026-10-25T01:30:00.000Z",
        "2026-10-25T02:30:00.000Z",
    ]


async def test_cron_weekdays_mean_what_crontab_means(harness: Harness) -> None:
    # START is Monday 2026-11-23 07:00 CET.
    sunday = await harness.scheduler.add(CHAT, "cron", "0 9 * * 0", "/status")
    also_sunday = await harness.scheduler.add(CHAT, "cron", "0 9 * * 7", "/status")
    weekdays = await harness.scheduler.add(CHAT, "cron", "0 9 * * 1-5", "/status")
    weekend = await harness.scheduler.add(CHAT, "cron", "0 9 * * 6-7", "/status")
    named = await harness.scheduler.add(CHAT, "cron", "0 9 * * sat-sun", "/status")
    every_other = await harness.scheduler.add(CHAT, "cron", "0 9 * * */2", "/status")
    assert sunday.next_run_at == also_sunday.next_run_at == "2026-11-29T08:00:00.000Z"
    assert weekdays.next_run_at == "2026-11-23T08:00:00.000Z"
    assert weekend.next_run_at == named.next_run_at == "2026-11-28T08:00:00.000Z"
    assert every_other.next_run_at == "2026-11-24T08:00:00.000Z"  # */2 = sun, tue, thu, sat


async def test_interval_is_anchored_at_creation(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "every", "1h", "/status")
    assert task.next_run_at == to_iso(START + timedelta(hours=1))
    clock.set(START + timedelta(hours=1, minutes=20))  # the loop was busy: 20 min late
    assert await harness.scheduler.run_due() == 1
    after = await harness.tasks.get(task.id)
    assert after is not None and after.next_run_at == to_iso(START + timedelta(hours=2))
    clock.set(START + timedelta(hours=5, minutes=30))  # far behind: one run, not four
    assert await harness.scheduler.run_due() == 1
    assert await harness.scheduler.run_due() == 0
    after = await harness.tasks.get(task.id)
    assert after is not None and after.next_run_at == to_iso(START + timedelta(hours=6))
    assert len(harness.runner.ran) == 2


async def test_once_runs_then_is_done(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "once", "+90m", "/status")
    assert task.next_run == START + timedelta(minutes=90)
    naive = await harness.scheduler.add(CHAT, "once", "2026-11-23T08:00", "/status")
    assert naive.next_run_at == "2026-11-23T07:00:00.000Z"  # 08:00 in Berlin
    clock.advance(timedelta(minutes=89))
    assert await harness.scheduler.run_due() == 1  # the 08:00 one
    clock.advance(timedelta(minutes=1))
    assert await harness.scheduler.run_due() == 1
    assert await harness.scheduler.run_due() == 0
    done = await harness.tasks.get(task.id)
    assert done is not None
    assert (done.status, done.next_run_at, done.last_outcome) == ("done", None, "ok")
    assert harness.runner.sent[-1] == (CHAT, "done: /status", harness.runner.ran[-1][1])


# ---- firing once, and only once ------------------------------------------------------


async def test_double_trigger_runs_a_firing_once(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "every", "10m", "/status")
    clock.set(START + timedelta(minutes=10))
    results = await asyncio.gather(harness.scheduler.fire(task.id), harness.scheduler.fire(task.id))
    assert sorted(results) == [False, True]
    assert await harness.scheduler.fire(task.id) is False  # and a late third one
    assert len(harness.runner.ran) == 1
    assert len(await harness.tasks.runs(task.id)) == 1


async def test_two_schedulers_on_one_file_run_a_firing_once(
    make_harness: MakeHarness, clock: ManualClock
) -> None:
    first, second = await make_harness(), await make_harness()
    task = await first.scheduler.add(CHAT, "every", "10m", "/status")
    clock.set(START + timedelta(minutes=10))
    results = await asyncio.gather(first.scheduler.fire(task.id), second.scheduler.fire(task.id))
    assert sorted(results) == [False, True]
    assert len(first.runner.ran) + len(second.runner.ran) == 1
    assert len(await first.tasks.runs(task.id)) == 1


async def test_a_firing_claimed_elsewhere_is_skipped_and_the_task_moves_on(
    harness: Harness, clock: ManualClock
) -> None:
    task = await harness.scheduler.add(CHAT, "every", "10m", "/status")
    assert task.next_run_at is not None
    await harness.tasks.claim(task.id, task.next_run_at, "schedule", started_at=task.next_run_at)
    clock.set(START + timedelta(minutes=10))
    assert await harness.scheduler.fire(task.id) is False
    assert harness.runner.ran == []
    after = await harness.tasks.get(task.id)
    assert after is not None and after.next_run_at == to_iso(START + timedelta(minutes=20))


async def test_fire_before_the_time_does_nothing(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "every", "10m", "/status")
    clock.advance(timedelta(minutes=5))
    assert await harness.scheduler.fire(task.id) is False
    assert harness.runner.ran == []


# ---- restarts ------------------------------------------------------------------------


async def test_restart_mid_run_marks_interrupted_and_does_not_rerun(
    make_harness: MakeHarness, clock: ManualClock
) -> None:
    old = await make_harness()
    task = await old.scheduler.add(CHAT, "every", "1h", "train it")
    old.runner.gate = asyncio.Event()  # the run hangs, then the process dies
    clock.set(START + timedelta(hours=1))
    running = asyncio.create_task(old.scheduler.fire(task.id))
    await asyncio.wait_for(old.runner.started.wait(), 2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    (run,) = await old.tasks.runs(task.id)
    assert run.state == "running"

    clock.advance(timedelta(minutes=5))
    new = await make_harness()
    await new.scheduler.start()
    await new.scheduler.wait_idle()
    assert new.runner.ran == []
    assert new.runner.texts == [
        f"Task {task.id} was interrupted by a restart while running; it was not re-run."
    ]
    (run,) = await new.tasks.runs(task.id)
    assert (run.state, run.error) == ("interrupted", "interrupted by a restart")
    after = await new.tasks.get(task.id)
    assert after is not None
    assert after.last_outcome == "interrupted"
    assert after.next_run_at == to_iso(START + timedelta(hours=2))

    again = await make_harness()  # a second restart tells nobody again
    await again.scheduler.start()
    assert again.runner.sent == []


async def test_grace_policy_runs_a_recent_miss_once(
    make_harness: MakeHarness, clock: ManualClock
) -> None:
    before = await make_harness()
    task = await before.scheduler.add(CHAT, "every", "10m", "/status")
    clock.set(START + timedelta(minutes=45))  # down through four firings, last one 5 min ago
    after = await make_harness(missed_run_policy="grace", missed_run_grace_s=3600)
    await after.scheduler.start()
    await after.scheduler.wait_idle()
    assert len(after.runner.ran) == 1
    (run,) = await after.tasks.runs(task.id)
    assert (run.trigger, run.state, run.scheduled_for) == (
        "catch-up",
        "succeeded",
        to_iso(START + timedelta(minutes=10)),
    )
    fresh = await after.tasks.get(task.id)
    assert fresh is not None and fresh.next_run_at == to_iso(START + timedelta(minutes=50))


async def test_grace_policy_records_an_old_miss(
    make_harness: MakeHarness, clock: ManualClock
) -> None:
    before = await make_harness()
    task = await before.scheduler.add(CHAT, "cron", "0 9 * * *", "/status")
    clock.set(utc("2026-11-23T10:30:00"))  # 09:00 CET was 08:00Z: 2h30m late
    after = await make_harness(missed_run_policy="grace", missed_run_grace_s=3600)
    await after.scheduler.start()
    await after.scheduler.wait_idle()
    assert after.runner.ran == []
    (run,) = await after.tasks.runs(task.id)
    assert (run.state, run.scheduled_for) == ("missed", "2026-11-23T08:00:00.000Z")
    assert after.runner.texts == [
        f"Task {task.id} (/status) missed its run at 2026-11-23 09:00 CET: the service was"
        " down (2h 30m late). Next run in 21h 30m (2026-11-24 09:00 CET)."
    ]
    fresh = await after.tasks.get(task.id)
    assert fresh is not None
    assert (fresh.last_outcome, fresh.next_run_at) == ("missed", "2026-11-24T08:00:00.000Z")


async def test_skip_policy_never_catches_up(make_harness: MakeHarness, clock: ManualClock) -> None:
    before = await make_harness()
    task = await before.scheduler.add(CHAT, "once", "+10m", "/status")
    clock.advance(timedelta(minutes=11))
    after = await make_harness(missed_run_policy="skip")
    await after.scheduler.start()
    await after.scheduler.wait_idle()
    assert after.runner.ran == []
    assert "It does not run again." in after.runner.texts[0]
    fresh = await after.tasks.get(task.id)
    assert fresh is not None and (fresh.status, fresh.last_outcome) == ("done", "missed")


async def test_always_policy_runs_once_however_late(
    make_harness: MakeHarness, clock: ManualClock
) -> None:
    before = await make_harness()
    task = await before.scheduler.add(CHAT, "every", "1h", "/status")
    clock.advance(timedelta(days=3, minutes=30))
    after = await make_harness(missed_run_policy="always")
    await after.scheduler.start()
    await after.scheduler.wait_idle()
    assert len(after.runner.ran) == 1
    (run,) = await after.tasks.runs(task.id)
    assert run.trigger == "catch-up"
    fresh = await after.tasks.get(task.id)
    assert fresh is not None and fresh.next_run == START + timedelta(days=3, hours=1)


# ---- failures, changes, manual runs ---------------------------------------------------


async def test_a_failing_task_is_recorded_and_reported(
    harness: Harness, clock: ManualClock
) -> None:
    task = await harness.scheduler.add(CHAT, "every", "10m", "/status")
    harness.runner.fail_with = RuntimeError("GPU 0 is busy")
    await fire_next(harness, clock, task.id)
    (run,) = await harness.tasks.runs(task.id)
    assert (run.state, run.error) == ("failed", "GPU 0 is busy")
    failed = await harness.tasks.get(task.id)
    assert failed is not None
    assert (failed.last_outcome, failed.last_error) == ("failed", "GPU 0 is busy")
    event_id = harness.runner.ran[0][1]
    assert harness.runner.sent == [(CHAT, f"Task {task.id} failed: GPU 0 is busy", event_id)]

    harness.runner.fail_with = None  # the scheduler carries on
    await fire_next(harness, clock, task.id)
    ok = await harness.tasks.get(task.id)
    assert ok is not None and (ok.last_outcome, ok.last_error) == ("ok", None)


async def test_firing_is_traced_as_event_then_action(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "every", "10m", "/status", triggered_by=None)
    await fire_next(harness, clock, task.id)
    await harness.log.flush()
    event = await harness.db.fetchone(
        "SELECT id, source_id FROM event_log WHERE source = 'scheduled_task'"
    )
    assert event is not None and event["source_id"] == task.id
    assert harness.runner.ran[0][1] == event["id"]
    actions = await harness.db.fetchall(
        "SELECT action_type, triggered_by, target, ok FROM action_log ORDER BY id"
    )
    assert [tuple(a) for a in actions] == [
        ("task_scheduled", None, CHAT, 1),
        ("task_run", event["id"], CHAT, 1),
    ]
    (run,) = await harness.tasks.runs(task.id)
    assert run.event_id == event["id"]


async def test_pause_resume_delete(harness: Harness, clock: ManualClock) -> None:
    task = await harness.scheduler.add(CHAT, "cron", "0 2 * * *", "/status")
    assert task.next_run_at == "2026-11-24T01:00:00.000Z"
    paused = await harness.scheduler.pause(task.id[:4])
    assert (paused.status, paused.next_run_at) == ("paused", None)
    with pytest.raises(StateError, match=f"^task {task.id} is already paused$"):
        await harness.scheduler.pause(task.id)
    clock.advance(timedelta(days=3))
    assert await harness.scheduler.run_due() == 0
    resumed = await harness.scheduler.resume(task.id)
    # From now: the three 02:00 runs missed while paused are not replayed.
    assert (resumed.status, resumed.next_run_at) == ("active", "2026-11-27T01:00:00.000Z")
    assert harness.runner.ran == []
    with pytest.raises(StateError, match=f"^task {task.id} is not paused$"):
        await harness.scheduler.resume(task.id)
    deleted = await harness.scheduler.delete(task.id)
    assert deleted.id == task.id
    assert await harness.tasks.get(task.id) is None
    with pytest.raises(NotFoundError):
        await harness.scheduler.delete(task.id)
    await harness.log.flush()
    changes = await harness.db.fetchall(
        "SELECT content FROM action_log WHERE action_type = 'task_changed' ORDER BY id"
    )
    assert [json.loads(c["content"])["change"] for c in changes] == [
        "paused",
        "resumed",
        "deleted",
    ]


async def test_done_and_passed_one_offs_refuse_changes(
    harness: Harness, clock: ManualClock
) -> None:
    done = await harness.scheduler.add(CHAT, "once", "+10m", "/status")
    await fire_next(harness, clock, done.id)
    with pytest.raises(StateError, match="is done; it does not run again"):
        await harness.scheduler.pause(done.id)
    with pytest.raises(StateError, match="is done; it does not run again"):
        await harness.scheduler.resume(done.id)
    later = await harness.scheduler.add(CHAT, "once", "+1h", "/status")
    await harness.scheduler.pause(later.id)
    clock.advance(timedelta(hours=2))
    with pytest.raises(StateError, match="passed while it was paused"):
        await harness.scheduler.resume(later.id)


async def test_run_now_is_manual_and_leaves_the_schedule(
    harness: Harness, clock: ManualClock
) -> None:
    task = await harness.scheduler.add(CHAT, "every", "1h", "/status")
    await harness.scheduler.pause(task.id)
    await harness.scheduler.run_now(task.id[:3], caused_by=None)
    await harness.scheduler.run_now(task.id, caused_by=None)  # same millisecond: both run
    await harness.scheduler.wait_idle()
    assert len(harness.runner.ran) == 2
    runs = await harness.tasks.runs(task.id)
    assert {r.trigger for r in runs} == {"manual"}
    async with harness.log.action(None, "command", target="/task") as asked:
        await harness.scheduler.run_now(task.id, caused_by=asked.id)
    await harness.scheduler.wait_idle()
    await harness.log.flush()
    chained = await harness.db.fetchall(
        "SELECT caused_by FROM event_log WHERE source = 'scheduled_task' ORDER BY id"
    )
    assert [row["caused_by"] for row in chained] == [None, None, asked.id]
    after = await harness.tasks.get(task.id)
    assert after is not None and (after.status, after.next_run_at) == ("paused", None)

    await harness.scheduler.resume(task.id)
    resumed = await harness.tasks.get(task.id)
    assert resumed is not None and resumed.next_run is not None
    clock.set(resumed.next_run)  # a manual run in the very millisecond of a scheduled one
    await harness.scheduler.run_now(task.id, caused_by=None)
    await harness.scheduler.wait_idle()
    assert await harness.scheduler.run_due() == 1  # both run


async def test_add_refuses_bad_input_and_changes_nothing(harness: Harness) -> None:
    cases = {
        ("cron", "0 2 * *"): "a cron expression has 5 fields",
        ("cron", "61 2 * * *"): "bad cron expression '61 2 * * *'",
        ("cron", "0 2 * * funday"): "'funday' is not a weekday",
        ("cron", "0 2 1 * 1"): "restricts both day of month and weekday",
        ("cron", "0 0 31 2 *"): "never matches a date",
        ("every", "5s"): "5s is too short; the shortest is 10s",
        ("every", "often"): "'often' is not a duration",
        ("once", "2026-11-22T09:00"): "that time is in the past (2026-11-22 09:00 CET, 22h ago)",
        ("once", "tomorrow"): "could not read 'tomorrow' as a time",
        ("hourly", "1h"): "unknown kind 'hourly'",
    }
    for (kind, schedule), problem in cases.items():
        with pytest.raises(CommandError) as err:
            await harness.scheduler.add(CHAT, kind, schedule, "/status")
        assert problem in str(err.value), (kind, schedule, str(err.value))
    with pytest.raises(CommandError, match="missing what the task should do"):
        await harness.scheduler.add(CHAT, "every", "1h", "   ")
    for kind in ("cron",):
        with pytest.raises(CommandError, match=r'e\.g\. "0 2 \* \* \*"'):
            await harness.scheduler.add(CHAT, kind, "bad", "/status")
    assert await harness.tasks.list_all() == []


async def test_summary_and_run_retention(make_harness: MakeHarness, clock: ManualClock) -> None:
    h = await make_harness(task_run_retention_days=1, prune_batch=2)
    every = await h.scheduler.add(CHAT, "every", "10m", "/status")
    await h.scheduler.add(CHAT, "once", "+3d", "/status")
    paused = await h.scheduler.add(CHAT, "every", "1h", "/status")
    await h.scheduler.pause(paused.id)
    summary = await h.scheduler.summary()
    assert (summary.active, summary.paused, summary.done) == (2, 1, 0)
    assert summary.next_due is not None and summary.next_due.id == every.id
    for _ in range(5):
        await fire_next(h, clock, every.id)
    clock.set(START + timedelta(days=1, hours=2))
    assert await h.scheduler.run_due() == 1  # a fresh run, which stays
    assert await h.scheduler.prune_runs() == 5
    assert len(await h.tasks.runs(every.id)) == 1
    keep = await make_harness(task_run_retention_days=0)
    assert await keep.scheduler.prune_runs() == 0


# ---- the real timer ------------------------------------------------------------------


async def test_the_apscheduler_timer_fires_a_task(make_harness: MakeHarness) -> None:
    h = await make_harness(SystemClock())
    await h.scheduler.start()
    task = await h.scheduler.add(CHAT, "once", "+1s", "/status")
    await asyncio.wait_for(h.runner.delivered.wait(), 3)
    assert h.runner.sent[0][:2] == (CHAT, "done: /status")
    (run,) = await h.tasks.runs(task.id)
    assert (run.trigger, run.state, run.scheduled_for) == (
        "schedule",
        "succeeded",
        task.next_run_at,
    )
    done = await h.tasks.get(task.id)
    assert done is not None and done.status == "done"
    assert from_iso(run.started_at) >= from_iso(run.scheduled_for) - timedelta(seconds=0.5)


async def test_one_unreadable_task_does_not_stop_start(
    make_harness: MakeHarness, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = await make_harness()
    good = await h.scheduler.add(CHAT, "every", "10m", "/status")
    broken = Task("broken01", CHAT, "cron", "not cron", "/status", "active", to_iso(START))
    await h.tasks.create(broken)  # next_run_at is NULL and the expression unreadable
    await h.scheduler.start()
    assert "could not schedule task broken01 at start" in caplog.text
    clock.set(START + timedelta(minutes=10))
    assert await h.scheduler.run_due() == 1
    assert [task.id for task, _ in h.runner.ran] == [good.id]
