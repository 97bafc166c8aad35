"""Reading a run's events.jsonl on the host: bounded, without following links, and checked.

The file is written by the run's code, so a line can hold anything: bytes that are not
UTF-8, JSON escapes of lone surrogates (a checkpoint whose file name is not UTF-8), NUL,
megabytes of one line, or JSON of the wrong shape. Each line is made valid text and
checked against the protocol (assistant/jobs/protocol.py) once, here; what cannot be
used is skipped with a short reason, and the offset moves past it either way, so a bad
line costs that line and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.jobs import protocol
from assistant.jobs.text import valid_text
from assistant.runs import rundir

MAX_READ = 4 * 1024 * 1024  # bytes per run per pass: a flood cannot starve other runs
MAX_LINE = 64 * 1024  # an event is a few hundred bytes; a longer line is not one
MAX_TEXT = 2000  # characters kept of any one text field
MAX_LIST = 50  # items kept of a list field (a traceback's lines)
MAX_FIELDS = 64  # fields kept of one event, or of a result's `final` / `best`
MAX_STEP = 2**53  # a step past what a JSON number holds exactly is not a step

# Fields with a fixed meaning; anything else is kept when it is a number, a bool or text.
_INTS = ("step", "total", "world_size", "profile_done", "profile_total")
_TEXTS = ("ts", "type", "device", "path", "message", "kind", "level", "status", "profile")


@dataclass
class EventBatch:
    """The usable events after an offset, the offset after them, and why lines were left."""

    events: list[dict[str, Any]]
    offset: int
    skipped: list[str] = field(default_factory=list)
    problem: str | None = None  # the file itself could not be read (a link, a FIFO)


def read_new(run_dir: Path, offset: int, limit: int = MAX_READ) -> EventBatch:
    """Complete lines after `offset` (up to `limit` bytes), checked; a torn last line waits.

    A line longer than `limit` with no end in sight is skipped in pieces, so it can never
    hold the offset in place. An events.jsonl that is a symlink or not a regular file is
    not read at all: `problem` says why.
    """
    try:
        data = rundir.read_bytes(run_dir, protocol.EVENTS, limit=limit, offset=offset)
    except FileNotFoundError:
        return EventBatch([], offset)
    except OSError as exc:
        return EventBatch([], offset, problem=f"{protocol.EVENTS} not read: {exc.strerror or exc}")
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= limit:  # one line longer than a whole read: skip what we have
            return EventBatch([], offset + len(data), [f"a line over {limit} bytes"])
        return EventBatch([], offset)
    batch = EventBatch([], offset + end + 1)
    for number, line in enumerate(data[: end + 1].split(b"\n")):
        if not line.strip():
            continue
        event = parse_line(line)
        if isinstance(event, str):
            batch.skipped.append(f"line at byte {offset + _start(data, number)}: {event}")
        else:
            batch.events.append(event)
    return batch


def _start(data: bytes, number: int) -> int:
    """Byte position of line `number` in `data` (only computed for a skipped line)."""
    pos = 0
    for _ in range(number):
        pos = data.index(b"\n", pos) + 1
    return pos


def parse_line(line: bytes) -> dict[str, Any] | str:
    """One event, valid and of the protocol's shape; or why not, in a few words."""
    if len(line) > MAX_LINE:
        return f"over {MAX_LINE} bytes ({len(line)})"
    try:
        raw = json.loads(line.decode("utf-8", "replace"))
    except ValueError as exc:  # RecursionError is a RuntimeError, not a ValueError
        return f"not JSON ({str(exc)[:80]})"
    except RecursionError:
        return "not JSON (nested too deep)"
    if not isinstance(raw, dict):
        return f"not a JSON object but {type(raw).__name__}"
    return shape(raw)


def shape(raw: dict[str, Any]) -> dict[str, Any] | str:
    """An event with every field of the type it must have; fields that are not are dropped.

    An event that cannot mean anything without a field (a metric without a name or a
    number, a checkpoint without a path) is refused with the reason.
    """
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in protocol.EVENT_TYPES:
        return f"unknown event type {clean(kind, 40)!r}"
    event: dict[str, Any] = {}
    for key, value in list(raw.items())[:MAX_FIELDS]:
        name = valid_text(str(key))[:100]
        if name in _INTS:
            if _is_int(value) and 0 <= value < MAX_STEP:
                event[name] = value
        elif name in _TEXTS:
            if isinstance(value, str):
                event[name] = valid_text(value)[:MAX_TEXT]
        elif name == "traceback":
            if isinstance(value, list):
                event[name] = [clean(x, MAX_TEXT) for x in value[-MAX_LIST:]]
        elif name in ("final", "best", "params") and isinstance(value, dict):
            event[name] = _flat(value)
        elif name == "best" and isinstance(value, bool):
            event[name] = value
        elif name == "name" and kind == "metric":
            if isinstance(value, str) and value.strip():
                event[name] = valid_text(value)[:100]
        elif _is_number(value) or isinstance(value, bool):
            event[name] = value
        elif isinstance(value, str) and kind not in ("progress", "metric"):
            event[name] = valid_text(value)[:MAX_TEXT]
    if kind == "metric" and ("name" not in event or not _is_number(event.get("value"))):
        return "a metric needs a text name and a number value"
    if kind == "checkpoint" and not event.get("path"):
        return "a checkpoint needs a text path"
    if kind == "result" and event.get("status") not in protocol.RESULT_STATUSES:
        event.pop("status", None)
    return event


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    """A name -> number/text map (a result's final and best numbers, a run's params)."""
    out: dict[str, Any] = {}
    for key, value in list(values.items())[:MAX_FIELDS]:
        if _is_number(value) or isinstance(value, bool):
            out[valid_text(str(key))[:100]] = value
        elif isinstance(value, str):
            out[valid_text(str(key))[:100]] = valid_text(value)[:MAX_TEXT]
    return out


def valid_json(value: Any, depth: int = 0) -> Any:
    """JSON a run wrote (result.json), with valid, bounded text and bounded containers."""
    if isinstance(value, str):
        return valid_text(value)[:MAX_TEXT]
    if isinstance(value, dict):
        if depth > 8:
            return {}
        return {
            valid_text(str(k))[:100]: valid_json(v, depth + 1)
            for k, v in list(value.items())[:MAX_FIELDS]
        }
    if isinstance(value, list):
        return [] if depth > 8 else [valid_json(v, depth + 1) for v in value[-MAX_LIST:]]
    return value


def clean(value: object, limit: int = MAX_TEXT) -> str:
    """Any value as short valid text."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)[:limit]
    return valid_text(text)[:limit]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int SQLite can hold, or any float (a NaN loss says the run diverged: keep it)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float)
