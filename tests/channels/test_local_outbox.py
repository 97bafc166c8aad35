"""The local console's outbox, through a real `assistant up` and real CLI subprocesses.

What the assistant says to the local chat while no client is attached (a scheduled report
here; run reports, alerts and missed-task notices take the same path) is kept, shown by
the next `assistant inbox` or `assistant chat`, across a restart, and the chain says it
was delivered only once a client got it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from assistant.channels.local_outbox import Outbox
from tests.support.service_process import ROOT, cli, env_for, running_service

OUTBOX = "local-outbox.db"


def _actions(home: Path, kind: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(home / "assistant.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(
            "SELECT id, triggered_by, ok, error, content FROM action_log"
            " WHERE action_type = ? ORDER BY id",
            (kind,),
        ).fetchall()
    finally:
        conn.close()


def _scheduled_report_sent(home: Path, timeout: float = 30) -> sqlite3.Row:
    """The message_sent action of the scheduled /status, once the event log has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = sqlite3.connect(home / "assistant.db")
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute(
                "SELECT a.id, a.triggered_by, a.ok, a.error FROM action_log a"
                " JOIN event_log e ON e.id = a.triggered_by"
                " WHERE a.action_type = 'message_sent' AND e.source = 'scheduled_task'"
            ).fetchone()
        except sqlite3.OperationalError:  # the tables are not there yet
            row = None
        finally:
            conn.close()
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError("the scheduled report was never sent")


def _schedule_a_report_while_away(home: Path) -> sqlite3.Row:
    added = cli(home, "send", "/task add once +1s /status")
    assert added.returncode == 0 and "once" in added.stdout, added.stderr
    return _scheduled_report_sent(home)  # `send` has hung up: no client is attached


def _chat(home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assistant", "chat"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env_for(home),
    )


def test_a_report_sent_while_no_client_is_attached_waits_in_the_inbox(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_service(home):
        sent = _schedule_a_report_while_away(home)
        # Not delivered, and the chain says so (it said `ok` while nobody was there).
        assert not sent["ok"] and "outbox" in sent["error"], dict(sent)
        assert (home / OUTBOX).stat().st_mode & 0o777 == 0o600

        inbox = cli(home, "inbox")
        assert inbox.returncode == 0, inbox.stderr
        assert "1 message arrived while no client was attached" in inbox.stdout
        assert "Uptime:" in inbox.stdout  # the scheduled /status report itself

        # Delivered now: one message_delivered under the same event, naming the send.
        deadline = time.monotonic() + 10
        while not (delivered := _actions(home, "message_delivered")):
            assert time.monotonic() < deadline, "no message_delivered action"
            time.sleep(0.1)
        assert len(delivered) == 1 and delivered[0]["ok"]
        assert delivered[0]["triggered_by"] == sent["triggered_by"]

        again = cli(home, "inbox")
        assert again.returncode == 0 and "No messages waiting" in again.stdout
        assert "Uptime:" not in again.stdout


def test_send_with_wait_shows_what_waited_before_its_answer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_service(home):
        _schedule_a_report_while_away(home)
        plain = cli(home, "send", "/help")  # no --wait: just the answer; the report stays
        assert "Uptime:" not in plain.stdout and "/debug" in plain.stdout
        waited = cli(home, "send", "/help", "--wait", "0.5")
        assert waited.returncode == 0, waited.stderr
        out = waited.stdout
        assert "1 message arrived while no client was attached" in out
        assert out.index("Uptime:") < out.index("/debug")  # what waited comes first
        assert "No messages waiting" in cli(home, "inbox").stdout


def test_what_waits_survives_a_restart_and_the_next_chat_shows_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_service(home) as proc:
        _schedule_a_report_while_away(home)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err

    with running_service(home):
        chat = _chat(home)
        assert chat.returncode == 0, chat.stderr
        assert "arrived while no client was attached" in chat.stdout
        assert "Uptime:" in chat.stdout
        assert "Uptime:" not in _chat(home).stdout  # shown once


def test_a_report_to_an_attached_chat_is_delivered_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_service(home):
        chat = subprocess.Popen(
            [sys.executable, "-m", "assistant", "chat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env_for(home),
        )
        try:
            assert chat.stdin is not None
            chat.stdin.write("/task add once +1s /status\n")
            chat.stdin.flush()
            sent = _scheduled_report_sent(home)
            out, err = chat.communicate(timeout=30)
        finally:
            if chat.poll() is None:
                chat.kill()
        assert sent["ok"], dict(sent)
        assert "Uptime:" in out, err
        assert "No messages waiting" in cli(home, "inbox").stdout
        assert not _actions(home, "message_delivered")


async def test_the_outbox_keeps_the_newest_and_counts_what_it_dropped(tmp_path: Path) -> None:
    path = tmp_path / "home" / OUTBOX
    outbox = await Outbox.open(path, limit=3)
    try:
        for n in range(5):
            await outbox.add("local:console", "message", f"report {n}", event_id=n)
        assert [h.text for h in outbox.waiting()] == ["report 2", "report 3", "report 4"]
        assert outbox.dropped == 2
        assert await outbox.remove(outbox.waiting()[0].seq) is not None
    finally:
        await outbox.aclose()
    assert path.stat().st_mode & 0o777 == 0o600
    reopened = await Outbox.open(path, limit=3)  # what was kept is kept across a restart
    try:
        assert [h.text for h in reopened.waiting()] == ["report 3", "report 4"]
        assert reopened.waiting()[0].event_id == 3 and reopened.dropped == 2
        await reopened.told_dropped()
        assert reopened.dropped == 0
    finally:
        await reopened.aclose()
