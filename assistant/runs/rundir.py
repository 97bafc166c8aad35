"""Safe file access in a run dir: everything in it is written by code we do not trust.

The host reads and writes a run dir with more rights than the run has, so a run that
swaps one of its files for a symlink (to /etc/shadow, to a chat token) or a FIFO would
make the host read, overwrite or hang on something that is not the run's. Every access
the host makes in a run dir therefore goes through here:

- paths are relative to the run dir and walked one component at a time with
  O_NOFOLLOW, relative to the directory opened just before (never a path string that a
  symlink planted in between could redirect);
- a file is opened with O_NONBLOCK (a FIFO cannot hang us), then fstat'ed, and refused
  unless it is a regular file;
- reads are bounded: a caller says how many bytes it wants, from an offset or the end;
- the host's own files (spec, control, plots) are written to a fresh temporary name
  (O_CREAT | O_EXCL | O_NOFOLLOW) and renamed over the old one, so whatever the run left
  under that name is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from assistant.jobs.text import decoded

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
JSON_LIMIT = 1024 * 1024  # result.json and other JSON a run leaves: far more than they need


class UnsafeEntry(OSError):
    """A run-dir entry the host refuses to touch: a symlink, FIFO, device or a path outside."""


def _parts(rel: str | PurePosixPath) -> list[str]:
    """The components of a run-relative path.

    :raises UnsafeEntry: absolute, empty, `..`, or NUL in it.
    """
    text = str(rel)
    if not text or "\x00" in text or text.startswith("/"):
        raise UnsafeEntry(errno.EINVAL, f"{text!r} is not a path inside the run dir")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeEntry(errno.EINVAL, f"{text!r} is not a path inside the run dir")
    return parts


def _refusal(exc: OSError, name: str) -> OSError:
    """O_NOFOLLOW on a symlink says ELOOP (or ENOTDIR for a directory): name it."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return UnsafeEntry(exc.errno, f"{name} is a symlink or not a directory")
    return exc


def open_dir(root: Path, rel: str | PurePosixPath = "") -> int:
    """A directory fd for `root/rel`, no symlink followed from `root` on (root included).

    :raises UnsafeEntry: a component is a symlink or not a directory.
    :raises OSError: it does not exist, or cannot be opened.
    """
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise _refusal(exc, str(root)) from None
    if str(rel) in ("", "."):
        return fd
    try:
        for part in _parts(rel):
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, f"{rel}") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def directory(root: Path, rel: str | PurePosixPath = "") -> Iterator[int]:
    fd = open_dir(root, rel)
    try:
        yield fd
    finally:
        os.close(fd)


def _split(rel: str | PurePosixPath) -> tuple[str, str]:
    parts = _parts(rel)
    return "/".join(parts[:-1]), parts[-1]


@contextlib.contextmanager
def open_regular(root: Path, rel: str | PurePosixPath) -> Iterator[int]:
    """An fd of a regular file at `root/rel`, read-only, never following a link.

    :raises UnsafeEntry: not a regular file (symlink, FIFO, socket, device, directory).
    :raises FileNotFoundError: it is not there.
    """
    parent, name = _split(rel)
    with directory(root, parent) as dfd:
        # Looked at before opening too: opening a device can have effects of its own.
        before = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):
            raise UnsafeEntry(errno.EPERM, f"{rel} is not a regular file")
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise _refusal(exc, str(rel)) from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or after.st_ino != before.st_ino:
            raise UnsafeEntry(errno.EPERM, f"{rel} is not a regular file")
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


def open_append(root: Path, name: str, mode: int = 0o644) -> int:
    """An fd appending to the regular file `root/name`, made if missing, never a link.

    :raises UnsafeEntry: it is a symlink, FIFO or anything but a regular file.
    """
    with directory(root) as dfd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(name, flags | os.O_NOCTTY | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            raise _refusal(exc, name) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeEntry(errno.EPERM, f"{name} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _pread_all(fd: int, start: int, limit: int) -> bytes:
    chunks, got = [], 0
    while got < limit:
        chunk = os.pread(fd, min(limit - got, 1 << 20), start + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_bytes(root: Path, rel: str | PurePosixPath, *, limit: int, offset: int = 0) -> bytes:
    """At most `limit` bytes of a regular file from `offset`.

    :raises UnsafeEntry, FileNotFoundError, OSError: see `open_regular`.
    """
    with open_regular(root, rel) as fd:
        return _pread_all(fd, max(0, offset), limit)


def read_tail(root: Path, rel: str | PurePosixPath, *, limit: int, start: int = 0) -> bytes:
    """The last `limit` bytes of a regular file (none before `start`)."""
    with open_regular(root, rel) as fd:
        size = os.fstat(fd).st_size
        begin = max(start, size - limit)
        return _pread_all(fd, begin, max(0, size - begin))


def read_json(root: Path, rel: str | PurePosixPath, *, limit: int = JSON_LIMIT) -> Any:
    """A small JSON file; None when absent, unsafe, too large or not JSON."""
    try:
        data = read_bytes(root, rel, limit=limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None


def write_file(root: Path, rel: str | PurePosixPath, data: bytes, mode: int = 0o644) -> Path:
    """Replace `root/rel` with `data` atomically; whatever was there is replaced, not followed.

    The parent directories must exist (and are walked without following links).

    :raises UnsafeEntry: a parent is a symlink; OSError: it could not be written.
    """
    parent, name = _split(rel)
    with directory(root, parent) as dfd:
        for _ in range(5):
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    mode,
                    dir_fd=dfd,
                )
                break
            except FileExistsError:
                continue  # someone planted that name: take another
        else:
            raise OSError(errno.EEXIST, f"no free temporary name for {rel}")
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    return root / parent / name


def write_beside(path: Path, data: bytes) -> Path:
    """`write_file` for `<run dir>/<folder>/<name>` given as one path (plots in artifacts/)."""
    return write_file(path.parents[1], f"{path.parent.name}/{path.name}", data)


def unlink(root: Path, rel: str | PurePosixPath) -> None:
    """Remove an entry if it is there (a symlink goes itself; its target stays)."""
    parent, name = _split(rel)
    try:
        with directory(root, parent) as dfd:
            os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return


def make_dir(root: Path, name: str, mode: int = 0o755, *, replace: bool = False) -> None:
    """Make sure `root/name` (one level) is a real directory.

    Something else under that name (a symlink, a file) stays, and later accesses through
    it are refused, unless `replace`: then it is removed and the folder made afresh.
    """
    (name,) = _parts(name)
    with directory(root) as rfd:
        try:
            st = os.stat(name, dir_fd=rfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode) and replace:
            os.unlink(name, dir_fd=rfd)
            st = None
        if st is None:
            os.mkdir(name, mode, dir_fd=rfd)


def names(
    root: Path, rel: str | PurePosixPath, *, limit: int = 1000, dirs: bool = False
) -> list[str]:
    """Names of the regular files (and folders, if `dirs`) in a run-dir folder; none if it
    is not a real folder. Links are left out: they are the run's, not its files."""
    out: list[str] = []
    try:
        fd = open_dir(root, rel)
    except OSError:
        return out
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) or (
                    dirs and entry.is_dir(follow_symlinks=False)
                ):
                    out.append(entry.name)
                    if len(out) >= limit:
                        break
    finally:
        os.close(fd)
    return sorted(out)


def checkpoint_problem(root: Path, rel: object) -> str | None:
    """Why a checkpoint path a run names cannot be used; None when it is a regular file.

    It must be a relative path inside `root` with no symlink on the way.
    """
    if not isinstance(rel, str) or not rel:
        return "the path is not text"
    try:
        with open_regular(root, rel):
            return None
    except UnsafeEntry as exc:
        return str(exc.strerror or exc)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)


def hand_over(run_dir: Path, uid: int, gid: int, keep: tuple[str, ...]) -> None:
    """Let uid:gid write in `run_dir` without letting it touch the host's files there.

    The run dir stays root's, with the sticky bit and group write for `gid` (mode 1770):
    the run can make new entries, but can neither write, rename nor delete the entries
    named in `keep` (spec, control), which stay root's and readable. Every other entry the
    host made at the top (checkpoints/, artifacts/, the secrets folder and its files) is
    given to uid:gid. Links are never followed, and a file with more than one link (it
    could be a host file linked in) is never given away.
    """
    with directory(run_dir) as fd:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o1770)
        for name in os.listdir(fd):
            if name in keep:
                continue
            _give(fd, name, uid, gid)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                with contextlib.suppress(OSError):
                    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
                    try:
                        for inner in os.listdir(sub):
                            _give(sub, inner, uid, gid)
                    finally:
                        os.close(sub)


def _give(dir_fd: int, name: str, uid: int, gid: int) -> None:
    """chown one entry the host made (root's, a folder or a singly linked file)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_uid != 0:
        return
    if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


# The agent's own output in a run dir (local processes and Slurm jobs write it there), and
# how much of its end `/run logs` reads.
AGENT_LOG = "agent.log"
LOG_TAIL_BYTES = 64 * 1024


def agent_log_tail(run_dir: Path, lines: int) -> str:
    """The last `lines` lines of the run's agent.log, read without following links;
    "" where it cannot be read."""
    try:
        data = read_tail(run_dir, AGENT_LOG, limit=LOG_TAIL_BYTES)
    except OSError:
        return ""
    return "\n".join(decoded(data).splitlines()[-max(1, lines) :])
