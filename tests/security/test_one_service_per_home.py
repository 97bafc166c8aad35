"""One service per ASSISTANT_HOME: a second `assistant up` stops at once and harms nothing.

Before, the second one started on the same database and local-channel.json, and when it
stopped it deleted the first one's endpoint file: the first became unreachable.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service_process import cli, up
from tests.support.service_start import LOCAL, start


@pytest.fixture
def first(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    home = tmp_path / "home"
    proc = start(home)
    try:
        yield home, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_second_service_on_the_same_home_is_refused(
    first: tuple[Path, subprocess.Popen[str]],
) -> None:
    home, proc = first
    endpoint = home / "local-channel.json"
    before = json.loads(endpoint.read_text())
    second = up(home, **LOCAL)
    try:
        _, err = second.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)  # it started: stopping it is the damage shown
        _, err = second.communicate(timeout=30)
        pytest.fail(f"a second service started on the same home: {err[-500:]}")
    assert second.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"assistant: another assistant (pid {proc.pid}) is already running with"
        f" ASSISTANT_HOME={home}; stop it first, or give this one its own ASSISTANT_HOME"
    ]
    # The first one is untouched and still answers.
    assert json.loads(endpoint.read_text()) == before
    status = cli(home, "send", "/status")
    assert status.returncode == 0 and "Uptime:" in status.stdout, status.stderr


def test_the_home_is_free_again_once_the_first_has_stopped(
    first: tuple[Path, subprocess.Popen[str]],
) -> None:
    home, proc = first
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    again = start(home)  # the lock went with the process; its file may stay
    try:
        status = cli(home, "send", "/status")
        assert status.returncode == 0 and "Uptime:" in status.stdout, status.stderr
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
    assert again.returncode == 0


def test_a_killed_service_leaves_no_stale_lock(
    first: tuple[Path, subprocess.Popen[str]],
) -> None:
    home, proc = first
    proc.kill()  # no clean-up at all: the kernel drops the lock with the process
    proc.communicate(timeout=30)
    (home / "local-channel.json").unlink(missing_ok=True)
    again = start(home)
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=30)
    assert again.returncode == 0


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """The pid is written into the lock file: through a link it would clobber the target."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (home / "assistant.lock").symlink_to(target)
    result = up(home, **LOCAL)
    _, err = result.communicate(timeout=60)
    assert result.returncode == 1, err
    assert err.startswith(f"assistant: cannot open the lock file {home}/assistant.lock")
    assert "Traceback" not in err
    assert target.read_text() == "keep me"
    assert not (home / "assistant.db").exists()  # stopped before anything was opened
