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
