"""A watched job's output: bounded reads of a file it writes, and its lines as events.

The output belongs to a job we did not start and know nothing of, so it is read as
hostile, like a run's files: any bytes (not UTF-8, NUL), lines of megabytes, a log swapped
for a symlink to a host file, a FIFO in its place, a file truncated or rotated under us.
What holds:

- a file is opened by walking its path from / one component at a time without following
  a link (`rundir.open_regular`), so a link anywhere on the way is refused, and only a
  regular file is read; its path was resolved once, when the watch was added;
- each pass reads at most `KEEP_BYTES` of lines and scans at most `SCAN_BYTES` past a
  line that has no end: a 10 MB line costs a few passes' scanning, and only its first
  `MAX_LINE` bytes are looked at;
- a file shorter than the offset was truncated or rotated: reading starts over at 0;
- a line becomes valid text once (`decoded`), and only its first `MATCH_CHARS`
  characters meet a regex.

Lines become events by the rules a declared recipe gives its own command's output
(`[recipes.NAME.progress]`: `progress` and `metrics` regexes, `json_prefix`), and by the
reporting helper's JSON lines (assistant/jobs/reporting.py), which every watch reads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.jobs.declared import ProgressRules
from assistant.jobs.declared_run import numbers
from assistant.jobs.reporting import DEFAULT_PREFIX
from assistant.jobs.text import decoded
from assistant.runs import rundir
from assistant.runs.events import shape

KEEP_BYTES = 1024 * 1024  # of complete lines, per watch per pass
SCAN_BYTES = 16 * 1024 * 1024  # looked through for the end of an endless line, per pass
MAX_LINE = 64 * 1024  # bytes of one line kept; the rest of it is dropped
MATCH_CHARS = 4096  # characters of a line a regex or the JSON reader sees
PREFIX_WITHIN = 64  # a report line's prefix may follow a launcher's tag ("[rank0]: ")
KINDS_TAKEN = ("progress", "metric", "checkpoint", "log", "result", "error", "started")


def rules_json(rules: ProgressRules | None) -> dict[str, Any]:
    """A declared recipe's output rules as stored with a watch (None: report lines only)."""
    if rules is None:
        return {}
    total = rules.total if isinstance(rules.total, int) else None
    return {
        "json_prefix": rules.json_prefix,
        "progress": list(rules.progress),
        "metrics": list(rules.metrics),
        "total": total,
    }


class LineReader:
    """Turns one output line into the events it stands for (usually none)."""

    def __init__(self, rules: dict[str, Any]) -> None:
        prefixes = [DEFAULT_PREFIX]
        own = rules.get("json_prefix")
        if isinstance(own, str) and own and own not in prefixes:
            prefixes.append(own)
        self.prefixes = tuple(prefixes)
        self.progress = [re.compile(p) for p in rules.get("progress") or ()]
        self.metrics = [re.compile(p) for p in rules.get("metrics") or ()]
        total = rules.get("total")
        self.total = total if isinstance(total, int) and not isinstance(total, bool) else None
        self.step: int | None = None  # the last step seen: a metric without one takes it

    def events(self, text: str) -> list[dict[str, Any]]:
        text = text[:MATCH_CHARS]
        for prefix in self.prefixes:
            at = text.find(prefix, 0, PREFIX_WITHIN + len(prefix))
            if at >= 0:
                return self._structured(text[at + len(prefix) :])
        for pattern in self.progress:
            match = pattern.search(text)
            if match:
                fields = numbers(match)
                step = fields.pop("step", None)
                if step is None:
                    return []
                event: dict[str, Any] = {"type": "progress", "step": int(step), **fields}
                if self.total is not None:
                    event.setdefault("total", self.total)
                return self._noted([event])
        for pattern in self.metrics:
            match = pattern.search(text)
            if match:
                fields = numbers(match)
                step = int(fields.pop("step", self.step or 0))
                return self._noted(
                    [
                        {"type": "metric", "step": step, "name": name, "value": value}
                        for name, value in fields.items()
                    ]
                )
        return []

    def _structured(self, text: str) -> list[dict[str, Any]]:
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            return []
        if not isinstance(raw, dict) or raw.get("type") not in KINDS_TAKEN:
            return []
        event = shape(raw)
        if isinstance(event, str):
            return []
        if event.get("type") == "progress" and not isinstance(event.get("step"), int):
            return []
        return self._noted([event])

    def _noted(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for event in events:
            step = event.get("step")
            if isinstance(step, int) and not isinstance(step, bool):
                self.step = step
        return events


@dataclass
class Chunk:
    """Complete lines read from an offset, the offset after them, and what was left out."""

    lines: list[bytes]
    offset: int
    skipped: int = 0  # lines cut at MAX_LINE, or dropped while looking for their end
    problem: str | None = None  # the file itself could not be read (a link, a FIFO, gone)
    restarted: bool = False  # the file was shorter than the offset: read again from 0
    dropping: bool = False  # the pass ended inside an endless line: drop until its end
    more: bool = False  # output is left beyond what this pass read


@dataclass
class FileOutput:
    """A file a watched job writes, followed from an offset; `dropping` is kept between
    passes (in memory) while the end of an endless line is looked for."""

    path: str  # absolute, resolved when the watch was added
    dropping: bool = False
    _root: Path = field(default=Path("/"), repr=False)

    def read(self, offset: int, *, final: bool = False) -> Chunk:
        """The complete lines after `offset`; with `final` an unfinished last line too."""
        rel = self.path.lstrip("/")
        if not self.dropping and not final:
            # Unchanged since the last read: one stat, not the walk (the read itself never
            # follows a link; a stat through one only decides that nothing is new).
            try:
                if os.stat(self.path).st_size == offset:
                    return Chunk([], offset)
            except OSError:
                pass
        try:
            with rundir.open_regular(self._root, rel) as fd:
                size = os.fstat(fd).st_size
                restarted = size < offset
                if restarted:
                    offset, self.dropping = 0, False
                chunk = self._read(fd, offset, size, final)
                chunk.restarted = restarted
                chunk.more = chunk.offset < size
                return chunk
        except FileNotFoundError:
            return Chunk([], offset, problem=f"{self.path} is not there")
        except OSError as exc:
            return Chunk([], offset, problem=f"{self.path} not read: {exc.strerror or exc}")

    def _read(self, fd: int, offset: int, size: int, final: bool) -> Chunk:
        chunk = Chunk([], offset)
        if self.dropping:  # inside an endless line: find its end first
            end = _find_newline(fd, offset, size)
            if end is None:
                chunk.offset = min(size, offset + SCAN_BYTES)
                chunk.dropping = True
                return chunk
            offset = chunk.offset = end + 1
            self.dropping = False
        data = os.pread(fd, min(KEEP_BYTES, max(0, size - offset)), offset)
        cut = data.rfind(b"\n")
        if cut >= 0:
            chunk.lines = [_bounded(line, chunk) for line in data[:cut].split(b"\n")]
            chunk.offset = offset + cut + 1
            return chunk
        if final and data and offset + len(data) >= size:
            chunk.lines = [_bounded(data, chunk)]
            chunk.offset = offset + len(data)
            return chunk
        if len(data) >= KEEP_BYTES or len(data) > MAX_LINE:
            # a line longer than a whole read: its head is a line; its end is looked for
            chunk.lines = [_bounded(data, chunk)]
            end = _find_newline(fd, offset + len(data), size)
            if end is None:
                chunk.offset = min(size, offset + len(data) + SCAN_BYTES)
                self.dropping = chunk.dropping = True
            else:
                chunk.offset = end + 1
        return chunk


def _bounded(line: bytes, chunk: Chunk) -> bytes:
    if len(line) > MAX_LINE:
        chunk.skipped += 1
        return line[:MAX_LINE]
    return line


def _find_newline(fd: int, start: int, size: int) -> int | None:
    """The position of the first newline at or after `start`, within SCAN_BYTES."""
    pos, end = start, min(size, start + SCAN_BYTES)
    while pos < end:
        block = os.pread(fd, min(1024 * 1024, end - pos), pos)
        if not block:
            return None
        at = block.find(b"\n")
        if at >= 0:
            return pos + at
        pos += len(block)
    return None


def line_text(line: bytes) -> str:
    """An output line as valid text, without its carriage return."""
    return decoded(line).rstrip("\r")
