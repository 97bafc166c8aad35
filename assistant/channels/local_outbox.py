"""The local console's outbox: what the assistant said to a local chat, until a client got it.

The local channel has no server of its own to hold messages, as Telegram or Slack do: a
run report, an alert or a missed-task notice sent while no `assistant chat` is attached
would be gone. So every message is written here first, and leaves only when a client
acknowledged it; the next client to attach is shown what is left, oldest first.

It is its own SQLite file in ASSISTANT_HOME (`local-outbox.db`, 0600 like the database,
in the 0700 home), so it survives a restart and never touches the main schema. Its rows
are also kept in memory: a client attaching takes its snapshot and joins the live
broadcast in one step, so each message reaches it exactly once.

Bounded: the newest `limit` messages (default 200) are kept; an older one is dropped when
a new one would go over, the log says so, and the next client is told how many were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from storage.db import Database
from storage.timestamps import utc_now

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 200

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " chat_id TEXT NOT NULL,"
    " at TEXT NOT NULL,"  # when the assistant said it (UTC ISO)
    " kind TEXT NOT NULL,"  # message | image
    " text TEXT NOT NULL,"  # the text, or an image's caption
    " path TEXT,"  # an image's file
    " event_id INTEGER,"  # the chain it belongs to: the event behind the send
    " action_id INTEGER)",  # ... and the message_sent action that recorded it
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class Held:
    """One message waiting for a client."""

    seq: int
    chat_id: str
    at: str
    kind: str
    text: str
    path: str | None
    event_id: int | None
    action_id: int | None

    def line(self, *, held: bool) -> dict[str, object]:
        """The protocol line that carries it to a client (see assistant/channels/local.py)."""
        payload: dict[str, object] = {"type": self.kind, "outbox": self.seq, "at": self.at}
        if self.kind == "image":
            payload.update(path=self.path, caption=self.text)
        else:
            payload["text"] = self.text
        if held:
            payload["held"] = True
        return payload


class Outbox:
    """Open with `await Outbox.open(path)`; every change is written before it is used."""

    def __init__(self, db: Database, held: list[Held], dropped: int, limit: int) -> None:
        self._db = db
        self._held = {h.seq: h for h in held}
        self.dropped = dropped  # dropped for the bound since a client was last told
        self.limit = limit

    @classmethod
    async def open(cls, path: Path, *, limit: int = DEFAULT_LIMIT) -> Outbox:
        """:raises DatabaseOpenError: naming the file and what is wrong."""
        db = await Database.open(path, migrate=False)
        try:
            for statement in _SCHEMA:
                await db.write(statement)
            rows = await db.fetchall(
                "SELECT seq, chat_id, at, kind, text, path, event_id, action_id"
                " FROM outbox ORDER BY seq"
            )
            dropped = await db.scalar("SELECT value FROM outbox_meta WHERE key = 'dropped'")
        except BaseException:
            await db.aclose()
            raise
        return cls(db, [Held(*row) for row in rows], int(dropped or 0), limit)

    def waiting(self) -> list[Held]:
        """What no client has acknowledged yet, oldest first (a snapshot: no await)."""
        return list(self._held.values())

    def get(self, seq: int) -> Held | None:
        return self._held.get(seq)

    async def add(
        self,
        chat_id: str,
        kind: str,
        text: str,
        path: str | None = None,
        *,
        event_id: int | None = None,
        action_id: int | None = None,
    ) -> Held:
        """Keep a message; the oldest go when the bound is reached. Stored when this returns."""
        at = utc_now().isoformat(timespec="seconds")
        async with self._db.atomic() as conn:  # one add at a time: the bound holds
            gone = list(self._held)[: max(0, len(self._held) + 1 - self.limit)]
            cursor = await conn.execute(
                "INSERT INTO outbox (chat_id, at, kind, text, path, event_id, action_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (chat_id, at, kind, text, path, event_id, action_id),
            )
            seq = int(cursor.lastrowid or 0)
            if gone:
                await conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in gone])
                await conn.execute(
                    "INSERT INTO outbox_meta (key, value) VALUES ('dropped', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (len(gone),),
                )
        for old in gone:
            self._held.pop(old, None)
        if gone:
            self.dropped += len(gone)
            log.warning(
                "local outbox: %d undelivered message(s) dropped; it keeps the newest %d",
                len(gone),
                self.limit,
            )
        held = Held(seq, chat_id, at, kind, text, path, event_id, action_id)
        self._held[seq] = held
        return held

    async def remove(self, seq: int) -> Held | None:
        """A client got it: forget it. None when it was gone already (another client's ack)."""
        held = self._held.pop(seq, None)
        if held is not None:
            await self._db.write("DELETE FROM outbox WHERE seq = ?", (seq,))
        return held

    async def told_dropped(self) -> None:
        """A client was told how many were dropped: count afresh from now."""
        if self.dropped:
            self.dropped = 0
            await self._db.write("DELETE FROM outbox_meta WHERE key = 'dropped'")

    async def aclose(self) -> None:
        await self._db.aclose()
