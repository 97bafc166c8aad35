"""A `RunRecord` with every field set, changed where a test says."""

from __future__ import annotations

from storage.runs import RunRecord


def record(**changes: object) -> RunRecord:
    base = dict(
        id="ab12cd",
        kind="train",
        recipe="gpt",
        params={},
        image="img",
        gpus_wanted=0,
        gpus=[],
        nproc=1,
        memory_mb=64,
        cpus=1.0,
        chat_id="tg:1",
        state="running",
        runner="process",
        handle="1",
        created_at="2026-01-01T00:00:00.000Z",
        started_at="2026-01-01T00:00:00.000Z",
        ended_at=None,
        step=0,
        total=10,
        metrics={},
        best={},
        checkpoint=None,
        exit_code=None,
        error=None,
        events_offset=0,
        last_beat_at=None,
        stalled=False,
        retry_of=None,
        launch_action=None,
    )
    base.update(changes)
    return RunRecord(**base)  # type: ignore[arg-type]
