"""Migrations: from an empty file and from every earlier version, idempotent, atomic."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage.db import Database
from storage.migrations import MIGRATIONS, apply_migrations

LATEST = len(MIGRATIONS)


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return [(name, sql) for name, sql in rows]


async def test_empty_file_reaches_latest(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.db")
    try:
        assert await db.user_version() == LATEST
        mode = await db.scalar("PRAGMA journal_mode")
        assert mode == "wal"
        assert await db.scalar("PRAGMA foreign_keys") == 1
    finally:
        await db.aclose()


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    for _ in range(3):
        db = await Database.open(path)
        await db.aclose()
    db = await Database.open(path)
    try:
        assert await db.user_version() == LATEST
        assert await db.migrate() == LATEST
    finally:
        await db.aclose()


@pytest.mark.parametrize("start", range(LATEST))
async def test_every_earlier_version_upgrades_to_the_same_schema(
    tmp_path: Path, start: int
) -> None:
    fresh = tmp_path / "fresh.db"
    db = await Database.open(fresh)
    await db.aclose()

    old = tmp_path / "old.db"
    db = await Database.open(old, migrate=False)
    try:
        assert await db.migrate(start) == start
        assert await db.user_version() == start
        if start >= 1:  # data written at the old version survives the upgrade
            await db.write(
                "INSERT INTO chats (id, channel, first_seen, last_seen)"
                " VALUES ('local:console', 'local', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"
            )
        if start >= 2:
            await db.write(
                "INSERT INTO event_log (id, ts, source, summary)"
                " VALUES (1, '2026-01-01T05:00:00.000Z', 'local', 'kept')"
            )
        assert await db.migrate() == LATEST
        if start >= 1:
            assert await db.scalar("SELECT count(*) FROM chats") == 1
        if start == 2:  # the stats table (m003) is back-filled from rows that predate it
            assert (
                await db.scalar("SELECT n FROM log_stats WHERE kind = 'event' AND key = 'local'")
                == 1
            )
    finally:
        await db.aclose()
    assert schema(old) == schema(fresh)


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half_done (x)")
        c.execute("THIS IS NOT SQL")

    try:
        with pytest.raises(sqlite3.OperationalError):
            apply_migrations(conn, [*MIGRATIONS, broken])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables
    finally:
        conn.close()


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    try:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
        with pytest.raises(RuntimeError, match="newer than this code"):
            apply_migrations(conn, MIGRATIONS)
    finally:
        conn.close()
