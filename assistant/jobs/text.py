"""Text from outside made valid once, where it enters the process.

Python hands undecodable bytes on as lone surrogates (`sys.argv`, `os.listdir`,
`surrogateescape` decoding, JSON's `\\udcff` escapes), and a lone surrogate cannot be
encoded as UTF-8: SQLite, JSON writers and chat APIs all refuse it, and a refused row
can hold up everything queued behind it. NUL cuts C strings short in the libraries below
us. Both become U+FFFD, the replacement character, so what a person typed still reads
the same and every later layer can rely on valid text.

It lives with the jobs code (standard library only) because both sides need it: the host
where chat, run files and engine replies enter, and the benchmark client inside a run.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# A lone surrogate (never valid in UTF-8) or NUL.
_INVALID = re.compile("[\x00\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with every lone surrogate and NUL replaced by U+FFFD; valid text unchanged."""
    if text.isascii() and "\x00" not in text:
        return text  # the common case, without a regex scan
    return _INVALID.sub(REPLACEMENT, text)


def decoded(data: bytes) -> str:
    """Bytes from outside as valid text: invalid UTF-8 and NUL become U+FFFD."""
    return valid_text(data.decode("utf-8", "replace"))
