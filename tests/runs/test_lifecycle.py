"""The run lifecycle: its moves, the events they write, and that nothing else writes a state."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from assistant.clock import ManualClock
from assistant.observability import EventLog
from assistant.runs.lifecycle import (
    ACTIVE,
    ENDED,
    HELD,
    LIVE,
    MOVES,
    IllegalMove,
    Lifecycle,
    RunState,
)
from storage.db import Database
from storage.runs import Progress, RunRecord, RunRepo

ROOT = Path(__file__).resolve().parents[2]
WRITERS = {"assistant/runs/lifecycle.py", "storage/runs.py"}


def test_only_the_lifecycle_writes_a_state() -> None:
    """No module but lifecycle.py calls set_state, or apply with a state."""
    offenders = []
    for folder in ("assistant", "commands", "storage"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in WRITERS or name.startswith("assistant/jobs/"):  # in the run: no repo
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                attr = node.func.attr
                if attr == "set_state" or (
                    attr == "apply" and any(k.arg == "state" for k in node.keywords)
                ):
                    offenders.append(f"{name}:{node.lineno} {attr}")
    assert offenders == []


def test_the_sets_cover_every_state_once_and_ended_states_never_move() -> None:
    groups = [set(ACTIVE), set(ENDED), set(HELD)]
    assert set().union(*groups) == set(RunState)
    assert sum(len(g) for g in groups) == len(RunState)
    assert set(LIVE) == set(ACTIVE) - {RunState.QUEUED}
    assert all(not MOVES[s] for s in ENDED)
    assert set(MOVES) == set(RunState)


@pytest.fixture
async def lifecycle(db: Database, event_log: EventLog) -> tuple[Lifecycle, RunRepo]:
    repo = RunRepo(db)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    return Lifecycle(repo, event_log, clock), repo


async def _new(repo: RunRepo) -> RunRecord:
    return await repo.create(
        kind="train",
        recipe="gpt",
        params={},
        image="img",
        gpus_wanted=0,
        nproc=1,
        memory_mb=None,
        cpus=None,
        chat_id="tg:1",
        total=None,
        now="2026-01-01T00:00:00.000Z",
        state=RunState.QUEUED,
    )


async def test_a_move_is_stored_with_its_history_and_an_event(
    lifecycle: tuple[Lifecycle, RunRepo], db: Database, event_log: EventLog
) -> None:
    life, repo = lifecycle
    run = await _new(repo)
    event = await life.move(run, RunState.STARTING, summary="run starting", gpus=[])
    assert event is not None
    stored = await repo.get(run.id)
    assert stored is not None and stored.state == "starting"
    assert [s for _, s, _ in await repo.history(run.id)] == ["queued", "starting"]
    await event_log.flush()
    row = await db.fetchone("SELECT source_id, summary FROM event_log WHERE id = ?", (event,))
    assert row is not None and (row["source_id"], row["summary"]) == (run.id, "run starting")


async def test_an_illegal_move_raises_and_writes_nothing(
    lifecycle: tuple[Lifecycle, RunRepo],
) -> None:
    life, repo = lifecycle
    run = await _new(repo)
    with pytest.raises(IllegalMove, match="queued -> running"):
        await life.move(run, RunState.RUNNING)
    with pytest.raises(IllegalMove):
        life.announce(run, RunState.PAUSED)
    cancelled = await life.move(run, RunState.CANCELLED, "cancelled while queued")
    assert cancelled is not None
    ended = await repo.get(run.id)
    assert ended is not None
    with pytest.raises(IllegalMove, match="cancelled -> queued"):
        await life.move(ended, RunState.QUEUED)
    assert [s for _, s, _ in await repo.history(run.id)] == ["queued", "cancelled"]


async def test_a_stale_record_does_not_overwrite_a_newer_state(
    lifecycle: tuple[Lifecycle, RunRepo],
) -> None:
    """The stored state decides: a pass that read `starting` cannot undo a stop since."""
    life, repo = lifecycle
    run = await _new(repo)
    await life.move(run, RunState.STARTING)
    starting = await repo.get(run.id)
    assert starting is not None
    await life.move(starting, RunState.STOPPING, "stop asked")
    move = life.announce(starting, RunState.RUNNING, "started")
    assert not await life.record(starting, Progress(offset=10, step=1), move)
    after = await repo.get(run.id)
    assert after is not None and after.state == "stopping" and after.events_offset == 10
    assert await life.move(starting, RunState.QUEUED) is None  # stopping -> queued: no
    assert [s for _, s, _ in await repo.history(run.id)] == ["queued", "starting", "stopping"]


def _diagram(text: str) -> list[str]:
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_the_state_diagram_is_the_same_in_the_docs_and_true_to_the_table() -> None:
    import assistant.runs.lifecycle as lifecycle

    mine = _diagram(lifecycle.__doc__ or "")
    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert mine == _diagram(docs[docs.index("**States.**") :])
    states = {s.value for s in RunState}
    for line in mine[1:]:
        start, _, rest = line.partition(" --> ")
        end = rest.split(":", 1)[0].strip()
        if start in states and end in states:
            assert RunState(end) in MOVES[RunState(start)], line
        elif start in states:  # ENDED_OR_PAUSED: whatever settle() gives
            assert {RunState.SUCCEEDED, RunState.PAUSED} <= MOVES[RunState(start)], line
