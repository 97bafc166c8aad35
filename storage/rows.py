"""Rows to dataclasses: one way for every repository."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any, TypeVar

T = TypeVar("T")


def from_row(cls: type[T], row: sqlite3.Row, **overrides: Any) -> T:
    """Build `cls` from the row's columns of the same names; `overrides` win (e.g. bools).

    :raises IndexError: if the row lacks a column the dataclass needs.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {name: row[name] for name in names if name not in overrides}
    return cls(**values, **overrides)
