"""`assistant up` and the CLI as real subprocesses, for tests that need the whole path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a service on `home`: none of this machine's ASSISTANT_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(
        ASSISTANT_HOME=str(home),
        ASSISTANT_LOCAL_PORT="0",
        ASSISTANT_HTTP="127.0.0.1:0",
        ASSISTANT_TIMEZONE="Europe/Berlin",
        ASSISTANT_SECRETS="sesame-1234-open",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assistant", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env_for(home),
    )


def up(home: Path, **extra: str) -> subprocess.Popen[str]:
    """`assistant up` on `home`, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "assistant", "up"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env_for(home, **extra),
    )


def start_service(home: Path, timeout: float = 30, **extra: str) -> subprocess.Popen[str]:
    """`assistant up` on `home`, returned once its local channel is listening."""
    proc = up(home, **extra)
    deadline = time.monotonic() + timeout
    while not (home / "local-channel.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"assistant up did not start: {err}")
        time.sleep(0.05)
    return proc


@contextmanager
def running_service(home: Path, **extra: str) -> Iterator[subprocess.Popen[str]]:
    """A started service, killed at the end if the test has not stopped it."""
    proc = start_service(home, **extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
