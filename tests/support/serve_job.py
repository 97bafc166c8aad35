"""Running the serving-benchmark job as a process, and reading its events."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60


def command(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "assistant.jobs.bench.serve", "--run-dir", str(run_dir), *args]


async def run_job(run_dir: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command(run_dir, *args),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def events(run_dir: Path, type_: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in rows if type_ is None or e["type"] == type_]
