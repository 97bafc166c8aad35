"""A database file the service cannot use stops `assistant up` with one line, not a traceback.

Each case is a real file on disk and a real `assistant up` (or `assistant chats`) process:
garbage bytes, a file that cannot be written, a folder that cannot be written, another
application's SQLite file, and a file from a newer schema. The line names the file, what
is wrong and what to do; the exit status is 1; the file is left as it was.

"Cannot be written" is made with the immutable attribute when the tests run as root (root
ignores modes), and with modes otherwise.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.migrations import MIGRATIONS
from tests.support.service_process import ROOT, env_for


def up(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assistant", *(args or ("up",))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env_for(home), "ASSISTANT_RUNNER": "process", "ASSISTANT_GPUS": "none"},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr; fails on a traceback or on more lines."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` cannot be written by the service for the duration, whoever it runs as."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(mode)


def private_home(tmp_path: Path) -> Path:
    """A home as the service makes it (0700), so its start has nothing to tighten or log."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def make_db(home: Path, script: str, version: int = 0) -> Path:
    path = home / "assistant.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()
    path.chmod(0o600)
    return path


def a_working_home(tmp_path: Path) -> Path:
    """A home a service has used and left: the database at the latest schema."""
    home = tmp_path / "home"
    result = up(home, "chats")  # opens (creates and migrates) the database, then exits
    assert result.returncode == 0, result.stderr
    return home


def test_garbage_bytes(tmp_path: Path) -> None:
    home = private_home(tmp_path)
    db = home / "assistant.db"
    db.write_bytes(os.urandom(8192))
    db.chmod(0o600)
    before = digest(db)
    line = one_line(up(home))
    assert line.startswith(f"assistant: cannot open the database {db}: ")
    assert "not a SQLite database or it is damaged" in line and "restore a backup" in line
    assert digest(db) == before


def test_a_read_only_database_file(tmp_path: Path) -> None:
    home = a_working_home(tmp_path)
    db = home / "assistant.db"
    with unwritable(db):
        line = one_line(up(home))
    assert line.startswith(f"assistant: cannot open the database {db}: it is read-only")
    assert "must be able to write it" in line


def test_a_read_only_home(tmp_path: Path) -> None:
    home = a_working_home(tmp_path)
    (home / "assistant.lock").touch(mode=0o600)
    db = home / "assistant.db"
    with unwritable(home):
        line = one_line(up(home))
    assert line.startswith(f"assistant: cannot open the database {db}: ")
    assert f"create files next to it in {home}" in line


def test_a_read_only_home_without_a_lock_file(tmp_path: Path) -> None:
    home = private_home(tmp_path)
    with unwritable(home):
        line = one_line(up(home))
    assert line.startswith(f"assistant: cannot open the lock file {home / 'assistant.lock'}")
    assert f"must be able to write in {home}" in line


def test_another_applications_database(tmp_path: Path) -> None:
    db = make_db(
        private_home(tmp_path),
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);"
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);",
    )
    before = digest(db)
    line = one_line(up(db.parent))
    assert line == (
        f"assistant: cannot open the database {db}: it holds tables of another application"
        " (customers, invoices) and none of the assistant's; move it away, or give the"
        " assistant its own ASSISTANT_HOME"
    )
    assert digest(db) == before  # nothing was added to it


def test_another_application_whose_tables_clash(tmp_path: Path) -> None:
    """Its `messages` table would make the first migration fail half-way."""
    db = make_db(private_home(tmp_path), "CREATE TABLE messages (body TEXT);")
    line = one_line(up(db.parent))
    assert "tables of another application (messages)" in line


def test_a_newer_schema(tmp_path: Path) -> None:
    newer = len(MIGRATIONS) + 5
    db = make_db(private_home(tmp_path), "CREATE TABLE chats (id TEXT PRIMARY KEY);", newer)
    line = one_line(up(db.parent))
    assert line == (
        f"assistant: cannot open the database {db}: its schema version is {newer}, newer"
        f" than this assistant knows ({len(MIGRATIONS)}): it was written by a newer version"
        " (upgrade this one) or by another application (move it away)"
    )


def test_the_chats_command_says_the_same(tmp_path: Path) -> None:
    home = private_home(tmp_path)
    (home / "assistant.db").write_bytes(b"not a database at all" * 200)
    (home / "assistant.db").chmod(0o600)
    line = one_line(up(home, "chats"))
    assert "cannot open the database" in line and "not a SQLite database" in line


def test_a_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("oops")
    line = one_line(up(home))
    assert line == f"assistant: {home} is not a folder; set ASSISTANT_HOME to a folder"
