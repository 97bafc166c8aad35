"""Messages: the cursor is a sequence number, so same-millisecond messages are never skipped."""

from __future__ import annotations

from storage.chats import ChatRepo
from storage.db import Database
from storage.messages import MessageRepo


async def test_same_timestamp_messages_are_all_seen(db: Database) -> None:
    await ChatRepo(db).seen("tg:1", "group")
    repo = MessageRepo(db)
    seqs = [await repo.store("tg:1", "ann", f"m{i}") for i in range(5)]
    # Force every message onto one timestamp: a timestamp cursor would lose some.
    await db.write("UPDATE messages SET ts = '2026-01-01T00:00:00.000Z'")
    first = await repo.pending("tg:1")
    assert [m.text for m in first] == ["m0", "m1", "m2", "m3", "m4"]
    await repo.advance_cursor("tg:1", first[2].seq)
    assert [m.text for m in await repo.pending("tg:1")] == ["m3", "m4"]
    assert seqs == sorted(seqs)


async def test_redelivery_of_a_platform_message_is_ignored(db: Database) -> None:
    await ChatRepo(db).seen("tg:1", "")
    repo = MessageRepo(db)
    assert await repo.store("tg:1", "ann", "hi", platform_id="42") is not None
    assert await repo.store("tg:1", "ann", "hi", platform_id="42") is None
    assert len(await repo.pending("tg:1")) == 1


async def test_cursor_never_moves_back(db: Database) -> None:
    await ChatRepo(db).seen("tg:1", "")
    repo = MessageRepo(db)
    for i in range(3):
        await repo.store("tg:1", "ann", f"m{i}")
    await repo.advance_cursor("tg:1", 3)
    await repo.advance_cursor("tg:1", 1)
    assert await repo.pending("tg:1") == []
    assert await repo.chats_with_pending() == []
