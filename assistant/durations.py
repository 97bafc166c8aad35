"""Durations as people type them on phones ("30s", "1h30m", "2d") and as we show them back."""

from __future__ import annotations

import re
from datetime import timedelta

from assistant.errors import CommandError

MIN_DURATION = timedelta(seconds=10)
MAX_DURATION = timedelta(days=3650)
FORMS = "a number and a unit: 30s, 5m, 2h, 1d, 1w, or combined like 1h30m"

_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_PART = re.compile(r"(\d{1,9})\s*([a-z]+)\s*")
_SHOWN = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str, *, minimum: timedelta = MIN_DURATION) -> timedelta:
    """`1h30m` -> 90 minutes. Parts may be separated by spaces ("2h 15m", as we print them).

    :raises CommandError: naming the accepted forms, or the shortest allowed duration.
    """
    cleaned = text.strip().lower()
    total = 0
    pos = 0
    while pos < len(cleaned):
        match = _PART.match(cleaned, pos)
        if match is None or match.group(2) not in _UNITS:
            raise CommandError(f"{text.strip()!r} is not a duration; use {FORMS}")
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise CommandError(f"{text.strip()!r} is not a duration; use {FORMS}")
    duration = timedelta(seconds=total) if total <= MAX_DURATION.total_seconds() else None
    if duration is None:
        raise CommandError(f"{text.strip()} is too long; the longest is 3650d")
    if duration < minimum:
        raise CommandError(
            f"{text.strip()} is too short; the shortest is {format_duration(minimum)}"
        )
    return duration


def format_duration(delta: timedelta, *, parts: int = 2) -> str:
    """`8100 s` -> "2h 15m": the `parts` units from the largest non-zero one, floored.

    Zero units inside that window are left out ("1d 5m" with parts=3); the default of two
    makes "1d 0h 5m" read "1d", close enough for "in ..." and "... ago".
    """
    seconds = int(abs(delta).total_seconds())
    shown: list[str] = []
    window = 0
    for unit, size in _SHOWN:
        count, seconds = divmod(seconds, size)
        if count or window:
            window += 1
        if count:
            shown.append(f"{count}{unit}")
        if window >= parts:
            break
    return " ".join(shown) or "0s"
