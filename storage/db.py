"""The one aiosqlite connection to the assistant's SQLite file.

aiosqlite runs every statement on the connection's own thread, and a transaction belongs to
the connection, not to the asyncio task that began it. So every write goes through
`atomic()` (or `write()`), which holds one asyncio lock around BEGIN IMMEDIATE..COMMIT: two
tasks can never commit or roll back each other's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from assistant.errors import OpsError
from storage.migrations import MIGRATIONS, apply_migrations

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
)
# The file holds the whole history: owner-only, and so are its -wal and -shm (SQLite
# gives those the mode of the database file).
FILE_MODE = 0o600
DIR_MODE = 0o700
SIDE_FILES = ("-wal", "-shm", "-journal")


class DatabaseOpenError(OpsError):
    """The database file cannot be used; one line: which file, what is wrong, what to do."""


def _explain(path: Path, exc: BaseException) -> DatabaseOpenError:
    """A one-line reason for a failed open, in place of SQLite's bare message."""
    name = getattr(exc, "sqlite_errorname", "")
    if isinstance(exc, OSError):
        reason = f"{exc.strerror or exc}"
    elif name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        reason = (
            f"it is not a SQLite database or it is damaged ({exc}); move it away to start"
            " with an empty one, or restore a backup"
        )
    elif name.startswith("SQLITE_READONLY"):
        reason = (
            f"it is read-only ({exc}); the service must be able to write it: check its"
            " owner, its mode and the file system"
        )
    elif name.startswith("SQLITE_CANTOPEN"):
        reason = (
            f"{exc}; the service must be able to read and write it and to create files"
            f" next to it in {path.parent}"
        )
    else:
        reason = str(exc)
    return DatabaseOpenError(f"cannot open the database {path}: {reason}")


class Database:
    """Open with `await Database.open(path)`; close with `aclose()`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> Database:
        """Connect, set pragmas outside any transaction, and migrate to the latest schema.

        The file is checked before anything is written to it: that it is a SQLite file,
        that this process can write it, and that it is this application's (an empty
        file, or one with this schema at a version this code knows).

        :raises DatabaseOpenError: naming the file and what is wrong, in one line.
        """
        try:
            _create_private(path)
            conn = await aiosqlite.connect(path, isolation_level=None, timeout=5)
        except (OSError, sqlite3.Error) as exc:
            raise _explain(path, exc) from None
        conn.row_factory = sqlite3.Row
        try:
            db = cls(conn, path)
            # Checks first: WAL mode rewrites the header, and a foreign file stays as it was.
            if migrate:
                await db.read_sync(_check_ours)
            await db.read_sync(_check_writable)
            for pragma in PRAGMAS:
                await conn.execute(pragma)
            _tighten_files(path)
            if migrate:
                await db.migrate()
        except (OSError, sqlite3.Error, DatabaseOpenError) as exc:
            await conn.close()
            if isinstance(exc, DatabaseOpenError):
                raise DatabaseOpenError(f"cannot open the database {path}: {exc}") from None
            raise _explain(path, exc) from None
        except BaseException:
            await conn.close()
            raise
        return db

    async def migrate(self, target: int | None = None) -> int:
        """Bring the schema to `target` (default: latest); returns the version reached."""
        version: int = await self.run_sync(apply_migrations, MIGRATIONS, target)
        return version

    async def user_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        assert row is not None
        return int(row[0])

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE), serialised with every other writer."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    async def write(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; returns the rows changed."""
        async with self.atomic() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    async def insert(self, sql: str, params: Params = ()) -> int:
        """One INSERT in its own transaction; returns the new rowid."""
        async with self.atomic() as conn:
            cursor = await conn.execute(sql, params)
            return int(cursor.lastrowid or 0)

    async def write_many(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.atomic() as conn:
            await conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """All rows, in one round trip to the connection's thread."""
        rows = await self._conn.execute_fetchall(sql, params)
        return list(rows)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(sqlite3_connection, *args)` on the db thread under the write lock.

        For work that would otherwise cost many thread round trips (the event writer's
        batches, pruning): one hop, one transaction, done by `fn`.
        """
        # aiosqlite has no public "run this callable on your thread"; the version is pinned.
        async with self._lock:
            result: T = await self._conn._execute(fn, self._conn._conn, *args)  # type: ignore[no-untyped-call]
            return result

    async def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read-only `fn(sqlite3_connection, *args)` on the db thread: one hop, no lock."""
        result: T = await self._conn._execute(fn, self._conn._conn, *args)  # type: ignore[no-untyped-call]
        return result

    async def aclose(self) -> None:
        async with self._lock:
            try:
                await self._conn.execute("PRAGMA optimize")
            finally:
                await self._conn.close()


def _create_private(path: Path) -> None:
    """Create the folder (0700) and an empty database file (0600) if they are missing.

    Made here, not by SQLite, so the file never exists with the process umask's mode.
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))


def _tighten_files(path: Path) -> None:
    """The database and its side files lose any group and other bits (links not followed)."""
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            mode = stat.S_IMODE(candidate.lstat().st_mode)
            if stat.S_ISREG(candidate.lstat().st_mode) and mode & 0o077:
                os.chmod(candidate, mode & FILE_MODE, follow_symlinks=False)
        except OSError:
            continue


def _check_writable(conn: sqlite3.Connection) -> None:
    """Fail now, not at the first write: rewrite the header's version, then roll back."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.rollback()


def _check_ours(conn: sqlite3.Connection) -> None:
    """Refuse a file this code must not migrate: a newer schema, or another application's."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise DatabaseOpenError(
            f"its schema version is {version}, newer than this assistant knows"
            f" ({len(MIGRATIONS)}): it was written by a newer version (upgrade this one) or"
            " by another application (move it away)"
        )
    if version == 0:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite%' ORDER BY name LIMIT 6"
            )
        ]
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise DatabaseOpenError(
                f"it holds tables of another application ({shown}) and none of the"
                " assistant's; move it away, or give the assistant its own ASSISTANT_HOME"
            )
