"""ASSISTANT_HOME: private to the user the service runs as, and used by one service at a time.

The home holds the whole history (the database), the local channel's token and the
secrets that runs get, so it is created 0700 and the files the assistant keeps there are
0600; a home found looser is tightened at start, and the log says so. Modes are set on
each file explicitly rather than through a process umask: run dirs under `runs/` are
shared with the run's own user, and their modes are the runner's business.

Two services on one home would share the database and overwrite each other's
`local-channel.json` (and the second's stop would delete the first's). An exclusive
`flock` on `assistant.lock`, held for the life of the process, makes the second one stop
at once with one line saying who holds the home. The kernel drops the lock when the
process dies, however it dies: no stale lock to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from assistant.errors import OpsError

log = logging.getLogger(__name__)

HOME_MODE = 0o700
FILE_MODE = 0o600
LOCK_NAME = "assistant.lock"
# Folders in the home that hold secrets: owner-only, like the home itself.
PRIVATE_DIRS = ("secrets",)
# Folders whose modes belong to someone else (run dirs are shared with the run's user).
NOT_OURS = ("runs",)


class HomeError(OpsError):
    """The home cannot be used; the message names the folder, what is wrong and the fix."""


@dataclass
class Tightened:
    """What `prepare_home` changed, for one log line."""

    paths: list[str] = field(default_factory=list)

    def note(self, path: Path, old: int, new: int) -> None:
        self.paths.append(f"{path} {old:04o}->{new:04o}")


def prepare_home(home: Path) -> Tightened:
    """Create `home` 0700, or tighten it and the assistant's files in it to owner-only.

    Every regular file directly in the home (the database and its -wal/-shm, the local
    channel's endpoint, the lock, the recipes file) and in `secrets/` loses its group and
    other bits; symlinks are left alone (never followed) and `runs/` is not touched.

    :raises HomeError: the home cannot be created or is not a folder.
    """
    changed = Tightened()
    not_a_folder = HomeError(f"{home} is not a folder; set ASSISTANT_HOME to a folder")
    try:
        home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        info = home.stat()  # the configured path: a symlink to the real folder is fine
    except FileExistsError:
        raise not_a_folder from None
    except OSError as exc:
        raise HomeError(f"cannot create {home}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise not_a_folder
    _tighten(home, info, HOME_MODE, changed, follow=True)
    for entry in _entries(home):
        if entry.name in NOT_OURS:
            continue
        with contextlib.suppress(OSError):
            info = entry.lstat()
            if stat.S_ISREG(info.st_mode):
                _tighten(entry, info, FILE_MODE, changed)
            elif stat.S_ISDIR(info.st_mode) and entry.name in PRIVATE_DIRS:
                _tighten(entry, info, HOME_MODE, changed)
                for inner in _entries(entry):
                    inner_info = inner.lstat()
                    if stat.S_ISREG(inner_info.st_mode):
                        _tighten(inner, inner_info, FILE_MODE, changed)
    if changed.paths:
        log.warning(
            "tightened modes in %s so only its owner can read them: %s",
            home,
            ", ".join(changed.paths),
        )
    return changed


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _tighten(
    path: Path, info: os.stat_result, mode: int, changed: Tightened, *, follow: bool = False
) -> None:
    """Drop the group and other bits of `path` if it has any (not following a link there)."""
    old = stat.S_IMODE(info.st_mode)
    if old & ~mode & 0o777 == 0:
        return
    new = old & mode
    try:
        try:
            os.chmod(path, new, follow_symlinks=follow)
        except NotImplementedError:  # no lchmod here; `info` said it is not a link
            os.chmod(path, new)
    except OSError as exc:
        log.warning("cannot tighten %s (mode %04o): %s", path, old, exc.strerror)
        return
    changed.note(path, old, new)


class HomeLock:
    """One service per home: an exclusive lock on `home/assistant.lock` while it runs."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say who holds it.

        :raises HomeError: another process holds it, or the file cannot be opened.
        """
        try:
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            raise HomeError(
                f"cannot open the lock file {self.path}: {exc.strerror};"
                f" the service must be able to write in {self.path.parent}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise HomeError(
                f"another assistant{who} is already running with ASSISTANT_HOME="
                f"{self.path.parent}; stop it first, or give this one its own ASSISTANT_HOME"
            ) from None
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race a starting service)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
