"""Reading events.jsonl from an offset, and deciding how a run ended."""

from __future__ import annotations

import json
from pathlib import Path

from assistant.jobs import protocol
from assistant.runs.events import EventBatch, read_new
from assistant.runs.lifecycle import settle
from assistant.runs.runner import ExitInfo
from tests.support.run_records import record


def test_only_complete_lines_are_read_and_the_offset_follows(tmp_path: Path) -> None:
    path = tmp_path / protocol.EVENTS
    path.write_bytes(b'{"type":"started","step":0}\n{"type":"progress","step":1}\n{"type":"prog')
    first = read_new(tmp_path, 0)
    assert [e["type"] for e in first.events] == ["started", "progress"]
    with open(path, "ab") as fh:
        fh.write(b'ress","step":2}\n')
    more = read_new(tmp_path, first.offset)
    assert [e["step"] for e in more.events] == [2]
    assert more.offset == path.stat().st_size
    assert read_new(tmp_path, more.offset) == EventBatch([], more.offset)


def test_a_missing_file_reads_nothing(tmp_path: Path) -> None:
    assert read_new(tmp_path, 0) == EventBatch([], 0)


def test_settle_prefers_the_engines_oom_verdict(tmp_path: Path) -> None:
    state, cause = settle(record(), tmp_path, ExitInfo(137, oom_killed=True), None, None)
    assert state == "failed" and cause is not None and "OOM-killed (memory limit 64 MB)" in cause


def test_settle_reads_result_json_when_the_events_ended_early(tmp_path: Path) -> None:
    (tmp_path / protocol.RESULT).write_text(json.dumps({"status": "paused", "step": 5}))
    assert settle(record(), tmp_path, ExitInfo(None), None, None) == ("paused", None)


def test_settle_names_an_exception_with_its_traceback(tmp_path: Path) -> None:
    error = {"kind": "exception", "message": "RuntimeError: boom", "traceback": ["a", "b"]}
    state, cause = settle(record(), tmp_path, ExitInfo(1), None, error)
    assert state == "failed" and cause == "RuntimeError: boom\n  a\n  b"


def test_a_vanished_process_without_a_result_is_lost(tmp_path: Path) -> None:
    state, cause = settle(record(), tmp_path, ExitInfo(None), None, None)
    assert state == "lost" and cause is not None


def test_exit_codes_of_the_agent(tmp_path: Path) -> None:
    assert settle(record(), tmp_path, ExitInfo(protocol.EXIT_STOPPED), None, None)[0] == "cancelled"
    assert settle(record(), tmp_path, ExitInfo(protocol.EXIT_PAUSED), None, None)[0] == "paused"
    assert settle(record(), tmp_path, ExitInfo(0), None, None)[0] == "succeeded"
    assert settle(record(), tmp_path, ExitInfo(-9), None, None) == ("failed", "killed by signal 9")


def test_a_stop_that_lands_before_the_agent_can_checkpoint_is_a_cancel(tmp_path: Path) -> None:
    run = record(state="stopping")
    assert settle(run, tmp_path, ExitInfo(-15), None, None) == ("cancelled", None)
    assert settle(record(state="running"), tmp_path, ExitInfo(-15), None, None)[0] == "failed"
