"""Following a file another process appends to: new complete lines from an offset."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAX_CHUNK = 4 * 1024 * 1024  # read per call: a flood is taken in turns
MAX_LINE = 1024 * 1024  # an unfinished line longer than this is cut where it stands


def open_regular(path: Path) -> BinaryIO:
    """`path` for reading if it is a regular file; never a symlink, never a FIFO's wait.

    What a run leaves in its run dir is only read this way: a log swapped for a link to
    another file must not be quoted, and a FIFO must not hang the reader.

    :raises OSError: missing, a symlink (ELOOP), or not a regular file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class LineTail:
    """Reads what was appended since the last call; a torn last line waits for its end."""

    path: Path
    offset: int
    _partial: bytes = field(default=b"", repr=False)

    def read(self, *, final: bool = False) -> list[bytes]:
        """Complete lines since the last read; `final` also returns an unfinished one."""
        try:
            with open_regular(self.path) as f:
                f.seek(self.offset)
                chunk = f.read(MAX_CHUNK)
        except OSError:
            return []
        self.offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > MAX_LINE:  # no end in sight: hand on what there is
            lines.append(self._partial)
            self._partial = b""
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines
