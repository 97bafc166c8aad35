"""Fixtures for the jobs tests: a run dir with spec.json written, as the host would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_process import MakeRunDir, write_spec


@pytest.fixture
def run_dir(tmp_path: Path) -> MakeRunDir:
    """`run_dir(recipe, params, name="run", **spec_fields)` -> a run dir holding spec.json."""

    def make(recipe: str, params: dict[str, Any], name: str = "run", **extra: Any) -> Path:
        return write_spec(tmp_path / name, recipe, params, **extra)

    return make
