"""A serving benchmark run through the chat, against the fake OpenAI-compatible server."""

from __future__ import annotations

from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID


async def bench(channel: RecordingChannel, text: str) -> str:
    (reply,) = await channel.say(ADMIN, text)
    match = RUN_ID.search(reply)
    assert match, reply
    return match.group(1)
