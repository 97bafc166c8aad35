"""Chats the assistant has seen, and the agent's processing cursor per chat."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from storage.db import Database
from storage.rows import from_row
from storage.timestamps import to_iso, utc_now


@dataclass(frozen=True)
class Chat:
    id: str
    channel: str
    title: str
    is_admin: bool
    first_seen: str
    last_seen: str
    cursor_seq: int


class ChatRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, chat_id: str, channel: str, title: str, is_admin: bool) -> None:
        """Register the chat or refresh its title, admin flag and last-seen time."""
        now = to_iso(utc_now())
        await self._db.write(
            "INSERT INTO chats (id, channel, title, is_admin, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET title = excluded.title,"
            " is_admin = excluded.is_admin, last_seen = excluded.last_seen",
            (chat_id, channel, title, int(is_admin), now, now),
        )

    async def all(self) -> list[Chat]:
        rows = await self._db.fetchall("SELECT * FROM chats ORDER BY is_admin DESC, last_seen DESC")
        return [_chat(row) for row in rows]

    async def get(self, chat_id: str) -> Chat | None:
        row = await self._db.fetchone("SELECT * FROM chats WHERE id = ?", (chat_id,))
        return None if row is None else _chat(row)


def _chat(row: sqlite3.Row) -> Chat:
    return from_row(Chat, row, is_admin=bool(row["is_admin"]))
