"""Times as chat replies show them: relative first ("in 2h 15m", "3m ago"), then local."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from assistant.durations import format_duration

_NOW = timedelta(seconds=1)


def time_until(moment: datetime, now: datetime) -> str:
    """ "in 2h 15m"; "now" within a second; "overdue by 3m" for a time already past."""
    delta = moment - now
    if abs(delta) < _NOW:
        return "now"
    if delta < timedelta(0):
        return f"overdue by {format_duration(-delta)}"
    return f"in {format_duration(delta)}"


def time_ago(moment: datetime, now: datetime) -> str:
    """ "3m ago"; "just now" within a second; "in 5s" if the moment is ahead (clock skew)."""
    delta = now - moment
    if abs(delta) < _NOW:
        return "just now"
    if delta < timedelta(0):
        return f"in {format_duration(-delta)}"
    return f"{format_duration(delta)} ago"


def format_local(moment: datetime, zone: ZoneInfo) -> str:
    """ "2026-11-24 02:00 CET": the configured zone, with its abbreviation."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def truncate(text: str, limit: int) -> str:
    """One line of at most `limit` characters, with an ellipsis when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# What a reply may quote back of the user's own input: enough to recognise it, never a flood.
QUOTE_LIMIT = 80
# Longest line an error reply may carry; longer ones lose their middle.
ERROR_LINE_LIMIT = 500
# Most lines an error reply may carry (the longest usage text has a dozen).
ERROR_LINES_LIMIT = 40


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to at most `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """A user's argument quoted in a reply (`'abc'`), shortened first so a reply stays short."""
    return repr(shorten(text, limit))


def bound_lines(
    text: str, limit: int = ERROR_LINE_LIMIT, max_lines: int = ERROR_LINES_LIMIT
) -> str:
    """At most `max_lines` lines of at most `limit` characters; a long line keeps both ends.

    The safety net for error replies: whatever a handler quoted, the reply keeps what
    was wrong (the start) and what would be right (the end), not a megabyte in between.
    """
    lines = text.split("\n")
    if len(lines) <= max_lines and all(len(line) <= limit for line in lines):
        return text
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], "…"]
    keep_end = limit // 3
    keep_start = limit - keep_end - 3
    return "\n".join(
        line if len(line) <= limit else f"{line[:keep_start]} … {line[-keep_end:]}"
        for line in lines
    )
