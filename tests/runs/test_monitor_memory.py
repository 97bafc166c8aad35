"""The monitor keeps its live runs and their files' read positions in memory between passes.

What it keeps must never hide what happened: lines appended between passes are read
once, a file truncated or replaced is read from its start, a file longer than one read
is read on even though it no longer changes, and a run launched, stopped or changed by
another path (here a second SQLite connection, as another process would write) is seen
by the next pass. A pass is driven by hand; the runner says every run still runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.jobs import protocol
from assistant.orchestrator import Orchestrator
from assistant.runs.events import MAX_READ
from assistant.services import Services
from storage.runs import RunRecord
from storage.timestamps import to_iso
from tests.support.recording import RecordingChannel
from tests.support.still_running import StillRunning, running_run


def progress(step: int) -> str:
    return json.dumps({"type": "progress", "step": step, "loss": 1.0}) + "\n"


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(
        assistant_home=tmp_path / "home",
        admin_chats=("tg:1",),
        runner="process",
        gpus="none",
        http_address="off",
        _env_file=None,  # type: ignore[call-arg]
    )
    async with Orchestrator(settings, channels=[RecordingChannel()], runner=StillRunning()) as orch:
        s = orch.services
        await s.monitor.aclose()  # the test drives the passes
        yield s


async def running(s: Services, lines: str = "") -> tuple[RunRecord, Path]:
    """A run in state running with its run dir and events.jsonl, made through the repo."""
    run, run_dir = await running_run(s)
    events = run_dir / protocol.EVENTS
    events.write_text(lines)
    return run, events


def other_connection(s: Services) -> sqlite3.Connection:
    """The database as another process sees it: its own connection, not the service's."""
    conn = sqlite3.connect(s.settings.db_path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


async def stored(s: Services, run_id: str) -> RunRecord:
    run = await s.runs.repo.get(run_id)
    assert run is not None
    return run


async def test_lines_appended_between_passes_are_read_exactly_once(services: Services) -> None:
    s = services
    run, events = await running(s, progress(1) + progress(2))
    await s.monitor.poll()
    assert (await stored(s, run.id)).step == 2
    absorbed = s.monitor.events_absorbed
    for _ in range(3):  # nothing new: nothing read again
        await s.monitor.poll()
    assert s.monitor.events_absorbed == absorbed
    with events.open("a") as fh:
        fh.write(progress(3) + progress(4) + '{"type": "progr')  # a torn last line waits
    await s.monitor.poll()
    await s.monitor.poll()
    after = await stored(s, run.id)
    assert s.monitor.events_absorbed == absorbed + 2
    assert after.step == 4
    assert after.events_offset == events.stat().st_size - len('{"type": "progr')
    with events.open("a") as fh:
        fh.write('ess", "step": 5}\n')
    await s.monitor.poll()
    await s.monitor.poll()
    assert s.monitor.events_absorbed == absorbed + 3
    assert (await stored(s, run.id)).events_offset == events.stat().st_size


async def test_a_file_replaced_by_a_shorter_one_is_read_from_its_start(
    services: Services,
) -> None:
    s = services
    run, events = await running(s, "".join(progress(i) for i in range(1, 6)))
    await s.monitor.poll()
    assert (await stored(s, run.id)).step == 5
    fresh = events.with_name("events.new")
    fresh.write_text(progress(7))
    os.replace(fresh, events)  # a new inode, smaller than the offset
    await s.monitor.poll()
    after = await stored(s, run.id)
    assert after.step == 7
    assert after.events_offset == events.stat().st_size


async def test_a_file_truncated_in_place_is_read_from_its_start(services: Services) -> None:
    s = services
    run, events = await running(s, "".join(progress(i) for i in range(1, 6)))
    await s.monitor.poll()
    inode = events.stat().st_ino
    events.write_text(progress(9))  # the same file, cut and written again
    assert events.stat().st_ino == inode
    await s.monitor.poll()
    after = await stored(s, run.id)
    assert after.step == 9
    assert after.events_offset == events.stat().st_size


async def test_a_file_replaced_by_a_longer_one_is_read_from_its_start(
    services: Services,
) -> None:
    s = services
    run, events = await running(s, progress(1) + progress(2))
    await s.monitor.poll()
    absorbed = s.monitor.events_absorbed
    fresh = events.with_name("events.new")
    fresh.write_text("".join(progress(i) for i in range(10, 14)))
    os.replace(fresh, events)  # another file, longer than the old offset
    await s.monitor.poll()
    after = await stored(s, run.id)
    assert s.monitor.events_absorbed == absorbed + 4  # all of it, not its tail
    assert after.step == 13
    assert after.events_offset == events.stat().st_size
    assert not s.monitor.trouble.get(run.id)  # no line cut in the middle was skipped


async def test_a_file_longer_than_one_read_is_read_on_without_changing(
    services: Services,
) -> None:
    s = services
    line = progress(1)
    count = MAX_READ // len(line) + 100  # past one pass's bound
    run, events = await running(s, line * (count - 1) + progress(2))
    await s.monitor.poll()
    first = await stored(s, run.id)
    assert 0 < first.events_offset < events.stat().st_size
    await s.monitor.poll()  # the file did not change, but it was not read to its end
    after = await stored(s, run.id)
    assert after.events_offset == events.stat().st_size
    assert after.step == 2


async def test_a_symlink_swapped_in_after_a_read_is_still_refused(
    services: Services, tmp_path: Path
) -> None:
    s = services
    run, events = await running(s, progress(1))
    await s.monitor.poll()
    secret = tmp_path / "secret.jsonl"
    secret.write_text("".join(progress(i) for i in range(100, 110)))
    events.unlink()
    events.symlink_to(secret)
    await s.monitor.poll()
    after = await stored(s, run.id)
    assert after.step == 1  # nothing read through the link
    trouble = s.monitor.trouble.get(run.id)
    assert trouble is not None and trouble.problem is not None
    assert "not a regular file" in trouble.problem
    events.unlink()
    events.write_text(progress(1) + progress(3))  # a regular file again: a new one
    await s.monitor.poll()
    assert (await stored(s, run.id)).step == 3


async def test_a_run_inserted_by_another_path_is_followed_by_the_next_pass(
    services: Services,
) -> None:
    s = services
    first, _ = await running(s, progress(1))
    await s.monitor.poll()  # the monitor has its runs in memory now
    now = to_iso(s.clock.now())
    conn = other_connection(s)
    try:
        conn.execute(
            "INSERT INTO runs (id, kind, recipe, params, image, chat_id, state, created_at,"
            " runner, handle, started_at) VALUES ('zz9999', 'train', 'gpt', '{}', 'img',"
            " 'tg:1', 'running', ?, 'process', '1', ?)",
            (now, now),
        )
    finally:
        conn.close()
    run_dir = s.runs.run_dir("zz9999")
    run_dir.mkdir(parents=True)
    (run_dir / protocol.EVENTS).write_text(progress(6))
    await s.monitor.poll()
    assert (await stored(s, "zz9999")).step == 6
    assert (await stored(s, first.id)).step == 1


async def test_a_run_stopped_elsewhere_leaves_the_pass(services: Services) -> None:
    s = services
    gone, gone_events = await running(s, progress(1))
    kept, kept_events = await running(s, progress(1))
    await s.monitor.poll()
    conn = other_connection(s)
    try:
        conn.execute("UPDATE runs SET state = 'cancelled' WHERE id = ?", (gone.id,))
    finally:
        conn.close()
    offset = (await stored(s, gone.id)).events_offset
    for events in (gone_events, kept_events):
        with events.open("a") as fh:
            fh.write(progress(2))
    await s.monitor.poll()
    assert (await stored(s, gone.id)).events_offset == offset  # not followed any more
    assert (await stored(s, gone.id)).step == 1
    assert (await stored(s, kept.id)).step == 2


async def test_a_run_changed_elsewhere_is_read_again(services: Services) -> None:
    s = services
    run, _ = await running(s, progress(1) + progress(2))
    await s.monitor.poll()
    absorbed = s.monitor.events_absorbed
    conn = other_connection(s)
    try:  # e.g. an operator rewinding the offset by hand: the database is the truth
        conn.execute("UPDATE runs SET events_offset = 0, step = 0 WHERE id = ?", (run.id,))
    finally:
        conn.close()
    await s.monitor.poll()
    assert s.monitor.events_absorbed == absorbed + 2
    assert (await stored(s, run.id)).step == 2


async def test_every_write_raises_the_rows_rev(services: Services) -> None:
    s = services
    run, _ = await running(s)
    before = (await stored(s, run.id)).rev
    top = await s.runs.repo.max_rev()
    await s.runs.repo.update(run.id, step=3)
    mine = (await stored(s, run.id)).rev
    assert mine > before and mine > top
    conn = other_connection(s)
    try:
        conn.execute("UPDATE runs SET step = 4 WHERE id = ?", (run.id,))
    finally:
        conn.close()
    theirs = (await stored(s, run.id)).rev
    assert theirs > mine
    assert await s.runs.repo.changes(mine) == [(run.id, theirs, "running")]
    assert await s.runs.repo.changes(theirs) == []


async def test_a_run_whose_write_fails_costs_the_others_nothing(services: Services) -> None:
    s = services
    good, good_events = await running(s, progress(1))
    bad, _ = await running(s, progress(1))
    conn = other_connection(s)
    try:  # the database refuses this one run's progress (as a full disk or a bad row would)
        conn.execute(
            "CREATE TRIGGER refuse_one BEFORE UPDATE OF events_offset ON runs"
            f" WHEN NEW.id = '{bad.id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    finally:
        conn.close()
    await s.monitor.poll()
    assert (await stored(s, good.id)).step == 1
    assert (await stored(s, bad.id)).events_offset == 0
    trouble = s.monitor.trouble.get(bad.id)
    assert trouble is not None and trouble.failures == 1
    assert s.monitor.pass_failures == 1
    with good_events.open("a") as fh:
        fh.write(progress(2))
    await s.monitor.poll()
    assert (await stored(s, good.id)).step == 2
    assert s.monitor.pass_failures == 2  # the bad one failed again, alone
