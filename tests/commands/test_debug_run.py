"""/debug run: a real run, paused and resumed, read back from the event log.

The run goes through the local-process runner and a built-in recipe, so the rows read
back are the ones a real launch, pause and resume write.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from storage.ids import encode
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, launch, step_of, wait_until

MAX_LINES = 70  # what a phone screen can scroll through without losing the thread
SHOWN_ID = re.compile(r" · id ([0-9a-z]+)$")


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    run_settings = settings.model_copy(
        update={"gpus": "0", "monitor_interval_s": 0.1, "stop_grace_s": 30.0}
    )
    channel = RecordingChannel()
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
        yield orch, channel


async def _paused_and_resumed(orch: Orchestrator, channel: RecordingChannel, steps: int) -> str:
    """A gpt run paused after a few steps, resumed, and run to the end; its id."""
    run_id = await launch(
        channel, f"/run train gpt steps={steps} gpus=0 sleep_per_step=0.05 eval_every=2"
    )
    await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 4)
    await channel.say(ADMIN, f"/run pause {run_id}")
    await channel.wait_for(f"Run {run_id} (gpt) paused", timeout=60)
    (reply,) = await channel.say(ADMIN, f"/run resume {run_id}")
    assert "resumes from" in reply
    await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
    await orch.services.log.flush()
    return run_id


def _shown_ids(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := SHOWN_ID.search(line))]


def _section(text: str, head: str, until: str) -> str:
    start = text.index(head)
    return text[start : text.index(until, start)]


async def test_a_resumed_run_shows_each_launch_and_each_event_once(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    run_id = await _paused_and_resumed(orch, channel, steps=20)
    (view,) = await channel.say(ADMIN, f"/debug run {run_id}")

    started = _section(view, "How it started:", "Run events")
    for piece in (
        "/run train gpt steps=20",  # what asked for it
        f"action run_queued → {run_id}",
        f"action run_launched → {run_id}",
        "tool process.launch",
        f"run {run_id} starting",
        f"/run resume {run_id}",
        "action run_resumed",
        f"run {run_id} resuming",
    ):
        assert piece in started, (piece, view)
    assert started.count("action run_launched") == 2, view
    launches = [line for line in started.splitlines() if "tool process.launch" in line]
    assert len(launches) == 2 and all(line.endswith(" · ok") for line in launches), view

    rows = await orch.services.db.fetchall(
        "SELECT id FROM event_log WHERE source = 'run' AND source_id = ? ORDER BY id", (run_id,)
    )
    stored = [encode(r["id"]) for r in rows]
    later = view[view.index("Run events") :]
    launched = [i for i in _shown_ids(started) if i in stored]
    listed = [i for i in _shown_ids(later) if i in stored]
    assert len(launched) == 2 and set(launched).isdisjoint(listed), view
    assert listed == sorted(set(listed), key=stored.index), view  # in order, once each
    left_out = re.search(r"… (\d+) more event\(s\) left out", later)
    assert left_out is not None, view  # this run has more events than a phone screen holds
    assert len(launched) + len(listed) + int(left_out.group(1)) == len(stored), view
    assert f"Run events ({len(stored) - 2}):" in view, view
    assert listed[0] == stored[stored.index(launched[0]) + 1], view  # the first ones shown
    assert listed[-1] == stored[-1] and f"run {run_id} succeeded" in later, view  # the last
    assert len(view.splitlines()) <= MAX_LINES, view


async def test_a_queued_run_shows_what_queued_it(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    busy = await launch(channel, "/run train gpt gpus=1 device=cpu steps=500 sleep_per_step=0.2")
    (reply,) = await channel.say(ADMIN, "/run train gpt gpus=1 device=cpu steps=5")
    waiting = reply.split("Run ", 1)[1][:6]
    await orch.services.log.flush()
    (view,) = await channel.say(ADMIN, f"/debug run {waiting}")
    assert f"Run {waiting} (gpt, queued)" in view, view
    started = _section(view, "How it started:", "Run events (0):")
    assert "/run train gpt gpus=1 device=cpu steps=5" in started, view
    assert f"action run_queued → {waiting}" in started and "run_launched" not in view, view
    await channel.say(ADMIN, f"/run stop {busy}")
    await channel.wait_for(f"Run {waiting} (gpt) succeeded", timeout=90)


async def test_an_unknown_run_gets_a_short_reply(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    (reply,) = await channel.say(ADMIN, "/debug run zzzzzz")
    assert "no run with id starting 'zzzzzz'" in reply and len(reply.splitlines()) <= 3
