"""Replies never quote a huge argument back: `/status <200 KB>` gets a short refusal.

Every refusal names what was wrong, quoting a recognisable start of the argument, and says
what would be right (the usage); the rest of the argument is not echoed into the chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from commands.formatting import bound_lines, quote, shorten
from tests.support.recording import RecordingChannel, Running

ADMIN = "tg:1001"
HUGE_WORDS = " ".join(f"word{i}" for i in range(40_000))  # about 300 KB, with spaces
HUGE_WORD = "x" * 200_000
# What a reply to any of these may reach at most: the usage text plus a bounded quote.
REPLY_LIMIT = 2_500


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    channel = RecordingChannel()
    runner = ProcessRunner(settings.runs_dir)
    async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
        yield Running(orch, channel, settings)


@pytest.mark.parametrize(
    "text",
    [
        f"/status {HUGE_WORDS}",
        f"/status {HUGE_WORD}",
        f"/help {HUGE_WORD}",
        f"/debug {HUGE_WORD}",
        f"/debug why {HUGE_WORD}",
        f"/task {HUGE_WORD}",
        f"/task add {HUGE_WORD} /status",
        f"/task pause {HUGE_WORD}",
        f"/run {HUGE_WORD}",
        f"/run show {HUGE_WORD}",
        f"/run train {HUGE_WORD}",
        f"/run train classifier steps={HUGE_WORD}",
        f"/recipes {HUGE_WORD}",
        f"/runs {HUGE_WORDS}",
        f"/chat {HUGE_WORD}",
        f"/chat admin {HUGE_WORD}",
        f"/chat mode tg:5 {HUGE_WORD}",
        f"/usage {HUGE_WORD}",
        f"/{HUGE_WORD}",
    ],
    ids=lambda text: text.split("x")[0].split("word")[0].strip() or "name",
)
async def test_a_huge_argument_gets_a_short_reply(running: Running, text: str) -> None:
    replies = await running.channel.say(ADMIN, text)
    assert replies, "no reply"
    total = sum(len(r) for r in replies)
    assert total <= REPLY_LIMIT, f"{total} characters: {replies[0][:300]!r}"
    assert HUGE_WORD[:500] not in "".join(replies)
    assert "word39999" not in "".join(replies)


async def test_the_refusal_still_says_what_was_wrong_and_what_is_right(running: Running) -> None:
    (reply,) = await running.channel.say(ADMIN, f"/status {HUGE_WORDS}")
    assert reply.startswith("/status has no view 'word0 word1 word2")
    assert "…" in reply
    assert "Usage:\n/status — the dashboard" in reply


def test_quote_and_shorten_bound_what_they_quote() -> None:
    assert quote("abc") == "'abc'"
    assert shorten("a" * 10, 5) == "aaaa…"
    assert len(quote("y" * 10_000)) <= 82
    assert bound_lines("short\nlines") == "short\nlines"
    long = "start " + "z" * 10_000 + " the end"
    bounded = bound_lines(long, limit=100)
    assert len(bounded) <= 100 and bounded.startswith("start ") and bounded.endswith("the end")
    assert bound_lines("\n".join(["l"] * 100), max_lines=5) == "l\nl\nl\nl\n…"
