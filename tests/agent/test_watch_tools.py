"""The model's /watch tools end to end: real SDK, fake Messages API, a real process to watch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from assistant.config import Settings
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse
from tests.fakes.anthropic_server import Reply as Answer
from tests.support.model_service import Service, model_settings, open_service
from tests.support.watched_jobs import start_job, watch_id_of, watch_settings


def _result(fake: FakeAnthropic) -> dict[str, Any]:
    """The one tool result the model got back last."""
    (result,) = fake.requests[-1].body["messages"][-1]["content"]
    assert isinstance(result, dict) and result["type"] == "tool_result"
    return result


async def _call(service: Service, fake: FakeAnthropic, name: str, given: dict[str, Any]) -> str:
    """The model calls one tool, then answers; what the tool gave back."""
    fake.add(Answer([ToolUse(f"tu_{len(fake.requests)}", name, given)]), Answer("Done."))
    said = await service.say(f"please {name}")
    assert said[-1] == "Done."  # a stopped job's end report may come while the tool waits
    result = _result(fake)
    assert not result.get("is_error"), result
    return str(result["content"])


@pytest.fixture
async def stoppable(settings: Settings, fake: FakeAnthropic) -> AsyncIterator[Service]:
    wanted = model_settings(watch_settings(settings), fake, watch_allow_stop=True)
    async with open_service(wanted, fake) as running:
        yield running


async def test_the_model_watches_lists_shows_and_unwatches_a_process(
    stoppable: Service, fake: FakeAnthropic, tmp_path: Path
) -> None:
    job = start_job(tmp_path / "job", steps=5)
    try:
        added = await _call(stoppable, fake, "watch_job", {"kind": "pid", "target": job.pid})
        watch_id = watch_id_of(added)
        assert f"pid {job.pid}" in added and f"Output: {job.log.resolve()}" in added
        listing = await _call(stoppable, fake, "list_watches", {})
        assert f"{watch_id} pid {job.pid}" in listing and "running" in listing
        shown = await _call(stoppable, fake, "show_watch", {"watch_id": watch_id})
        assert shown.startswith(f"Watch {watch_id} · pid {job.pid}")
        gone = await _call(stoppable, fake, "unwatch_job", {"watch_id": watch_id})
        assert "no longer following" in gone and "the job itself goes on" in gone
        assert job.proc.poll() is None  # unwatching leaves the job alone
        (row,) = await stoppable.rows("SELECT state FROM watches WHERE id = ?", (watch_id,))
        assert row["state"] == "unwatched"
        tools = await stoppable.rows(
            "SELECT tool_name, output FROM tool_call_log WHERE tool_name = 'watch_job'"
        )
        assert len(tools) == 1 and '"command":"/watch"' in tools[0]["output"]
    finally:
        job.proc.kill()
        job.reap()


async def test_stopping_a_watched_job_needs_the_users_yes(
    stoppable: Service, fake: FakeAnthropic, tmp_path: Path
) -> None:
    job = start_job(tmp_path / "job", steps=5)
    try:
        added = await _call(stoppable, fake, "watch_job", {"kind": "pid", "target": job.pid})
        watch_id = watch_id_of(added)
        asked = await _call(stoppable, fake, "stop_watched_job", {"watch_id": watch_id})
        assert asked.startswith(f"Not done: this would stop watched job {watch_id}")
        assert "confirmed=true" in asked
        assert job.proc.poll() is None  # nothing was signalled
        stopped = await _call(
            stoppable, fake, "stop_watched_job", {"watch_id": watch_id, "confirmed": True}
        )
        assert stopped.startswith(f"Watch {watch_id}: ") and "SIGTERM" in stopped
        assert job.reap() == -15  # it ended on the signal the tool sent
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
            job.reap()


async def test_stopping_is_refused_where_the_admin_did_not_allow_it(
    settings: Settings, fake: FakeAnthropic, tmp_path: Path
) -> None:
    job = start_job(tmp_path / "job", steps=5)
    try:
        async with open_service(model_settings(watch_settings(settings), fake), fake) as svc:
            added = await _call(svc, fake, "watch_job", {"kind": "pid", "target": job.pid})
            watch_id = watch_id_of(added)
            fake.add(
                Answer(
                    [ToolUse("tu_x", "stop_watched_job", {"watch_id": watch_id, "confirmed": True})]
                ),
                Answer("Not allowed here."),
            )
            assert await svc.say("stop it, yes") == ["Not allowed here."]
            result = _result(fake)
            assert result["is_error"] and "ASSISTANT_WATCH_ALLOW_STOP=true" in result["content"]
            assert job.proc.poll() is None
    finally:
        job.proc.kill()
        job.reap()


async def test_a_bad_watch_input_goes_back_to_the_model_in_words(
    stoppable: Service, fake: FakeAnthropic
) -> None:
    fake.add(
        Answer([ToolUse("tu_1", "watch_job", {"kind": "pid", "target": "1; rm -rf /"})]),
        Answer("That is no pid."),
    )
    assert await stoppable.say("watch that") == ["That is no pid."]
    result = _result(fake)
    assert result["is_error"] and "a pid is a whole number from 2 to" in result["content"]
    assert await stoppable.rows("SELECT id FROM watches") == []


async def test_the_watch_list_is_empty_before_anything_is_watched(
    stoppable: Service, fake: FakeAnthropic
) -> None:
    listing = await _call(stoppable, fake, "list_watches", {})
    assert listing.startswith("No watches.")
