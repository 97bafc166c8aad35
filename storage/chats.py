"""Chats the assistant has seen, what each may do, and the agent's cursor per chat.

`is_admin` and `allowed` here are grants made from an admin chat (/chat admin, /chat
allow). Admins named in the settings are not stored: taking a chat out of
ASSISTANT_ADMIN_CHATS takes its rights away at the next start.
"""

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
    is_admin: bool  # granted from chat
    allowed: bool  # free text answered (when addressed), without command rights
    reply_mode: str  # "addressed" (mentions, DMs, replies, its name) or "all"
    first_seen: str
    last_seen: str
    cursor_seq: int


class ChatRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, chat_id: str, title: str) -> None:
        """Register the chat, or refresh its title and last-seen time."""
        now = to_iso(utc_now())
        await self._db.write(
            "INSERT INTO chats (id, channel, title, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET title = CASE WHEN excluded.title != ''"
            " THEN excluded.title ELSE title END, last_seen = excluded.last_seen",
            (chat_id, chat_id.split(":", 1)[0], title, now, now),
        )

    async def grant(
        self,
        chat_id: str,
        *,
        admin: bool | None = None,
        allowed: bool | None = None,
        reply_mode: str | None = None,
    ) -> Chat:
        """Change what a chat may do; a chat never seen yet is registered first."""
        await self.seen(chat_id, "")
        await self._db.write(
            "UPDATE chats SET is_admin = coalesce(?, is_admin), allowed = coalesce(?, allowed),"
            " reply_mode = coalesce(?, reply_mode) WHERE id = ?",
            (
                None if admin is None else int(admin),
                None if allowed is None else int(allowed),
                reply_mode,
                chat_id,
            ),
        )
        chat = await self.get(chat_id)
        assert chat is not None
        return chat

    async def all(self) -> list[Chat]:
        rows = await self._db.fetchall("SELECT * FROM chats ORDER BY last_seen DESC")
        return [_chat(row) for row in rows]

    async def get(self, chat_id: str) -> Chat | None:
        row = await self._db.fetchone("SELECT * FROM chats WHERE id = ?", (chat_id,))
        return None if row is None else _chat(row)


def _chat(row: sqlite3.Row) -> Chat:
    return from_row(Chat, row, is_admin=bool(row["is_admin"]), allowed=bool(row["allowed"]))
