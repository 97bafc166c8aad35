"""Rows to dataclasses: one way for every repository."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import TYPE_CHECKING, Any, TypeVar

from assistant.errors import AmbiguousIdError, NotFoundError

if TYPE_CHECKING:
    from storage.db import Database

T = TypeVar("T")


def from_row(cls: type[T], row: sqlite3.Row, **overrides: Any) -> T:
    """Build `cls` from the row's columns of the same names; `overrides` win (e.g. bools).

    :raises IndexError: if the row lacks a column the dataclass needs.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {name: row[name] for name in names if name not in overrides}
    return cls(**values, **overrides)


async def resolve_prefix(
    db: Database, table: str, prefix: str, noun: str, hint: str
) -> sqlite3.Row:
    """The one row whose text id starts with `prefix`, like git (an exact id always wins).

    :raises NotFoundError: if no id starts with it (the message says where ids are shown).
    :raises AmbiguousIdError: if several do; it carries the candidate ids.
    """
    wanted = prefix.strip().lower()
    if wanted:
        # A range on the primary key: the index answers it, and no LIKE escaping is needed.
        rows = await db.fetchall(
            f"SELECT * FROM {table} WHERE id >= ? AND id < ? ORDER BY id LIMIT 51",
            (wanted, wanted + "\U0010ffff"),
        )
        exact = [row for row in rows if row["id"] == wanted]
        if exact or len(rows) == 1:
            return (exact or rows)[0]
        if rows:
            raise AmbiguousIdError(prefix.strip(), [row["id"] for row in rows])
    raise NotFoundError(f"no {noun} with id starting {prefix.strip()!r}; {hint} shows ids")
