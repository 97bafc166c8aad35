"""Small durable values (a Telegram update offset, ...): one row per key."""

from __future__ import annotations

from storage.db import Database


class KeyValue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str, default: str | None = None) -> str | None:
        value = await self._db.scalar("SELECT value FROM kv WHERE key = ?", (key,))
        return default if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        await self._db.write(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
