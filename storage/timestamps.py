"""One timestamp format everywhere: UTC ISO-8601 with milliseconds and a `Z`.

Text in this form sorts chronologically, so SQL can compare it directly. Conversion to
the configured zone happens only when something is shown to a person.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime


def to_iso(moment: datetime) -> str:
    """UTC ISO text of an aware datetime.

    :raises ValueError: for a naive datetime (its zone would be a guess).
    """
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a time zone")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def from_iso(text: str) -> datetime:
    """Aware UTC datetime from stored text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@functools.lru_cache(maxsize=4)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def iso_from_ms(epoch_ms: int) -> str:
    """Same format from epoch milliseconds, cheaply: the event writer's per-row path, where
    consecutive rows share their second."""
    seconds, ms = divmod(epoch_ms, 1000)
    return f"{_second_text(seconds)}{ms:03d}Z"


def utc_now() -> datetime:
    return datetime.now(UTC)
