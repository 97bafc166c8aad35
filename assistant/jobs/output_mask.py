"""A run's output copied to `stdout.log` with the secrets it was handed masked.

A declared recipe's secrets reach its command through the environment, and code prints
what it has: a debug line, an exception that quotes a URL with the token in it. The host
masks everything it shows, but the run dir would still keep the value in clear. So when a
run has secrets, its output goes through a pipe to the agent, which writes it with each
value replaced by `[REDACTED]`: the run dir never holds what the agent can mask.

A value can be split between two reads; the end of a chunk that could begin a secret is
held back until the next read (or the end), and nothing else is: a progress line is never
delayed for lack of a newline.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import IO

MARK = b"[REDACTED]"
CHUNK = 64 * 1024
MIN_SECRET = 4  # shorter values would mask ordinary text; the host's redactor agrees
MIN_LINE = 12  # each line of a multi-line secret (a PEM key) at least this long is masked


def secret_patterns(values: Iterable[str]) -> list[bytes]:
    """The byte strings to mask, longest first: whole values and long lines of them."""
    found: set[bytes] = set()
    for value in values:
        if len(value) >= MIN_SECRET:
            found.add(value.encode())
        for line in value.splitlines():
            if len(line.strip()) >= MIN_LINE:
                found.add(line.strip().encode())
    return sorted(found, key=len, reverse=True)


class OutputMasker:
    """Feed it chunks in order; it returns what may be written now."""

    def __init__(self, patterns: list[bytes]) -> None:
        self._patterns = patterns
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._mask(self._held + chunk)
        keep = self._partial_tail(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def close(self) -> bytes:
        """The rest, at the end of the output."""
        rest, self._held = self._held, b""
        return rest

    def _mask(self, data: bytes) -> bytes:
        for pattern in self._patterns:
            if pattern in data:
                data = data.replace(pattern, MARK)
        return data

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest end of `data` that is the start of some secret."""
        best = 0
        for pattern in self._patterns:
            for size in range(min(len(pattern) - 1, len(data)), best, -1):
                if data.endswith(pattern[:size]):
                    best = size
                    break
        return best


def copy_masked(source: IO[bytes], out: IO[bytes], patterns: list[bytes]) -> threading.Thread:
    """Copy `source` (a pipe) to `out` in a thread, masked; the thread ends at EOF.

    If `out` stops taking data (closed, disk full), the pipe is still read to its end and
    the rest dropped: a command must never block on a full pipe because its log failed.
    """
    masker = OutputMasker(patterns)
    fd = source.fileno()

    def pump() -> None:
        writable = True
        try:
            while chunk := os.read(fd, CHUNK):
                if writable:
                    writable = _write_all(out, masker.feed(chunk))
            if writable:
                _write_all(out, masker.close())
        except OSError:
            return  # the pipe itself failed: nothing more will come
        finally:
            source.close()

    thread = threading.Thread(target=pump, name="output-mask", daemon=True)
    thread.start()
    return thread


def _write_all(out: IO[bytes], data: bytes) -> bool:
    """Write all of `data`; False when `out` cannot take it (closed, full, no progress)."""
    view = memoryview(data)
    try:
        while view:
            written = out.write(view)
            if not written:
                return False
            view = view[written:]
    except (OSError, ValueError):  # ValueError: the file was closed under us
        return False
    return True
