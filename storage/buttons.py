"""Buttons drawn under messages, and the messages that open threads.

A button's token is all a platform sends back on a press, so everything else lives here:
the command it runs, the chat it belongs to, and whether it was used. Claiming a button
is one guarded UPDATE, so two presses racing (a double tap, a redelivered callback) act
once. The buttons of a choice share a group: claiming one claims them all.

A thread is a key ("run:<id>") and the platform id of the message that opened it in a
chat; a run's later messages are sent under that message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from storage.db import Database
from storage.rows import from_row
from storage.timestamps import to_iso

TOKEN_BYTES = 12  # 16 url-safe characters: unguessable, and short for every platform


@dataclass(frozen=True)
class StoredButton:
    token: str
    grp: str
    chat_id: str
    label: str
    command: str
    created_at: str
    pressed_at: str | None
    pressed_by: str | None
    pressed_token: str | None  # which button of the group was pressed
    thread: str | None  # the thread key ("run:<id>") of the message it is under


@dataclass(frozen=True)
class NewButton:
    label: str
    command: str


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class ButtonRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def draw(
        self,
        chat_id: str,
        buttons: list[NewButton],
        *,
        choice: bool,
        now: datetime,
        thread: str | None = None,
    ) -> list[str]:
        """Store the buttons of one message; returns their tokens in order.

        Buttons that are not a choice each form their own group: pressing "Logs" leaves
        "Retry" under the same report usable.
        """
        tokens = [new_token() for _ in buttons]
        group = new_token() if choice else None  # a choice's own id, no button's token
        await self._db.write_many(
            "INSERT INTO buttons (token, grp, chat_id, label, command, created_at, thread)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (token, group or token, chat_id, b.label, b.command, to_iso(now), thread)
                for token, b in zip(tokens, buttons, strict=True)
            ],
        )
        return tokens

    async def get(self, token: str) -> StoredButton | None:
        row = await self._db.fetchone("SELECT * FROM buttons WHERE token = ?", (token,))
        return None if row is None else from_row(StoredButton, row)

    async def claim(self, button: StoredButton, by: str, now: datetime) -> bool:
        """Mark the button's group pressed; False when another press got there first."""
        changed = await self._db.write(
            "UPDATE buttons SET pressed_at = ?, pressed_by = ?, pressed_token = ?"
            " WHERE grp = ? AND pressed_at IS NULL",
            (to_iso(now), by, button.token, button.grp),
        )
        return changed > 0

    async def prune(self, before: datetime) -> int:
        """Forget buttons drawn before `before` (a press of one then says it expired)."""
        return await self._db.write("DELETE FROM buttons WHERE created_at < ?", (to_iso(before),))

    async def open_thread(self, chat_id: str, key: str, message_id: str, now: datetime) -> None:
        """Remember the message that opened `key` in the chat (the first one wins)."""
        await self._db.write(
            "INSERT OR IGNORE INTO threads (chat_id, key, message_id, created_at)"
            " VALUES (?, ?, ?, ?)",
            (chat_id, key, message_id, to_iso(now)),
        )

    async def thread_root(self, chat_id: str, key: str) -> str | None:
        value = await self._db.scalar(
            "SELECT message_id FROM threads WHERE chat_id = ? AND key = ?", (chat_id, key)
        )
        return None if value is None else str(value)

    async def prune_threads(self, before: datetime) -> int:
        return await self._db.write("DELETE FROM threads WHERE created_at < ?", (to_iso(before),))
