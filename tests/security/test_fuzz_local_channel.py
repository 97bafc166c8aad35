"""The local channel's protocol against hostile clients, over a real socket.

Every line a client sends gets an answer: an `error` line that says what was wrong and
what is expected, or the message is handled and `settled`. A bad hello ends that one
connection; nothing ends the service, logs a traceback or stops the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from assistant.channels.local import MAX_LINE, LocalChannel
from assistant.config import Settings
from assistant.errors import ChannelError
from assistant.local_client import LocalClient, exchange
from assistant.orchestrator import Orchestrator

SEED = 20261202


@dataclass
class Service:
    orch: Orchestrator
    channel: LocalChannel
    token: str
    conns: list[Conn] = field(default_factory=list)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    channel = LocalChannel(settings.endpoint_path)
    async with Orchestrator(settings, channels=[channel]) as orch:
        token = json.loads(settings.endpoint_path.read_text())["token"]
        running = Service(orch, channel, token)
        try:
            yield running
        finally:
            for conn in running.conns:
                await conn.aclose()


class Conn:
    """A raw client: bytes out, JSON lines back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, service: Service, hello: bytes | None = None) -> Conn:
        assert service.channel.port is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", service.channel.port, limit=4 * MAX_LINE
        )
        conn = cls(reader, writer)
        service.conns.append(conn)
        if hello is None:
            await conn.send(json.dumps({"token": service.token}).encode())
            assert (await conn.reply())["type"] == "ready"
        else:
            await conn.send(hello)
        return conn

    async def send(self, line: bytes) -> None:
        self.writer.write(line + b"\n")
        await self.writer.drain()

    async def reply(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 30)
        assert line, "the service closed the connection without a reply"
        data = json.loads(line.decode("utf-8"))  # strict: replies are valid UTF-8 JSON
        assert isinstance(data, dict)
        if data["type"] == "error":
            assert len(line) < 1024, "an error reply quoted too much of what was sent"
        return data

    async def outcome(self) -> dict[str, Any]:
        """The next `error` or `settled`, past the assistant's own messages."""
        while True:
            data = await self.reply()
            if data["type"] in ("error", "settled"):
                return data

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# ---- the hello ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hello", "says"),
    [
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'"token"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'{"token": ', "not JSON"),
        (b'{"token": "\xff\xfe"}', "not valid UTF-8"),
        (b"x" * (MAX_LINE + 10), "longer than 1 MiB"),
        (b'{"token": 12345}', "bad token"),
        (b'{"token": "\\udcff\\u0000"}', "bad token"),
        (b"", "empty line"),
        (b"[" * 200_000, "not JSON"),
    ],
)
async def test_a_bad_hello_gets_one_error_line_and_the_connection_ends(
    service: Service, caplog: pytest.LogCaptureFixture, hello: bytes, says: str
) -> None:
    conn = await Conn.open(service, hello)
    reply = await conn.reply()
    assert reply["type"] == "error" and says in reply["text"], reply
    if says != "bad token":
        assert "expected one line of UTF-8 JSON" in reply["text"] and '"token"' in reply["text"]
    assert await conn.closed()
    await conn.aclose()
    good = await Conn.open(service)  # the service is fine
    await good.send(json.dumps({"type": "message", "id": "m1", "text": "/help"}).encode())
    assert (await good.outcome()) == {"type": "settled", "id": "m1"}
    await good.aclose()
    no_tracebacks(caplog)


# ---- message lines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"x" * (MAX_LINE + 1), "longer than 1 MiB"),
        (b"y" * (3 * MAX_LINE) + b"tail", "longer than 1 MiB"),
        (b'{"type": "message", "text": "caf\xe9"}', "not valid UTF-8"),
        (b'{"type": "message", "text": ', "not JSON"),
        (b"not json at all", "not JSON"),
        (b"[]", "expected a JSON object, got list"),
        (b"42", "expected a JSON object, got int"),
        (b'{"type": "message", "text": 5}', '"text" must be a string'),
        (b'{"type": "message", "text": ["a"]}', '"text" must be a string'),
        (b'{"type": "message", "id": {"a": 1}, "text": "hi"}', '"id" must be a string'),
        (b'{"type": "shutdown"}', "unknown type 'shutdown'"),
        (b'{"text": "no type"}', "unknown type None"),
        (b"   ", "empty line"),
        (b"[" * 500_000, "not JSON"),
        (b'{"a":' * 200_000, "not JSON"),
    ],
)
async def test_a_bad_line_gets_one_error_line_and_the_connection_stays(
    service: Service, caplog: pytest.LogCaptureFixture, line: bytes, says: str
) -> None:
    conn = await Conn.open(service)
    await conn.send(line)
    reply = await conn.reply()
    assert reply["type"] == "error" and says in reply["text"], reply
    assert '{"type": "message", "id": "<string>", "text": "<string>"}' in reply["text"]
    await conn.send(json.dumps({"type": "message", "id": "after", "text": "/help"}).encode())
    assert (await conn.outcome()) == {"type": "settled", "id": "after"}
    await conn.aclose()
    no_tracebacks(caplog)


async def test_the_error_reply_names_the_message_it_refused(service: Service) -> None:
    conn = await Conn.open(service)
    await conn.send(b'{"type": "message", "id": "m7", "text": null}')
    assert await conn.reply() == {
        "type": "error",
        "id": "m7",
        "text": '"text" must be a string; expected one line of UTF-8 JSON:'
        ' {"type": "message", "id": "<string>", "text": "<string>"}',
    }
    await conn.aclose()


async def test_surrogates_and_nul_in_a_message_are_stored_as_replacement_characters(
    service: Service,
) -> None:
    conn = await Conn.open(service)
    await conn.send(b'{"type": "message", "id": "s1", "text": "a\\udcff b\\u0000 c\\ud800"}')
    assert (await conn.outcome()) == {"type": "settled", "id": "s1"}
    await conn.aclose()
    text = await service.orch.services.db.scalar(
        "SELECT text FROM messages WHERE platform_id = 's1'"
    )
    assert text == "a\ufffd b\ufffd c\ufffd"


# ---- the client library ------------------------------------------------------------------


async def test_the_client_reports_a_refused_message_instead_of_waiting(
    service: Service, settings: Settings
) -> None:
    with pytest.raises(ChannelError, match="refused the message: line longer than 1 MiB"):
        async for _ in exchange(settings.endpoint_path, "z" * (MAX_LINE + 5), within=30):
            pass
    replies = [r async for r in exchange(settings.endpoint_path, "poison \udcff here")]
    assert replies and not any("could not store" in r for r in replies)


async def test_the_client_survives_a_hostile_service(settings: Settings) -> None:
    """A server that answers garbage: the client says so instead of crashing."""
    answers = [b"\xff\xfe garbage\n", b"[1]\n", b"y" * (MAX_LINE + 5) + b"\n"]

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = answers.pop(0)
        with contextlib.suppress(ConnectionError):
            await reader.readline()
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings.endpoint_path.parent.mkdir(parents=True, exist_ok=True)
    settings.endpoint_path.write_text(json.dumps({"host": "127.0.0.1", "port": port, "token": "t"}))
    try:
        for expected in ("not JSON", "not a JSON object", "over"):
            with pytest.raises(ChannelError, match=expected):
                async with LocalClient(settings.endpoint_path):
                    pass
        settings.endpoint_path.write_text('["not", "an", "endpoint"]')
        with pytest.raises(ChannelError, match="not what `assistant up` writes"):
            async with LocalClient(settings.endpoint_path):
                pass
    finally:
        server.close()
        await server.wait_closed()


# ---- fuzz --------------------------------------------------------------------------------


def _fuzz_lines(rng: random.Random, n: int) -> list[tuple[bytes, bool]]:
    """(line, is a valid message) pairs: random bytes, bad JSON, wrong shapes, odd text."""
    odd_text = ["\\udcff", "\\u0000", "\\ud83d", "\\ufffd", "é", "🙂", "\\n", "\\\\", "\\t"]
    shapes = [
        lambda: json.dumps(rng.choice([None, 1, 2.5, True, [], [1], "s", {"x": 1}])),
        lambda: json.dumps({"type": rng.choice(["message", "msg", 1, None]), "text": 5}),
        lambda: json.dumps({"type": "message", "id": [rng.random()], "text": "x"}),
        lambda: '{"type": "message", "text": "' + "".join(rng.choices(odd_text, k=8)),
    ]
    lines: list[tuple[bytes, bool]] = []
    for i in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            lines.append((raw.replace(b"\n", b"\r"), False))
        elif kind == 1:
            lines.append((rng.choice(shapes)().encode(), False))
        elif kind == 2:
            lines.append((rng.choice([b"{", b"[", b'{"a":[']) * rng.randrange(1, 200_000), False))
        else:
            text = "".join(rng.choices(odd_text, k=rng.randrange(1, 20)))
            line = '{"type": "message", "id": "f' + str(i) + '", "text": "m ' + text + '"}'
            lines.append((line.encode(), True))
    return lines


async def test_fuzzed_lines_each_get_an_answer_and_the_log_keeps_committing(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    log = service.orch.services.log
    await log.flush()
    written = log.stats.written
    rng = random.Random(SEED)
    conn = await Conn.open(service)
    valid = 0
    for line, is_message in _fuzz_lines(rng, 120):
        await conn.send(line)
        outcome = await conn.outcome()
        assert outcome["type"] == ("settled" if is_message else "error"), (line[:80], outcome)
        valid += is_message
    await conn.send(json.dumps({"type": "message", "id": "last", "text": "/status"}).encode())
    status = ""
    while (data := await conn.reply())["type"] != "settled":
        status += data.get("text", "")
    await conn.aclose()
    await log.flush()
    assert valid > 40
    assert "Event log:" in status and "last error" not in status and "dropped" not in status
    assert log.pending == 0 and log.stats.dropped == 0 and log.stats.failures == 0
    assert log.stats.written >= written + valid  # every handled message left rows behind
    stored = await service.orch.services.db.scalar(
        "SELECT count(*) FROM messages WHERE platform_id LIKE 'f%'"
    )
    assert stored == valid
    no_tracebacks(caplog)
