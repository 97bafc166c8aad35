"""The benchmark client against a hostile server: bad answers fail one request, no more.

Non-JSON SSE lines, chunks of the wrong shape, invalid UTF-8, lone surrogates in error
text, a huge line, a 200 with garbage, a huge error body: each request is recorded as
failed with a short, valid reason; the profile runs to its end; the result files are
written; and what the benchmark reports can go into the event log like anything else.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from assistant.jobs.bench.client import BenchClient, ClientConfig, served_models
from assistant.jobs.bench.profiles import custom_profile
from assistant.jobs.bench.results import (
    ProfileRun,
    RunMetadata,
    build_result,
    write_requests,
    write_result,
)
from assistant.observability import EventLog
from assistant.redaction import Redactor
from storage.db import Database
from tests.fakes.openai_server import FakeOpenAIServer

SEED = 1102
META = RunMetadata("m", "fake-model", "/v1/completions", server_healthy=True)
TOKEN = b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
DONE = b"data: [DONE]\n\n"


def usage(completion: object = 3) -> bytes:
    body = {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": completion}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


GOOD = TOKEN * 3 + usage() + DONE

# (status, body, what the failed request's reason says; None: the request succeeds)
HOSTILE: list[tuple[int, bytes, str | None]] = [
    (200, GOOD, None),
    (200, b"data: not json\n\n" + GOOD, "bad stream: a data line is not JSON"),
    (200, b"data: [1, 2]\n\n" + GOOD, "bad stream: a chunk is a JSON list, not an object"),
    (200, b'data: {"choices": "x"}\n\n' + GOOD, "bad stream: choices is not a list"),
    (200, b'data: {"choices": [5]}\n\n' + GOOD, "bad stream: choices[0] is not an object"),
    (200, b'data: {"choices": [], "usage": "lots"}\n\n', "bad stream: usage is not an object"),
    (200, TOKEN + usage("many") + DONE, "completion_tokens is not a whole number"),
    (200, TOKEN + usage([1]) + DONE, "completion_tokens is not a whole number"),
    (200, TOKEN + usage(-4) + DONE, "completion_tokens is not a whole number"),
    (
        200,
        b'data: {"error": {"message": "bad \\udcff thing \\u0000"}}\n\n',
        "error in the stream: bad \ufffd thing \ufffd",
    ),
    (200, b'data: {"error": "\xff\xfe"}\n\n', "bad stream: a data line is not JSON"),
    (200, b"data: " + b"A" * (3 * 1024 * 1024), "bad stream: a line over 1024 KiB"),
    (200, b"data: " + b"[" * 200_000 + b"\n\n", "bad stream: a data line is not JSON"),
    (200, b"<html>\xff\xfe garbage \x00</html>\n", "the stream ended without a token"),
    (500, b"\xff\xfe" + b"\x00boom " * 100_000, "HTTP 500 Internal Server Error: \ufffd\ufffd"),
    (404, b'{"error": {"message": "no \\udcff here"}}', "HTTP 404 Not Found: no \ufffd here"),
    (400, b"[" * 60_000, "HTTP 400 Bad Request: [[[["),
    (200, GOOD, None),
]


def check_records(run: ProfileRun) -> None:
    for record in run.records:
        assert record.ok or record.error, record
        if record.error is not None:
            assert len(record.error) <= 300
            record.error.encode("utf-8")  # valid text: storable, sendable


async def log_and_count(db: Database, run: ProfileRun, tmp_path: Path) -> int:
    """Write the result files and log the result as the host would; rows written."""
    result = build_result(run, META)
    path = write_result(tmp_path, result)
    write_requests(tmp_path, run.profile.name, run.records)
    assert json.loads(path.read_text(encoding="utf-8"))["failed"] == result["failed"]
    log = EventLog(db, Redactor(), flush_interval=0.02)
    await log.start()
    try:
        log.log_event("bench", summary="result", content=result)
        for record in run.records:
            log.log_event("bench", summary=record.error or "ok", content=record)
        assert await log.flush()
        assert log.stats.dropped == 0 and log.pending == 0
        return log.stats.written
    finally:
        await log.aclose()


async def test_each_hostile_answer_fails_its_request_alone(db: Database, tmp_path: Path) -> None:
    scripted = tuple((status, body) for status, body, _ in HOSTILE)
    profile = custom_profile(8, 3, 1, len(HOSTILE))
    async with (
        FakeOpenAIServer(stats_interval_s=0, scripted=scripted) as fake,
        BenchClient(ClientConfig(fake.url, "fake-model", warmup=0)) as client,
    ):
        run = await client.run(profile)
    check_records(run)
    assert len(run.records) == len(HOSTILE) and not run.stopped
    for record, (status, _, says) in zip(run.records, HOSTILE, strict=True):
        if says is None:
            assert record.ok and record.output_tokens == 3, record
        else:
            assert not record.ok and record.error is not None, record
            assert record.error.startswith(says) or says in record.error, (status, record.error)
    result = build_result(run, META)
    assert (result["completed"], result["failed"]) == (2, len(HOSTILE) - 2)
    assert await log_and_count(db, run, tmp_path) == len(HOSTILE) + 1


async def test_seeded_random_streams_never_end_the_profile(db: Database, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    pieces = [
        TOKEN,
        usage(),
        DONE,
        b"data: {",
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
        b'data: {"choices":[{\xff}]}\n\n',
        b"data: \xed\xa0\x80\n\n",  # an encoded lone surrogate: not UTF-8
        b"data: null\n\n",
        b'data: {"usage": {"completion_tokens": 1e400}}\n\n',
        b": ping\n\n",
        b"\r\n",
        b"\x00\x00",
    ]
    scripted: list[tuple[int, bytes]] = []
    for _ in range(40):
        if rng.random() < 0.3:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        else:
            body = b"".join(rng.choices(pieces, k=rng.randrange(1, 12)))
        scripted.append((rng.choice([200, 200, 200, 500, 503]), body))
    profile = custom_profile(8, 3, 4, len(scripted))
    async with (
        FakeOpenAIServer(stats_interval_s=0, scripted=tuple(scripted)) as fake,
        BenchClient(ClientConfig(fake.url, "fake-model", warmup=0)) as client,
    ):
        run = await client.run(profile)
    check_records(run)
    assert len(run.records) == len(scripted) and not run.stopped
    assert sum(not r.ok for r in run.records) > 0
    assert await log_and_count(db, run, tmp_path) == len(scripted) + 1


async def test_a_hostile_model_listing_is_read_safely() -> None:
    listings = [
        (b'{"data": [{"id": "m\\udcff"}, 5, "x", {"id": "ok"}]}', ["m\ufffd", "ok"]),
        (b'{"data": "all of them"}', None),
        (b"[" * 200_000, None),
        (b"\xff\xfe", None),
        (b'{"data": [{"id": "' + b"x" * (2 * 1024 * 1024) + b'"}]}', None),  # over the bound
    ]
    for body, expected in listings:
        async with FakeOpenAIServer(stats_interval_s=0, models_body=body) as fake:
            assert await served_models(fake.url) == expected
