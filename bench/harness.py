"""What the benches share: a channel that sends nowhere, and when a run started."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from assistant.channels.base import Channel, Inbox
from storage.timestamps import from_iso


class NullChannel(Channel):
    """Replies go nowhere: the benches time the assistant, not a chat platform."""

    name = "bench"
    prefix = "tg"

    async def start(self, inbox: Inbox) -> None:
        return None

    async def send_text(self, chat_id: str, text: str) -> str | None:
        return None


async def started_at(events: Path, poll_s: float) -> float:
    """When the run wrote its `started` event (epoch seconds), polling its events.jsonl."""
    while True:
        await asyncio.sleep(poll_s)
        if events.exists():
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event["type"] == "started":
                    return from_iso(event["ts"]).timestamp()
