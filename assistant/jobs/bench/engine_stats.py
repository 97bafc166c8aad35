"""vLLM's periodic engine statistic lines, parsed: the reference's live monitor, as data.

    INFO 11-23 10:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 1234.5 tokens/s,
    Avg generation throughput: 56.7 tokens/s, Running: 3 reqs, Waiting: 0 reqs,
    GPU KV cache usage: 12.3%, Prefix cache hit rate: 45.6%

Older engines say `Swapped: 0 reqs, Pending: 0 reqs` (Pending is the queue) and
`Prefix cache hit rate: GPU: 45.6%, CPU: 0.0%`. Each field is looked for on its own, so
a version that drops or reorders one still yields the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_PROMPT = re.compile(rf"Avg prompt throughput: {_NUM} tokens/s")
_GENERATION = re.compile(rf"Avg generation throughput: {_NUM} tokens/s")
_RUNNING = re.compile(r"Running: ([0-9]+) reqs")
_WAITING = re.compile(r"(?:Waiting|Pending): ([0-9]+) reqs")
_SWAPPED = re.compile(r"Swapped: ([0-9]+) reqs")
# "GPU KV cache usage" (V0 and V1) or plain "KV cache usage"; never the CPU one
_KV = re.compile(rf"(?<!CPU )KV cache usage: {_NUM}%")
# the local cache's rate, never "External prefix cache hit rate" (KV connectors) or the CPU one
_PREFIX = re.compile(
    rf"(?<!External )(?<!CPU )(?:GPU )?[Pp]refix cache hit rate: (?:GPU: )?{_NUM}%"
)
_MARKERS = (
    "Avg prompt throughput",
    "Avg generation throughput",
    "KV cache usage",
    "refix cache hit rate",
)


@dataclass(frozen=True)
class EngineStats:
    """One statistics line; a field the line lacks is None. Percentages are 0-100."""

    prompt_throughput: float | None  # tokens/s of prefill over the last interval
    generation_throughput: float | None  # tokens/s of decode over the last interval
    running: int | None
    waiting: int | None
    kv_cache_usage: float | None
    prefix_cache_hit_rate: float | None = None
    swapped: int | None = None  # V0 engines only


def _float(pattern: re.Pattern[str], line: str) -> float | None:
    m = pattern.search(line)
    return float(m.group(1)) if m else None


def _int(pattern: re.Pattern[str], line: str) -> int | None:
    m = pattern.search(line)
    return int(m.group(1)) if m else None


def parse_engine_line(line: str) -> EngineStats | None:
    """The statistics in one log line, or None when it is not a statistics line."""
    if not any(marker in line for marker in _MARKERS):
        return None
    return EngineStats(
        prompt_throughput=_float(_PROMPT, line),
        generation_throughput=_float(_GENERATION, line),
        running=_int(_RUNNING, line),
        waiting=_int(_WAITING, line),
        kv_cache_usage=_float(_KV, line),
        prefix_cache_hit_rate=_float(_PREFIX, line),
        swapped=_int(_SWAPPED, line),
    )
