"""The tasks table and its runs: prefixes, the claim, interruption, retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.errors import AmbiguousIdError, NotFoundError
from storage.db import Database
from storage.tasks import Task, TaskRepo

T0 = "2026-11-23T06:00:00.000Z"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "a.db")
    yield database
    await database.aclose()


@pytest.fixture
def repo(db: Database) -> TaskRepo:
    return TaskRepo(db)


def task(task_id: str, **changes: str | None) -> Task:
    fields: dict[str, str | None] = {
        "chat_id": "tg:1",
        "kind": "every",
        "schedule": "3600",
        "what": "/status",
        "status": "active",
        "created_at": T0,
        "next_run_at": "2026-11-23T07:00:00.000Z",
        **changes,
    }
    return Task(id=task_id, **fields)  # type: ignore[arg-type]


async def test_create_get_and_list_order(repo: TaskRepo) -> None:
    await repo.create(task("aaaa1111", next_run_at="2026-11-23T09:00:00.000Z"))
    await repo.create(task("bbbb2222", status="paused", next_run_at=None))
    await repo.create(task("cccc3333", next_run_at="2026-11-23T08:00:00.000Z"))
    await repo.create(task("dddd4444", status="done", next_run_at=None))
    got = await repo.get("aaaa1111")
    assert got == task("aaaa1111", next_run_at="2026-11-23T09:00:00.000Z")
    assert await repo.get("nope") is None
    assert [t.id for t in await repo.list_all()] == ["cccc3333", "aaaa1111", "bbbb2222", "dddd4444"]
    assert await repo.counts() == {"active": 2, "paused": 1, "done": 1}
    due = await repo.next_due()
    assert due is not None and due.id == "cccc3333"
    assert [t.id for t in await repo.due("2026-11-23T08:30:00.000Z")] == ["cccc3333"]


async def test_resolve_like_git(repo: TaskRepo) -> None:
    for task_id in ("ab12cd34", "ab12zz99", "ab1", "k7m2p9q4"):
        await repo.create(task(task_id))
    assert (await repo.resolve("k7")).id == "k7m2p9q4"
    assert (await repo.resolve("AB12CD")).id == "ab12cd34"  # case does not matter
    assert (await repo.resolve("ab1")).id == "ab1"  # an exact id wins over longer ones
    with pytest.raises(AmbiguousIdError) as err:
        await repo.resolve("ab12")
    assert err.value.candidates == ["ab12cd34", "ab12zz99"]
    assert "ab12cd34, ab12zz99" in str(err.value)
    with pytest.raises(NotFoundError) as missing:
        await repo.resolve("zz")
    assert str(missing.value) == "no task with id starting 'zz'; /task list shows ids"
    with pytest.raises(NotFoundError):
        await repo.resolve("%")  # LIKE wildcards are plain characters here
    with pytest.raises(NotFoundError):
        await repo.resolve("")


async def test_claim_is_once_per_firing(repo: TaskRepo) -> None:
    await repo.create(task("t1"))
    at = "2026-11-23T07:00:00.000Z"
    first = await repo.claim("t1", at, "schedule", started_at=at)
    assert first is not None
    assert await repo.claim("t1", at, "catch-up", started_at=at) is None
    assert await repo.claim("t1", "2026-11-23T08:00:00.000Z", "schedule", started_at=at)
    assert await repo.claim("gone", at, "schedule", started_at=at) is None
    await repo.finish(first, "failed", "boom", finished_at="2026-11-23T07:00:01.000Z")
    (newest, older) = await repo.runs("t1")
    assert older.state == "failed" and older.error == "boom" and older.trigger == "schedule"
    assert newest.state == "running"
    assert (await repo.last_runs())["t1"].id == newest.id


async def test_set_next_run_is_compare_and_set(repo: TaskRepo) -> None:
    await repo.create(task("t1"))
    old = "2026-11-23T07:00:00.000Z"
    new = "2026-11-23T08:00:00.000Z"
    assert await repo.set_next_run("t1", new, expected=old)
    assert not await repo.set_next_run("t1", "2026-11-23T09:00:00.000Z", expected=old)
    await repo.set_status("t1", "paused", None)
    assert not await repo.set_next_run("t1", new, expected=None)  # paused stays paused
    await repo.set_status("t1", "active", new)
    assert await repo.set_next_run("t1", None, expected=new, status="done")
    done = await repo.get("t1")
    assert done is not None and done.status == "done" and done.next_run_at is None


async def test_missed_is_recorded_once_and_becomes_last_outcome(repo: TaskRepo) -> None:
    await repo.create(task("t1"))
    at = "2026-11-23T07:00:00.000Z"
    assert await repo.record_missed("t1", at, at="2026-11-23T10:00:00.000Z", error="down")
    assert not await repo.record_missed("t1", at, at="2026-11-23T10:00:01.000Z")
    got = await repo.get("t1")
    assert got is not None
    assert (got.last_outcome, got.last_run_at, got.last_error) == ("missed", at, "down")
    assert await repo.claim("t1", at, "catch-up", started_at=at) is None  # it is settled


async def test_mark_interrupted_reports_each_run_once(repo: TaskRepo) -> None:
    await repo.create(task("t1"))
    await repo.create(task("t2"))
    await repo.claim("t1", "2026-11-23T07:00:00.000Z", "schedule", started_at=T0)
    done = await repo.claim("t2", "2026-11-23T07:00:00.000Z", "schedule", started_at=T0)
    assert done is not None
    await repo.finish(done, "succeeded", finished_at=T0)
    assert [r.task_id for r in await repo.interrupted_runs()] == ["t1"]
    changed = await repo.mark_interrupted(at="2026-11-23T08:00:00.000Z", error="restart")
    assert [(r.task_id, r.state) for r in changed] == [("t1", "interrupted")]
    assert await repo.mark_interrupted(at="2026-11-23T08:00:01.000Z", error="restart") == []
    t1 = await repo.get("t1")
    assert t1 is not None and t1.last_outcome == "interrupted"


async def test_delete_cascades_to_runs(repo: TaskRepo, db: Database) -> None:
    await repo.create(task("t1"))
    await repo.claim("t1", "2026-11-23T07:00:00.000Z", "schedule", started_at=T0)
    assert await repo.delete("t1")
    assert not await repo.delete("t1")
    assert await db.scalar("SELECT count(*) FROM task_runs") == 0


async def test_prune_deletes_old_finished_runs_in_bounded_batches(
    repo: TaskRepo, db: Database
) -> None:
    await repo.create(task("t1"))
    for day in range(1, 8):
        at = f"2026-11-0{day}T00:00:00.000Z"
        run = await repo.claim("t1", at, "schedule", started_at=at)
        assert run is not None
        await repo.finish(run, "succeeded", finished_at=at)
    await repo.claim("t1", "2026-10-01T00:00:00.000Z", "schedule", started_at=T0)  # running
    cutoff = "2026-11-06T00:00:00.000Z"
    assert await repo.prune_runs(cutoff, 2) == 2
    assert await repo.prune_runs(cutoff, 2) == 2
    assert await repo.prune_runs(cutoff, 2) == 1
    assert await repo.prune_runs(cutoff, 2) == 0
    left = sorted(r.scheduled_for[:10] for r in await repo.runs("t1"))
    assert left == ["2026-10-01", "2026-11-06", "2026-11-07"]
    assert await db.scalar("SELECT count(*) FROM task_runs WHERE state = 'running'") == 1
