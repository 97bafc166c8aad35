"""The one aiosqlite connection to the assistant's SQLite file.

aiosqlite runs every statement on the connection's own thread, and a transaction belongs to
the connection, not to the asyncio task that began it. So every write goes through
`atomic()` (or `write()`), which holds one asyncio lock around BEGIN IMMEDIATE..COMMIT: two
tasks can never commit or roll back each other's work.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

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


class Database:
    """Open with `await Database.open(path)`; close with `aclose()`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> Database:
        """Connect, set pragmas outside any transaction, and migrate to the latest schema."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
            db = cls(conn, path)
            if migrate:
                await db.migrate()
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
