"""Model usage: one row per model call, summed per UTC day for budgets and /usage.

Days are UTC dates (the `day` column), so a budget resets at one moment for everyone,
whatever ASSISTANT_TIMEZONE says.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from storage.db import Database
from storage.timestamps import to_iso, utc_now

_SUMS = (
    "count(*) AS calls, coalesce(sum(input), 0) AS input, coalesce(sum(output), 0) AS output,"
    " coalesce(sum(cache_read), 0) AS cache_read, coalesce(sum(cache_write), 0) AS cache_write,"
    " coalesce(sum(cost_usd), 0.0) AS cost_usd"
)


@dataclass(frozen=True)
class ModelCall:
    """What one model call used, as the API reported it, and what it cost."""

    model: str
    input: int
    output: int
    cache_read: int
    cache_write: int
    cost_usd: float
    chat_id: str | None = None
    action_id: int | None = None


@dataclass(frozen=True)
class UsageTotals:
    """Sums over a group of calls; `key` is the day or the chat the group is about."""

    key: str
    calls: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write


def utc_day(moment: datetime | None = None) -> str:
    """The UTC date of a moment (default: now) as stored in `day`."""
    return (moment or utc_now()).astimezone(UTC).strftime("%Y-%m-%d")


class UsageRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, call: ModelCall, *, at: datetime | None = None) -> int:
        """Store one call; returns its row id."""
        moment = at or utc_now()
        return await self._db.insert(
            "INSERT INTO model_usage (ts, day, chat_id, model, input, output, cache_read,"
            " cache_write, cost_usd, action_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                to_iso(moment),
                utc_day(moment),
                call.chat_id,
                call.model,
                call.input,
                call.output,
                call.cache_read,
                call.cache_write,
                call.cost_usd,
                call.action_id,
            ),
        )

    async def cost_today(self, *, now: datetime | None = None) -> float:
        """US dollars spent on the current UTC day."""
        value = await self._db.scalar(
            "SELECT coalesce(sum(cost_usd), 0.0) FROM model_usage WHERE day = ?", (utc_day(now),)
        )
        return float(value or 0.0)

    async def day_total(self, day: str | None = None) -> UsageTotals:
        """Everything on one UTC day (default today), zeros when nothing was used."""
        day = day or utc_day()
        row = await self._db.fetchone(f"SELECT {_SUMS} FROM model_usage WHERE day = ?", (day,))
        assert row is not None  # an aggregate always returns a row
        return _totals(day, row)

    async def totals_by_day(self, days: int, *, now: datetime | None = None) -> list[UsageTotals]:
        """The last `days` UTC days that had any use, including today, newest first."""
        first = utc_day((now or utc_now()) - timedelta(days=max(days, 1) - 1))
        rows = await self._db.fetchall(
            f"SELECT day AS key, {_SUMS} FROM model_usage WHERE day >= ?"
            " GROUP BY day ORDER BY day DESC",
            (first,),
        )
        return [_totals(row["key"], row) for row in rows]

    async def totals_by_chat(self, day: str | None = None) -> list[UsageTotals]:
        """One UTC day (default today) per chat, most expensive first; no chat is ''."""
        rows = await self._db.fetchall(
            f"SELECT coalesce(chat_id, '') AS key, {_SUMS} FROM model_usage WHERE day = ?"
            " GROUP BY coalesce(chat_id, '') ORDER BY cost_usd DESC, key",
            (day or utc_day(),),
        )
        return [_totals(row["key"], row) for row in rows]


def _totals(key: str, row: sqlite3.Row) -> UsageTotals:
    return UsageTotals(
        key=key,
        calls=int(row["calls"]),
        input=int(row["input"]),
        output=int(row["output"]),
        cache_read=int(row["cache_read"]),
        cache_write=int(row["cache_write"]),
        cost_usd=float(row["cost_usd"]),
    )
