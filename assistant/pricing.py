"""What a model call costs: list prices per million tokens, by model family and version.

Prices differ between versions of one family (Opus 4.5 costs a third of Opus 4.1), so the
table is keyed by (family, major, minor), read from both id styles: `claude-sonnet-4-5`,
`claude-sonnet-4-5-20250929` and `claude-3-5-haiku-20241022`. A model not listed costs 0
with a warning, rather than a guess that would make the budget wrong silently. Cache
writes are priced at the 5-minute rate (the agent's cache breakpoint uses the default
TTL). Source: Anthropic's pricing page; update it here when prices change.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

MTOK = 1_000_000


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    # Haiku 5.5 bills a whole request at `long_rates` once its prompt passes this size
    long_prompt_over: int | None = None
    long_rates: Prices | None = None


_OPUS_OLD = Prices(15, 75, 18.75, 1.50)
_OPUS_NEW = Prices(5, 25, 6.25, 0.50)
_SONNET = Prices(3, 15, 3.75, 0.30)
_FABLE = Prices(10, 50, 12.50, 1.00)

PRICES: dict[tuple[str, int, int], Prices] = {
    ("opus", 3, 0): _OPUS_OLD,
    ("opus", 4, 0): _OPUS_OLD,
    ("opus", 4, 1): _OPUS_OLD,
    ("opus", 4, 5): _OPUS_NEW,
    ("opus", 4, 6): _OPUS_NEW,
    ("opus", 4, 7): _OPUS_NEW,
    ("opus", 4, 8): _OPUS_NEW,
    ("opus", 5, 0): _OPUS_NEW,
    ("opus", 5, 5): Prices(4, 20, 5, 0.20),
    ("sonnet", 3, 5): _SONNET,
    ("sonnet", 3, 7): _SONNET,
    ("sonnet", 4, 0): _SONNET,
    ("sonnet", 4, 5): _SONNET,
    ("sonnet", 4, 6): _SONNET,
    ("sonnet", 5, 0): Prices(2, 10, 2.50, 0.20),
    ("sonnet", 5, 5): Prices(2, 10, 2.50, 0.10),
    ("haiku", 3, 0): Prices(0.25, 1.25, 0.30, 0.03),
    ("haiku", 3, 5): Prices(0.80, 4, 1, 0.08),
    ("haiku", 4, 5): Prices(1, 5, 1.25, 0.10),
    ("haiku", 5, 5): Prices(
        0.10, 0.50, 0.125, 0.01, long_prompt_over=100_000, long_rates=Prices(0.5, 2.5, 0.625, 0.05)
    ),
    ("fable", 5, 0): _FABLE,
    ("fable", 5, 1): Prices(10, 50, 12.50, 0.25),
    ("mythos", 5, 0): _FABLE,
    ("mythos", 5, 1): Prices(10, 50, 12.50, 0.25),
}

_FAMILIES = "opus|sonnet|haiku|fable|mythos"
# claude-sonnet-4-5[-20250929], claude-opus-4[-20250514]: a minor is one or two digits,
# a date eight.
_NEW_STYLE = re.compile(rf"({_FAMILIES})-(\d{{1,2}})(?:-(\d{{1,2}}))?(?=-\d{{8}}|$|@|\[)")
# claude-3-5-haiku-20241022, claude-3-opus-20240229
_OLD_STYLE = re.compile(rf"claude-(\d)(?:-(\d))?-({_FAMILIES})\b")

_warned: set[str] = set()


def model_key(model: str) -> tuple[str, int, int] | None:
    """(family, major, minor) of a model id, or None if it is not one we can read."""
    name = model.lower().strip()
    new = _NEW_STYLE.search(name)
    if new is not None:
        return new.group(1), int(new.group(2)), int(new.group(3) or 0)
    old = _OLD_STYLE.search(name)
    if old is not None:
        return old.group(3), int(old.group(1)), int(old.group(2) or 0)
    return None


def prices_for(model: str) -> Prices | None:
    key = model_key(model)
    return None if key is None else PRICES.get(key)


def cost_usd(model: str, *, input: int, output: int, cache_read: int, cache_write: int) -> float:
    """Dollars for one call; 0 (and one warning per model) for a model not in the table."""
    prices = prices_for(model)
    if prices is None:
        if model not in _warned:
            _warned.add(model)
            log.warning("no price known for model %r: its calls are counted at $0", model)
        return 0.0
    prompt = input + cache_read + cache_write
    over = prices.long_prompt_over
    if prices.long_rates is not None and over is not None and prompt > over:
        prices = prices.long_rates
    return (
        input * prices.input
        + output * prices.output
        + cache_write * prices.cache_write
        + cache_read * prices.cache_read
    ) / MTOK
