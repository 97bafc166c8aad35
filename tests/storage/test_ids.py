from __future__ import annotations

import pytest

from storage import ids


@pytest.mark.parametrize("value", [0, 1, 31, 32, 123456789, (1 << 62) + 5, ids.MAX_ID])
def test_round_trip(value: int) -> None:
    text = ids.encode(value)
    assert len(text) == ids.ID_CHARS
    assert ids.decode(text) == value


def test_printed_ids_sort_like_the_integers() -> None:
    gen = ids.IdGenerator()
    values = [gen.next() for _ in range(2000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert [ids.encode(v) for v in values] == sorted(ids.encode(v) for v in values)


def test_generator_never_goes_back_below_a_floor() -> None:
    far_future = ids.id_for_time(99_999_999_999_999)
    gen = ids.IdGenerator()
    gen.bump(far_future)
    assert gen.next() == far_future + 1


def test_ids_carry_their_time() -> None:
    assert ids.time_of(ids.id_for_time(1_700_000_000_123)) == 1_700_000_000_123


def test_prefix_range_covers_exactly_the_matching_ids() -> None:
    value = ids.IdGenerator().next()
    text = ids.encode(value)
    low, high = ids.prefix_range(text[:6])
    assert low <= value <= high
    assert ids.encode(low).startswith(text[:6]) and ids.encode(high).startswith(text[:6])
    assert not ids.encode(low - 1).startswith(text[:6])


@pytest.mark.parametrize("bad", ["", "u!", "x" * 14])
def test_bad_prefixes_are_refused(bad: str) -> None:
    assert not ids.is_prefix(bad)
    with pytest.raises(ValueError):
        ids.prefix_range(bad)


def test_short_random_ids_are_base32() -> None:
    made = {ids.short_random_id() for _ in range(200)}
    assert len(made) == 200
    assert all(len(m) == 8 and set(m) <= set(ids.ALPHABET) for m in made)


def test_a_prefix_beyond_every_id_is_an_empty_range() -> None:
    low, high = ids.prefix_range("zzzz")
    assert low > high
