"""The local channel's outbox lines over a real socket, against the real orchestrator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from assistant.channels.local import MAX_TEXT, LocalChannel
from assistant.channels.local_protocol import ACK_SHAPE, LOCAL_CHAT
from assistant.config import Settings
from assistant.local_client import LocalClient
from assistant.orchestrator import Orchestrator


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, LocalChannel]]:
    channel = LocalChannel(settings.endpoint_path, ack_wait_s=0.5)
    async with Orchestrator(settings, channels=[channel]) as orch:
        channel.record_deliveries(orch.services.log)
        yield orch, channel


async def _line(reader: asyncio.StreamReader) -> dict[str, Any]:
    data = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert isinstance(data, dict)
    return data


async def test_a_bad_ack_is_answered_and_the_connection_stays(
    settings: Settings, service: tuple[Orchestrator, LocalChannel]
) -> None:
    _, channel = service
    assert channel.port is not None
    token = json.loads(settings.endpoint_path.read_text())["token"]
    reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
    try:
        hello = {"token": token, "client": "test", "ack": True, "outbox": True}
        writer.write(json.dumps(hello).encode() + b"\n")
        ready = await _line(reader)
        assert ready["type"] == "ready" and ready["waiting"] == 0 and ready["kept"] == 200
        for bad in ('"7"', "true", "null"):
            writer.write(b'{"type": "ack", "outbox": ' + bad.encode() + b"}\n")
            assert await _line(reader) == {"type": "error", "text": ACK_SHAPE}
        writer.write(b'{"type": "ack", "outbox": 123456}\n')  # nothing waits under it: no answer
        writer.write(b'{"type": "message", "id": "m1", "text": "/help"}\n')
        kinds = [(await _line(reader))["type"] for _ in range(2)]
        assert kinds == ["message", "settled"]
    finally:
        writer.close()


async def test_a_held_message_is_kept_whole_enough_to_be_read_and_acked_once(
    service: tuple[Orchestrator, LocalChannel], settings: Settings
) -> None:
    orch, channel = service
    huge = "é" * (MAX_TEXT + 5000)  # escaped, the whole of it would be over a line's limit
    assert not await orch.send(LOCAL_CHAT, huge, None)  # nobody attached: kept, not "sent"
    assert channel.outbox is not None and len(channel.outbox.waiting()) == 1
    async with LocalClient(settings.endpoint_path, outbox=True) as client:
        assert client.waiting == 1
        item = await anext(client.incoming())
        assert item.held and item.text.endswith("[cut here: 5,000 more characters]")
        await client.ack(item)
        await client.send("/help")  # settled after the ack was read: it came first
        async for later in client.incoming():
            if later.kind == "settled":
                break
            await client.ack(later)
    assert channel.outbox.waiting() == []
