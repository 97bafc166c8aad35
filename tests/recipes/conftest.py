"""Fixtures for the recipe-file tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.recipe_host import Host, make_host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)
