"""Prices by model version, and the usage repository's sums by UTC day and chat."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from assistant.pricing import PRICES, cost_usd, model_key
from storage.db import Database
from storage.usage import ModelCall, UsageRepo


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-sonnet-4-5", ("sonnet", 4, 5)),
        ("claude-sonnet-4-5-20250929", ("sonnet", 4, 5)),
        ("claude-opus-4-20250514", ("opus", 4, 0)),
        ("claude-opus-4-1", ("opus", 4, 1)),
        ("claude-opus-5", ("opus", 5, 0)),
        ("claude-3-5-haiku-20241022", ("haiku", 3, 5)),
        ("claude-3-haiku-20240307", ("haiku", 3, 0)),
        ("claude-haiku-5-5[1m]", ("haiku", 5, 5)),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", ("sonnet", 4, 5)),
        ("claude-opus-4-1@20250805", ("opus", 4, 1)),
        ("my-proxy-model", None),
    ],
)
def test_model_ids_of_both_styles_are_read(model: str, key: tuple[str, int, int] | None) -> None:
    assert model_key(model) == key


def test_versions_of_one_family_are_priced_apart() -> None:
    one_million = {"input": 1_000_000, "output": 0, "cache_read": 0, "cache_write": 0}
    assert cost_usd("claude-opus-4-1", **one_million) == 15
    assert cost_usd("claude-opus-4-5", **one_million) == 5
    assert cost_usd("claude-sonnet-4-5", **one_million) == 3
    assert cost_usd("claude-3-5-haiku-20241022", **one_million) == 0.80
    # 1200 in, 300 out, 5000 cache read, 800 cache write on sonnet 4.5
    cost = cost_usd("claude-sonnet-4-5", input=1200, output=300, cache_read=5000, cache_write=800)
    assert cost == pytest.approx(0.0126)
    # haiku 5.5 bills the whole request at the long-prompt rate past 100k prompt tokens
    short = cost_usd("claude-haiku-5-5", input=100_000, output=0, cache_read=0, cache_write=0)
    long = cost_usd("claude-haiku-5-5", input=100_001, output=0, cache_read=0, cache_write=0)
    assert short == pytest.approx(0.01) and long == pytest.approx(0.0500005)
    assert all(p.cache_read < p.input < p.cache_write for p in PRICES.values())


async def test_sums_by_day_and_chat(db: Database) -> None:
    repo = UsageRepo(db)
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    calls = [
        (now, ModelCall("m", 100, 10, 1000, 50, 0.5, chat_id="tg:1")),
        (now, ModelCall("m", 200, 20, 0, 0, 0.25, chat_id="tg:2")),
        (now, ModelCall("m", 1, 1, 1, 1, 0.125, chat_id=None)),
        (now - timedelta(days=1), ModelCall("m", 5, 5, 5, 5, 1.0, chat_id="tg:1")),
        (now - timedelta(days=9), ModelCall("m", 7, 7, 7, 7, 9.0, chat_id="tg:1")),
    ]
    for at, call in calls:
        await repo.record(call, at=at)
    assert await repo.cost_today(now=now) == pytest.approx(0.875)
    days = await repo.totals_by_day(7, now=now)
    assert [(d.key, d.calls, d.cost_usd) for d in days] == [
        ("2026-11-23", 3, 0.875),
        ("2026-11-22", 1, 1.0),
    ]
    today = days[0]
    assert (today.input, today.output, today.cache_read, today.cache_write) == (301, 31, 1001, 51)
    chats = await repo.totals_by_chat("2026-11-23")
    assert [(c.key, c.tokens) for c in chats] == [("tg:1", 1160), ("tg:2", 220), ("", 4)]
    empty = await repo.day_total("2026-01-01")
    assert (empty.calls, empty.tokens, empty.cost_usd) == (0, 0, 0.0)
