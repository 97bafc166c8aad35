"""Conversation messages, ordered by a monotonic sequence number.

The agent's cursor is a `seq`, never a timestamp: two messages in the same millisecond are
both seen, and a clock step back skips nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace

from storage.db import Database
from storage.rows import from_row
from storage.timestamps import to_iso, utc_now


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    chat_id: str
    sender: str
    text: str
    ts: str
    from_me: bool
    action_id: int | None
    answer: bool = True


def _as_is(text: str) -> str:
    return text


class MessageRepo:
    """`clean` masks secrets (the process's redactor): applied to every text stored, and
    again to every text read back, so a secret configured after a message was stored
    still never reaches the model from the history."""

    def __init__(self, db: Database, clean: Callable[[str], str] = _as_is) -> None:
        self._db = db
        self._clean = clean

    async def store(
        self,
        chat_id: str,
        sender: str,
        text: str,
        *,
        platform_id: str | None = None,
        from_me: bool = False,
        action_id: int | None = None,
        answer: bool = True,
    ) -> int | None:
        """Store one message; returns its seq, or None if this platform id was stored before."""
        async with self._db.atomic() as conn:
            cursor = await conn.execute(
                "INSERT INTO messages"
                " (chat_id, platform_id, sender, text, ts, from_me, action_id, answer)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (chat_id, platform_id) WHERE platform_id IS NOT NULL DO NOTHING",
                (
                    chat_id,
                    platform_id,
                    sender,
                    self._clean(text),
                    to_iso(utc_now()),
                    int(from_me),
                    action_id,
                    int(answer),
                ),
            )
            return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None

    async def pending(self, chat_id: str, limit: int = 200) -> list[StoredMessage]:
        """Messages after the chat's cursor, oldest first."""
        rows = await self._db.fetchall(
            "SELECT m.* FROM messages m JOIN chats c ON c.id = m.chat_id"
            " WHERE m.chat_id = ? AND m.seq > c.cursor_seq AND m.from_me = 0 AND m.answer = 1"
            " ORDER BY m.seq LIMIT ?",
            (chat_id, limit),
        )
        return [self._message(row) for row in rows]

    async def advance_cursor(self, chat_id: str, seq: int) -> None:
        """Move the cursor forward (never back)."""
        await self._db.write(
            "UPDATE chats SET cursor_seq = max(cursor_seq, ?) WHERE id = ?", (seq, chat_id)
        )

    async def chats_with_pending(self) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT c.id FROM chats c WHERE EXISTS"
            " (SELECT 1 FROM messages m WHERE m.chat_id = c.id AND m.seq > c.cursor_seq"
            " AND m.from_me = 0 AND m.answer = 1)"
        )
        return [row["id"] for row in rows]

    async def recent(self, chat_id: str, limit: int = 50) -> list[StoredMessage]:
        """The chat's last messages, oldest first (conversation history)."""
        rows = await self._db.fetchall(
            "SELECT * FROM (SELECT * FROM messages WHERE chat_id = ? ORDER BY seq DESC LIMIT ?)"
            " ORDER BY seq",
            (chat_id, limit),
        )
        return [self._message(row) for row in rows]

    def _message(self, row: sqlite3.Row) -> StoredMessage:
        message = from_row(
            StoredMessage, row, from_me=bool(row["from_me"]), answer=bool(row["answer"])
        )
        text = self._clean(message.text)
        return message if text == message.text else replace(message, text=text)
