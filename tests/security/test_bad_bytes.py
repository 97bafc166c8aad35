"""One bad byte from outside must not stop the event log.

A non-UTF-8 byte reaches Python as a lone surrogate ("\\udcff"), which SQLite cannot
encode. Outside text is made valid where it enters (IncomingMessage, the local channel),
and a row that still cannot be written is dropped alone, counted and reported, while the
rows around it are written and the writer keeps committing.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.channels.base import IncomingMessage
from assistant.config import Settings
from assistant.jobs.text import decoded, valid_text
from assistant.observability import EventLog
from assistant.orchestrator import Orchestrator
from assistant.redaction import Redactor
from storage.db import Database
from tests.support.recording import RecordingChannel
from tests.support.service_process import ROOT, env_for, running_service

ADMIN = "tg:1001"
POISON = "poison \udcff here"


# ---- the boundary ------------------------------------------------------------------------


def test_valid_text_replaces_lone_surrogates_and_nul_only() -> None:
    assert valid_text(POISON) == "poison \ufffd here"
    assert valid_text("a\x00b\ud800\udfffc") == "a\ufffdb\ufffd\ufffdc"
    kept = "plain ascii, äöü, 日本語, 🙂 and \ufffd"
    assert valid_text(kept) is kept or valid_text(kept) == kept
    assert decoded(b"ok \xff\xfe \x00 end") == "ok \ufffd\ufffd \ufffd end"
    valid_text(POISON).encode("utf-8")  # encodable now


def test_incoming_message_makes_every_outside_field_valid() -> None:
    message = IncomingMessage(
        "tg:1\udcff",
        "ann\x00",
        POISON,
        platform_id="7\ud800",
        chat_title="room \udcfe",
        reply_to="5\x00",
    )
    assert message.text == "poison \ufffd here"
    assert (message.chat_id, message.sender, message.chat_title) == (
        "tg:1\ufffd",
        "ann\ufffd",
        "room \ufffd",
    )
    assert (message.platform_id, message.reply_to) == ("7\ufffd", "5\ufffd")
    for value in (message.chat_id, message.sender, message.text, message.chat_title):
        value.encode("utf-8")


async def test_a_poisoned_chat_message_is_stored_and_the_log_keeps_committing(
    settings: Settings,
) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        log = orch.services.log
        replies = await channel.say(ADMIN, POISON, sender="ann\udcff")
        assert not any("could not store" in r for r in replies), replies
        await log.flush()
        written = log.stats.written
        await channel.say(ADMIN, "and a clean one after it")
        await log.flush()
        assert log.stats.written > written and log.pending == 0
        status = "\n".join(await channel.say(ADMIN, "/status"))
        assert "0 pending" in status and "last error" not in status
        stored = await orch.services.db.fetchall(
            "SELECT sender, text FROM messages WHERE chat_id = ? AND from_me = 0 ORDER BY seq",
            (ADMIN,),
        )
        summaries = [
            r["summary"] for r in await orch.services.db.fetchall("SELECT summary FROM event_log")
        ]
    assert [(r["sender"], r["text"]) for r in stored][:2] == [
        ("ann\ufffd", "poison \ufffd here"),
        ("ann", "and a clean one after it"),
    ]
    assert any("poison \ufffd here" in s for s in summaries)


# ---- the writer: a row that cannot be written is dropped alone ------------------------------


async def test_a_row_that_cannot_be_written_is_dropped_alone(db: Database) -> None:
    log = EventLog(db, Redactor(), flush_interval=0.02)
    await log.start()
    try:
        log.log_event("local", "before", summary="before")
        log.log_event("local", "bad", summary=POISON)  # past every boundary, on purpose
        log.log_action(None, "message_sent", content={"text": "bad \ud800"})
        log.log_event("local", "after", summary="after")
        assert await log.flush()
        assert log.pending == 0
        assert log.stats.dropped == 2 and log.stats.written == 2
        assert log.stats.last_drop is not None and "UnicodeEncodeError" in log.stats.last_drop
        assert "action message_sent" in log.stats.last_drop
        log.stats.last_drop.encode("utf-8")
        # and the writer keeps committing afterwards, by itself
        for i in range(50):
            log.log_event("local", f"later-{i}", summary="later")
        deadline = time.monotonic() + 10
        while await db.scalar("SELECT count(*) FROM event_log WHERE summary = 'later'") < 50:
            assert time.monotonic() < deadline, "the writer stopped committing"
            await asyncio.sleep(0.02)
    finally:
        await log.aclose()
    ids = [r["source_id"] for r in await db.fetchall("SELECT source_id FROM event_log ORDER BY id")]
    assert ids[:2] == ["before", "after"] and len(ids) == 52
    stats = await db.fetchall("SELECT kind, key, n FROM log_stats")
    assert {(r["kind"], r["key"], r["n"]) for r in stats} == {("event", "local", 52)}


async def test_a_full_database_still_keeps_every_row(db: Database) -> None:
    """The database refusing (full) is not a bad row: nothing is dropped, all is retried."""
    log = EventLog(db, Redactor(), flush_interval=10)
    page_count = await db.scalar("PRAGMA page_count")
    await db.fetchall(f"PRAGMA max_page_count = {page_count}")
    for i in range(2000):
        log.log_event("local", str(i), summary="z" * 300)
    log.log_event("local", "bad", summary=POISON)
    assert not await log.flush()
    assert log.pending == 2001 and log.stats.dropped == 0
    await db.fetchall("PRAGMA max_page_count = 1073741823")
    assert await log.flush()
    assert log.stats.dropped == 1 and log.stats.written == 2000
    assert await db.scalar("SELECT count(*) FROM event_log") == 2000


async def test_status_and_debug_report_show_dropped_rows(settings: Settings) -> None:
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        orch.services.log.log_event("local", summary=POISON)  # a row no boundary cleaned
        await orch.services.log.flush()
        status = "\n".join(await channel.say(ADMIN, "/status"))
        report = "\n".join(await channel.say(ADMIN, "/debug report"))
    line = next(x for x in status.splitlines() if x.startswith("Event log:"))
    assert "1 rows dropped, last: event from local: UnicodeEncodeError" in line, line
    assert "0 pending" in line
    writer = next(x for x in report.splitlines() if x.startswith("Writer:"))
    assert "1 rows dropped, last: event from local: UnicodeEncodeError" in writer, writer


# ---- the whole path: `assistant send` with a non-UTF-8 byte ------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    home = tmp_path / "home"
    with running_service(home) as proc:
        yield home, proc


def _send(home: Path, arg: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"assistant", b"send", arg],
        capture_output=True,
        timeout=30,
        cwd=ROOT,
        env=env_for(home),
    )


def test_assistant_send_with_a_non_utf8_byte_leaves_the_event_log_working(
    service: tuple[Path, subprocess.Popen[str]],
) -> None:
    home, proc = service
    poisoned = _send(home, b"poison \xff here")
    assert poisoned.returncode == 0, poisoned.stderr
    assert b"could not store" not in poisoned.stdout
    for i in range(3):
        assert _send(home, f"later message {i}".encode()).returncode == 0
    status = _send(home, b"/status")
    line = next(x for x in status.stdout.decode().splitlines() if x.startswith("Event log:"))
    assert "last error" not in line and "dropped" not in line, line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "could not be written" not in err
    conn = sqlite3.connect(home / "assistant.db")
    try:
        texts = [
            r[0] for r in conn.execute("SELECT text FROM messages WHERE from_me = 0 ORDER BY seq")
        ]
        last = conn.execute("SELECT summary FROM event_log ORDER BY id DESC LIMIT 1").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM action_log").fetchone()[0]
    finally:
        conn.close()
    assert texts[:4] == ["poison \ufffd here", *(f"later message {i}" for i in range(3))]
    assert last == "assistant stopped"  # every action up to the stop was committed
    assert stored >= 8
