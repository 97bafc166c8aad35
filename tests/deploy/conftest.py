"""The orchestrator's image, built offline once per session (cached: seconds when nothing
changed), and the compose deployment started from deploy/compose.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMAGE = "assistant:latest"


@pytest.fixture(scope="session")
def service_image() -> str:
    """deploy/build-service-image.sh: base, wheelhouse and image, each skipped when there."""
    if os.environ.get("ASSISTANT_TEST_NO_DOCKER") == "1":
        pytest.skip("ASSISTANT_TEST_NO_DOCKER=1: Docker engine tests skipped on purpose")
    done = subprocess.run(
        [str(ROOT / "deploy" / "build-service-image.sh")],
        env={**os.environ, "ASSISTANT_SERVICE_IMAGE": SERVICE_IMAGE, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SERVICE_IMAGE
