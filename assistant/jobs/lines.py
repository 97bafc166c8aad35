"""Following a file another process appends to: new complete lines from an offset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LineTail:
    """Reads what was appended since the last call; a torn last line waits for its end."""

    path: Path
    offset: int
    _partial: bytes = field(default=b"", repr=False)

    def read(self, *, final: bool = False) -> list[bytes]:
        """Complete lines since the last read; `final` also returns an unfinished one."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        self.offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines
