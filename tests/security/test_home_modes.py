"""ASSISTANT_HOME is its owner's alone: the folder 0700, every file the service keeps 0600.

Before, the home was created 0755 and the database with its -wal and -shm 0644: every
local user could copy the whole history. Run dirs under runs/ are shared with the run's
own user and are the runner's business; everything else is checked here, by starting a
real service on a fresh home and on an old, loose one, and stat-ing every file.
"""

from __future__ import annotations

import signal
import stat
from pathlib import Path

from storage.db import Database
from tests.support.service_process import cli
from tests.support.service_start import start


def modes(home: Path) -> dict[str, int]:
    """Mode of everything in `home` (relative path -> permission bits), runs/ left out."""
    found = {".": stat.S_IMODE(home.lstat().st_mode)}
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if rel.parts[0] == "runs":
            continue
        found[str(rel)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def private(found: dict[str, int]) -> dict[str, int]:
    """The entries that someone other than the owner can read, write or enter."""
    return {rel: mode for rel, mode in found.items() if mode & 0o077}


def test_a_fresh_home_is_private_while_the_service_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = start(home)
    try:
        reply = cli(home, "send", "/task add every 1h /status")  # writes: the WAL is used
        assert reply.returncode == 0, reply.stderr
        found = modes(home)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for name in ("assistant.db", "assistant.db-wal", "assistant.db-shm", "local-channel.json"):
        assert found.get(name) == 0o600, (name, found)
    assert found["assistant.lock"] == 0o600
    assert found["."] == 0o700
    assert private(found) == {}
    assert "tightened" not in err  # nothing was loose to begin with
    assert private(modes(home)) == {}  # and nothing after the stop


def test_a_loose_home_from_before_is_tightened_at_start_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "recipes.toml").write_text("")
    (home / "recipes.toml").chmod(0o644)
    secrets = home / "secrets"
    secrets.mkdir()
    secrets.chmod(0o755)
    (secrets / "hf_token").write_text("hf_abc")
    (secrets / "hf_token").chmod(0o644)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (home / "link.txt").symlink_to(outside)
    run_dir = home / "runs" / "abc123"
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o755)

    proc = start(home)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    found = modes(home)
    assert found["."] == 0o700
    assert found["recipes.toml"] == 0o600
    assert found["secrets"] == 0o700 and found["secrets/hf_token"] == 0o600
    assert {rel: m for rel, m in private(found).items() if rel != "link.txt"} == {}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a link is never followed
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o755  # the runner's, not ours
    assert "tightened modes in" in err and f"{home} 0755->0700" in err
    assert "recipes.toml 0644->0600" in err


def test_a_home_given_as_a_symlink_is_used_and_its_folder_made_private(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "assistant"
    real.mkdir(parents=True)
    real.chmod(0o755)
    home = tmp_path / "home"
    home.symlink_to(real)
    proc = start(home)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(real.stat().st_mode) == 0o700
    assert stat.S_IMODE((real / "assistant.db").stat().st_mode) == 0o600


async def test_the_database_is_created_private_even_outside_the_service(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "assistant.db"
    db = await Database.open(path)
    try:
        await db.write("CREATE TABLE probe (x)")
        for name in ("assistant.db", "assistant.db-wal", "assistant.db-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await db.aclose()


async def test_an_old_loose_database_is_tightened_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "assistant.db"
    db = await Database.open(path)
    await db.aclose()
    path.chmod(0o644)
    db = await Database.open(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "assistant.db-wal").stat().st_mode) == 0o600
    finally:
        await db.aclose()
