from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from storage.timestamps import from_iso, iso_from_ms, to_iso


def test_one_format_whatever_the_input_zone() -> None:
    berlin = datetime(2026, 7, 1, 14, 30, 5, 250_000, tzinfo=ZoneInfo("Europe/Berlin"))
    assert to_iso(berlin) == "2026-07-01T12:30:05.250Z"
    assert from_iso(to_iso(berlin)) == berlin
    assert iso_from_ms(int(berlin.timestamp() * 1000)) == "2026-07-01T12:30:05.250Z"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_iso(datetime(2026, 1, 1))


def test_text_order_is_time_order() -> None:
    moments = [datetime(2026, 1, 1, h, tzinfo=UTC) for h in (9, 10, 23)]
    texts = [to_iso(m) for m in moments]
    assert texts == sorted(texts)
