"""/watch pid: a real process launched outside the assistant, followed through the chat."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel
from tests.support.watched_jobs import (
    ADMIN,
    RECIPES,
    STRANGER,
    start_job,
    wait_until,
    watch_id_of,
    watch_settings,
)


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return watch_settings(settings)


@pytest.fixture
async def service(wsettings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        yield orch, channel


async def test_a_process_is_followed_to_its_end_with_numbers_and_a_plot(
    service: tuple[Orchestrator, RecordingChannel], tmp_path: Path
) -> None:
    orch, channel = service
    job = start_job(tmp_path / "job", steps=20, code=3)
    (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
    watch_id = watch_id_of(reply)
    assert f"pid {job.pid}" in reply and "running" in reply
    assert f"Output: {job.log.resolve()}" in reply  # its stdout is a file: read from there
    job.start()
    report = await channel.wait_for(f"Watch {watch_id}: pid {job.pid}", timeout=1)
    report = await channel.wait_for("ended: exit code 3", timeout=30)
    assert report.startswith(f"Watch {watch_id}: pid {job.pid}")
    assert "Step 20/20" in report and "loss 0.05" in report
    assert "Best: val_loss 0.1" in report
    assert "plain last line" in report  # a failed job's report quotes its last lines
    ((chat, image),) = channel.images
    assert chat == ADMIN and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert job.reap() == 3
    (listing,) = await channel.say(ADMIN, "/watches")
    assert f"{watch_id} pid {job.pid}" in listing and "ended: exit code 3" in listing
    (show,) = await channel.say(ADMIN, f"/watch show {watch_id}")
    assert "Output lines read: 46" in show and "plain last line" in show
    await orch.services.log.flush()
    (story,) = await channel.say(ADMIN, f"/debug watch {watch_id}")
    for piece in (
        "Command from",
        "action watch_added",
        "tool pid.resolve",
        "ended: exit code 3",
        "action message_sent",
    ):
        assert piece in story, (piece, story)


async def test_a_declared_recipes_patterns_read_the_output(
    wsettings: Settings, tmp_path: Path
) -> None:
    wsettings.assistant_home.mkdir(parents=True, exist_ok=True)
    wsettings.recipes_path.write_text(RECIPES)
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]):
        job = start_job(tmp_path / "job", steps=10, code=0)
        (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid} pattern=tinyjob log={job.log}")
        assert "Progress read with recipe tinyjob's patterns" in reply, reply
        job.start()
        report = await channel.wait_for("ended: exit code 0", timeout=30)
        # iter_loss and time_ms come only from the recipe's regex, loss from report lines
        assert "iter_loss 0.1" in report and "time_ms 1" in report and "loss 0.1" in report
        job.reap()
        (refused,) = await channel.say(ADMIN, f"/watch pid {os.getpid()} pattern=nosuch")
        assert "'nosuch' is none (tinyjob)" in refused


async def test_a_watch_survives_a_restart_without_losing_or_repeating_a_line(
    wsettings: Settings, tmp_path: Path
) -> None:
    job = start_job(tmp_path / "job", steps=30, code=0)
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]):
        (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
        watch_id = watch_id_of(reply)
    job.start()  # the job goes on while the assistant is down
    await wait_until_exited(job.pid)
    channel = RecordingChannel()
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        report = await channel.wait_for(f"Watch {watch_id}", timeout=30)
        assert "ended" in report and "Step 30/30" in report, report
        watch = await orch.services.watches.repo.get(watch_id)  # type: ignore[union-attr]
        assert watch is not None
        # "job up", 30 progress lines, 6 metric lines, 30 iter lines, the last line
        assert watch.lines == 1 + 30 + 6 + 30 + 1
    job.reap()


async def wait_until_exited(pid: int) -> None:
    async def exited() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
        except OSError:
            return True

    await wait_until(exited)


async def test_only_admins_watch_and_stopping_needs_the_admins_setting(
    service: tuple[Orchestrator, RecordingChannel], tmp_path: Path
) -> None:
    orch, channel = service
    job = start_job(tmp_path / "job", steps=5, code=0)
    assert await channel.say(STRANGER, f"/watch pid {job.pid}") == []
    assert await orch.services.watches.repo.active() == []  # type: ignore[union-attr]
    (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
    watch_id = watch_id_of(reply)
    (refused,) = await channel.say(ADMIN, f"/watch stop {watch_id}")
    assert "ASSISTANT_WATCH_ALLOW_STOP=true" in refused and "is off" in refused
    assert job.proc.poll() is None  # still running
    (again,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
    assert f"is watched already: watch {watch_id}" in again
    (gone,) = await channel.say(ADMIN, f"/unwatch {watch_id}")
    assert "no longer following" in gone and "the job itself goes on" in gone
    (twice,) = await channel.say(ADMIN, f"/unwatch {watch_id}")
    assert "is unwatched already" in twice
    job.start()
    assert job.reap() == 0
    await orch.services.watches.poll()  # type: ignore[union-attr]
    assert not any("ended" in text for _, text in channel.sent)  # unwatched: no report


async def test_an_admin_who_allowed_it_stops_a_watched_process(
    settings: Settings, tmp_path: Path
) -> None:
    channel = RecordingChannel()
    async with Orchestrator(watch_settings(settings, watch_allow_stop=True), channels=[channel]):
        job = start_job(tmp_path / "job", steps=5, code=0)
        (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
        watch_id = watch_id_of(reply)
        # the stop waits for the end, whose report may come first
        replies = await channel.say(ADMIN, f"/watch stop {watch_id}")
        assert any(
            f"Watch {watch_id}: process {job.pid} stopped with SIGTERM;" in r for r in replies
        ), replies
        report = await channel.wait_for("ended: killed by SIGTERM", timeout=30)
        assert report.startswith(f"Watch {watch_id}")
        assert job.reap() == -15


async def test_refusals_say_what_would_do(
    service: tuple[Orchestrator, RecordingChannel], settings: Settings, tmp_path: Path
) -> None:
    _orch, channel = service
    (no_pid,) = await channel.say(ADMIN, "/watch pid 4194000")
    assert no_pid == "no process with pid 4194000 on this host"
    (bad,) = await channel.say(ADMIN, "/watch pid abc")
    assert "a pid is a whole number" in bad and "Usage:" in bad
    (own,) = await channel.say(ADMIN, f"/watch pid {os.getpid()}")
    assert own == "that is the assistant itself"
    job = start_job(tmp_path / "job", steps=1, code=0, stdout_to_log=False)
    (environ,) = await channel.say(ADMIN, f"/watch pid {job.pid} log=/proc/{job.pid}/environ")
    assert "lies in /proc" in environ
    (home,) = await channel.say(ADMIN, f"/watch pid {job.pid} log={settings.db_path}")
    assert "lies in" in home and "a job's log file is read, not that" in home
    (note,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
    assert "its output is not a file" in note and "log=<path>" in note
    (unknown,) = await channel.say(ADMIN, "/watch host x")
    assert "unknown form 'host'" in unknown
    job.start()
    job.reap()


async def test_hostile_output_in_a_log_file_costs_its_own_lines_only(
    service: tuple[Orchestrator, RecordingChannel], tmp_path: Path
) -> None:
    """Bad UTF-8, NUL and a 10 MB line, then report lines; then the log swapped for a
    symlink to a file the job wants read: it is not followed."""
    orch, channel = service
    watcher = orch.services.watches
    assert watcher is not None
    job = start_job(tmp_path / "job", steps=10, code=0, hostile=True)
    (reply,) = await channel.say(ADMIN, f"/watch pid {job.pid}")
    watch_id = watch_id_of(reply)
    job.start()
    report = await channel.wait_for("ended: exit code 0", timeout=60)
    assert "Step 10/10" in report and "Output lines cut or left out: 1" in report
    watch = await watcher.repo.get(watch_id)
    assert watch is not None
    tail = watcher.tail(watch, 40)
    assert "bad utf-8 \ufffd\ufffd\ufffd( and NUL \ufffd here" in tail
    (huge,) = [line for line in tail if line.startswith("xxxx")]
    assert huge.endswith("…[cut]") and len(huge) < 2100
    job.reap()

    other = start_job(tmp_path / "other", steps=3, code=0)
    (reply,) = await channel.say(ADMIN, f"/watch pid {other.pid}")
    other_id = watch_id_of(reply)
    secret = tmp_path / "secret.txt"
    secret.write_text('@assistant {"type": "progress", "step": 999}\nthe-secret-line\n')
    other.log.unlink()
    other.log.symlink_to(secret)
    await watcher.poll()
    assert "is not a regular file" in watcher.stats.problems[other_id]
    other.start()
    other.reap()
    report = await channel.wait_for(f"Watch {other_id}", timeout=30)
    report = await channel.wait_for("ended: exit code 0", timeout=30)
    assert "the-secret-line" not in "".join(t for _, t in channel.sent)
    watch = await watcher.repo.get(other_id)
    assert watch is not None and watch.step != 999
