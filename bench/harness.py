"""What the benches share: a channel that sends nowhere."""

from __future__ import annotations

from assistant.channels.base import Channel, Inbox


class NullChannel(Channel):
    """Replies go nowhere: the benches time the assistant, not a chat platform."""

    name = "bench"
    prefix = "tg"

    async def start(self, inbox: Inbox) -> None:
        return None

    async def send_text(self, chat_id: str, text: str) -> str | None:
        return None
