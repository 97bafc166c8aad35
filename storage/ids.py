"""Identifiers.

Log rows (events, actions, tool calls) share one time-ordered 63-bit integer id space:
milliseconds since the epoch in the high bits, a counter in the low 21. Stored as the
INTEGER PRIMARY KEY (the rowid), so inserts append to the b-tree, retention is a range
delete, and a typed prefix of the printed form is a range scan. Printed as 13 characters
of Crockford base32, which sort like the integers.

Tasks get short random ids instead: people type them on phones.
"""

from __future__ import annotations

import secrets
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_DECODE = {c: i for i, c in enumerate(ALPHABET)}
_DECODE.update({"i": 1, "l": 1, "o": 0})  # Crockford's readable aliases
ID_CHARS = 13
SEQ_BITS = 21
MAX_ID = (1 << 63) - 1


def encode(value: int) -> str:
    """Fixed-width base32 text of a non-negative 63-bit integer."""
    out = []
    for _ in range(ID_CHARS):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def decode(text: str) -> int:
    """Inverse of `encode`.

    :raises ValueError: if the text is not base32 of the right length.
    """
    if len(text) != ID_CHARS:
        raise ValueError(f"an id has {ID_CHARS} characters")
    value = 0
    for ch in text.lower():
        if ch not in _DECODE:
            raise ValueError(f"{ch!r} is not a base32 character")
        value = (value << 5) | _DECODE[ch]
    if value > MAX_ID:
        raise ValueError("id out of range")
    return value


def is_prefix(text: str) -> bool:
    return 0 < len(text) <= ID_CHARS and all(ch in _DECODE for ch in text.lower())


def prefix_range(prefix: str) -> tuple[int, int]:
    """Inclusive integer range of every id whose printed form starts with `prefix`.

    :raises ValueError: if the prefix is not base32.
    """
    if not is_prefix(prefix):
        raise ValueError(f"{prefix!r} is not an id prefix (base32, at most {ID_CHARS} characters)")
    pad = ID_CHARS - len(prefix)
    low = _decode_unchecked(prefix.lower() + "0" * pad)
    high = min(_decode_unchecked(prefix.lower() + "z" * pad), MAX_ID)
    return low, high  # beyond every id: low > high, an empty range


def _decode_unchecked(text: str) -> int:
    value = 0
    for ch in text:
        value = (value << 5) | _DECODE[ch]
    return value


def id_for_time(epoch_ms: int) -> int:
    """Smallest id that can be issued at `epoch_ms`: the retention cut-off of a time."""
    return epoch_ms << SEQ_BITS


def time_of(value: int) -> int:
    """Epoch milliseconds an id was issued at."""
    return value >> SEQ_BITS


class IdGenerator:
    """Monotonic time-ordered ids, never repeating even if the wall clock steps back."""

    __slots__ = ("_last",)

    def __init__(self, floor: int = 0) -> None:
        self._last = floor

    def bump(self, floor: int) -> None:
        """Never issue an id at or below `floor` (the largest id already stored)."""
        self._last = max(self._last, floor)

    def next(self) -> int:
        candidate = time.time_ns() // 1_000_000 << SEQ_BITS
        last = self._last
        value = candidate if candidate > last else last + 1
        self._last = value
        return value


def short_random_id(length: int = 8) -> str:
    """A random base32 id for things people type (tasks)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))
