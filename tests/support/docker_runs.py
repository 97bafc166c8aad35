"""A launch request for the Docker runner, and waiting for its container to end."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

from assistant.runs.docker_runner import (
    DockerRunner,
)
from assistant.runs.runner import LaunchRequest, RunHandle, RunnerState
from tests.support.docker_engine import TEST_LABEL


def make_request(
    tmp_path: Path, image: str, spec: dict[str, object], name: str = "run", **kw: object
) -> LaunchRequest:
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(spec))
    return LaunchRequest(
        run_id=f"t-{name}-{secrets.token_hex(4)}",
        recipe="probe",
        run_dir=run_dir,
        image=image,
        labels={TEST_LABEL: "1"},
        **kw,  # type: ignore[arg-type]
    )


async def wait_ended(runner: DockerRunner, handle: RunHandle, timeout: float = 30) -> RunnerState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await runner.state(handle)
        if not state.running:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.run_id} still running after {timeout}s")
