"""Durations as typed on a phone, and as replies show them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from assistant.durations import format_duration, parse_duration
from assistant.errors import CommandError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2h 15m", 8100),
        ("1d2h3m4s", 93784),
        ("10 min", 600),
        ("3 hours", 10800),
        ("2H", 7200),
    ],
)
def test_accepted_forms(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "h", "5x", "1.5h", "-5m", "5m garbage", "five minutes"])
def test_rejected_forms_name_the_accepted_ones(text: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_duration(text)
    assert "is not a duration; use a number and a unit: 30s, 5m, 2h, 1d, 1w" in str(err.value)


def test_minimum_is_ten_seconds_unless_asked_otherwise() -> None:
    with pytest.raises(CommandError, match=r"^5s is too short; the shortest is 10s$"):
        parse_duration("5s")
    assert parse_duration("10s") == timedelta(seconds=10)
    assert parse_duration("2s", minimum=timedelta(seconds=1)) == timedelta(seconds=2)


def test_absurdly_long_is_refused() -> None:
    with pytest.raises(CommandError, match="too long"):
        parse_duration("999999999w")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (42, "42s"),
        (222, "3m 42s"),
        (8100, "2h 15m"),
        (8130, "2h 15m"),
        (86400 + 300, "1d"),
        (90000, "1d 1h"),
        (1209600, "2w"),
    ],
)
def test_format_shows_the_two_largest_units(seconds: int, shown: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == shown


def test_format_exact_and_round_trip() -> None:
    delta = timedelta(days=1, minutes=1)
    assert format_duration(delta, parts=5) == "1d 1m"
    assert parse_duration(format_duration(delta, parts=5)) == delta
    assert format_duration(timedelta(seconds=-90)) == "1m 30s"
