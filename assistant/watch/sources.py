"""Each kind of watched job: how to find it, how it is now, its output, how to stop it.

A source answers in bounded time and never raises for a job that misbehaves: a container
removed, a pid given to another process, an unreadable log are states or problems, said
in words. Only `resolve` (when a watch is added) and `stop` refuse, with one line.

- container: the Docker engine's bounded calls (`DockerEngine.call`): inspect for the
  state (exit code, OOM-killed, the signal an exit code > 128 stands for), the log API
  with timestamps for the output, read from the last line's time, a bounded number of
  bytes a pass through the streaming response;
- pid: /proc/<pid>/stat (its start time tells a pid given to another process; a zombie's
  exit status is there too); output from `log=<path>` or, when it is a regular file, the
  file its stdout (/proc/<pid>/fd/1) is;
- slurm: `assistant/runs/slurm_cli.py`'s parsed, bounded calls, where that module exists.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import docker.errors

from assistant.errors import NotFoundError, Refused
from assistant.runs.docker_engine import DockerEngine
from assistant.runs.slurm_cli import SlurmCli, SlurmJob
from assistant.watch.output import KEEP_BYTES, MAX_LINE, SCAN_BYTES, Chunk, FileOutput
from storage.watches import WatchRecord

State = Literal["pending", "running", "ended"]
Sig = Literal["SIGTERM", "SIGKILL"]
# Never read as a job's output: what the kernel or the assistant itself keeps there.
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
RUN_LABEL = "assistant.run_id"


@dataclass(frozen=True)
class Observation:
    """How a watched job is now; for an ended one, how it ended where that is known."""

    state: State
    how: str | None = None  # "exit code 1", "out of memory (OOM-killed)", ...
    exit_code: int | None = None
    ok: bool | None = None  # ended well (exit 0), badly, or not known
    reason: str | None = None  # why a pending job waits


@dataclass(frozen=True)
class Resolved:
    """A job found when a watch is added."""

    ref: str
    label: str
    state: State
    log_path: str | None = None
    note: str | None = None  # what the reply should add (no output file found, ...)


class Source(Protocol):
    kind: str

    async def observe(self, watch: WatchRecord) -> Observation: ...

    async def read(self, watch: WatchRecord, *, final: bool) -> Chunk: ...

    async def stop(self, watch: WatchRecord) -> str: ...


class Signalled(Protocol):
    """A source whose job the watcher stops with signals: SIGTERM, then SIGKILL when it
    outlives the grace period (a container's pid 1 without --init ignores SIGTERM, and a
    process may trap it). Slurm has no such source: `scancel` escalates by itself."""

    def named(self, watch: WatchRecord) -> str: ...

    async def signal(self, watch: WatchRecord, name: Sig) -> bool: ...

    async def observe(self, watch: WatchRecord) -> Observation: ...


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_words(code: int) -> tuple[str, bool]:
    """An exit code in words, and whether it means success (128+n: killed by signal n)."""
    if code == 0:
        return "exit code 0", True
    if 128 < code < 160:
        return f"exit code {code}: killed by {signal_name(code - 128)}", False
    return f"exit code {code}", False


# ---- containers ---------------------------------------------------------------------------


class ContainerSource:
    kind = "container"

    def __init__(self, engine: Callable[[], DockerEngine]) -> None:
        self._engine = engine
        self.dropping: dict[str, bool] = {}  # watch -> inside an endless line

    async def resolve(self, target: str) -> Resolved:
        """:raises NotFoundError: no such container. :raises Refused: it is one of our runs."""
        engine = self._engine()
        try:
            info = await engine.call(lambda c: c.api.inspect_container(target))
        except docker.errors.NotFound:
            raise NotFoundError(
                f"no container {target!r} on the Docker engine at {engine.url};"
                " `docker ps` lists names and ids"
            ) from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(RUN_LABEL):
            run_id = labels[RUN_LABEL]
            raise Refused(
                f"container {target!r} is run {run_id}, which the assistant follows already:"
                f" /run show {run_id}"
            )
        name = str(info.get("Name") or target).lstrip("/")
        image = str((info.get("Config") or {}).get("Image") or "?")
        state = _container_state(info)
        return Resolved(ref=str(info["Id"]), label=f"{name} ({image})", state=state.state)

    async def observe(self, watch: WatchRecord) -> Observation:
        try:
            info = await self._engine().call(lambda c: c.api.inspect_container(watch.ref))
        except docker.errors.NotFound:
            return Observation("ended", how="removed before its end was seen", ok=None)
        return _container_state(info)

    async def read(self, watch: WatchRecord, *, final: bool) -> Chunk:
        since_ns, dropping = watch.out_offset, self.dropping.get(watch.id, False)
        try:
            chunk = await self._engine().call(
                lambda c: _logs(c, watch.ref, since_ns, dropping, final)
            )
        except docker.errors.NotFound:
            return Chunk([], since_ns, problem="the container is gone: its output with it")
        self.dropping[watch.id] = chunk.dropping
        return chunk

    async def stop(self, watch: WatchRecord) -> str:
        await self.signal(watch, "SIGTERM")
        return "SIGTERM sent to the container"

    def named(self, watch: WatchRecord) -> str:
        return "the container"

    async def signal(self, watch: WatchRecord, name: Sig) -> bool:
        """Send `name` to the container's main process; False: it was not running (any
        more). SIGKILL reaches a pid 1 that ignores SIGTERM: the engine sends it from
        outside the container's pid namespace.

        :raises Refused: SIGTERM to a container that is gone or not running.
        """
        try:
            sent = await self._engine().call(lambda c: _kill(c, watch.ref, name))
        except docker.errors.NotFound:
            sent = False
        if not sent and name == "SIGTERM":
            raise Refused("the container is gone already or not running")
        return sent


def _kill(client: Any, ref: str, name: Sig) -> bool:
    try:
        client.api.kill(ref, signal=name)
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # "is not running"
            return False
        raise
    return True


def _container_state(info: dict[str, Any]) -> Observation:
    st = info.get("State") or {}
    status = str(st.get("Status") or "")
    if status == "created":
        return Observation("pending", reason="created, not started")
    if status in ("running", "paused", "restarting"):
        return Observation("running")
    code = st.get("ExitCode")
    code = code if isinstance(code, int) else None
    if st.get("OOMKilled"):
        how = "out of memory (OOM-killed)" + (f", exit code {code}" if code is not None else "")
        return Observation("ended", how=how, exit_code=code, ok=False)
    if code is None:
        return Observation("ended", how=f"{status or 'ended'} (no exit code)", ok=None)
    how, ok = exit_words(code)
    error = str(st.get("Error") or "").strip()
    if error:
        how += f" ({error[:200]})"
    return Observation("ended", how=how, exit_code=code, ok=ok)


def _ns(stamp: bytes) -> int | None:
    """Docker's RFC 3339 time with nanoseconds (UTC) -> ns since the epoch."""
    try:
        text = stamp.decode("ascii")
        head, _, frac = text.rstrip("Z").partition(".")
        seconds = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
        digits = (frac + "000000000")[:9] if frac else "0"
        return int(seconds) * 1_000_000_000 + int(digits)
    except (UnicodeDecodeError, ValueError):
        return None


def _entries(frame: bytes) -> list[bytes]:
    """A frame's log entries, each with its newline (one, unless a TTY's raw chunk)."""
    parts = frame.split(b"\n")
    out = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _logs(client: Any, ref: str, since_ns: int, dropping: bool, final: bool) -> Chunk:
    """The container's log lines after `since_ns`, read from the streaming response and
    closed once KEEP_BYTES of lines (or SCAN_BYTES in all) came.

    Each log entry comes with its time; an entry without a newline is part of a longer
    line (the engine splits lines at 16 KB). A line not finished when the read stops is
    read again next pass (it is not committed), unless it is past MAX_LINE: then its head
    is a line and the rest is dropped until its end.
    """
    kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "timestamps": True}
    if since_ns:
        kwargs["since"] = since_ns // 1_000_000_000
    stream = client.api.logs(ref, stream=True, follow=False, **kwargs)
    chunk = Chunk([], since_ns, dropping=dropping)
    current: list[bytes] = []
    size = kept = scanned = 0
    try:
        for frame in stream:
            scanned += len(frame)
            for entry in _entries(frame):
                stamp, _, payload = entry.partition(b" ")
                at = _ns(stamp)
                if at is None:  # not a stamped entry (a TTY's raw chunk): the text itself
                    at, payload = max(chunk.offset, since_ns), entry
                elif at <= since_ns:
                    continue  # read in an earlier pass (`since` counts whole seconds)
                ends = payload.endswith(b"\n")
                if chunk.dropping:
                    if ends:
                        chunk.dropping = False
                    chunk.offset = at
                    continue
                if size < MAX_LINE:
                    current.append(payload[: MAX_LINE - size])
                size += len(payload)
                if ends or size > MAX_LINE:
                    line = b"".join(current).rstrip(b"\n")
                    chunk.lines.append(line)
                    kept += len(line)
                    if size > MAX_LINE:
                        chunk.skipped += 1
                        chunk.dropping = not ends
                    chunk.offset = at
                    current, size = [], 0
            if kept >= KEEP_BYTES or scanned >= SCAN_BYTES:
                chunk.more = True
                break
        else:
            if final and current:  # the container ended without a last newline
                chunk.lines.append(b"".join(current))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return chunk


# ---- processes on this host ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    state: str  # R, S, D, Z, T, ...
    start: int  # clock ticks after boot: with the pid, names one process for sure
    exit_status: int | None  # a zombie's wait status


def proc_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """The process's /proc/<pid>/stat, or None when there is no such process."""
    try:  # three system calls: this runs for every pid watch on every pass
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # the command name is in parentheses and may hold anything, ')' too: split at the last
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        status = int(fields[49]) if len(fields) > 49 else None
        return ProcStat(fields[0].decode("ascii", "replace"), int(fields[19]), status)
    except (IndexError, ValueError):
        return None


def check_log_path(text: str, home: Path) -> str:
    """A log file an admin named: resolved once, a regular file, not the host's own.

    :raises Refused: in words that say what would do.
    """
    path = Path(text)
    if not path.is_absolute():
        raise Refused(f"log= needs an absolute path, got {text!r}")
    real = Path(os.path.realpath(path))
    for root in (*FORBIDDEN_ROOTS, Path(os.path.realpath(home))):
        if real == root or root in real.parents:
            raise Refused(f"{text} lies in {root}; a job's log file is read, not that")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise Refused(f"{text} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{text} is not a regular file")
    if not os.access(real, os.R_OK):
        raise Refused(f"{text} is not readable by the assistant")
    return str(real)


class PidSource:
    kind = "pid"

    def __init__(self, home: Path, proc: Path = Path("/proc")) -> None:
        self._home = home
        self._proc = proc
        self.outputs: dict[str, FileOutput] = {}

    def resolve(self, pid: int, log: str | None) -> Resolved:
        """:raises NotFoundError: no such process. :raises Refused: our own, or a bad log."""
        st = proc_stat(pid, self._proc)
        if st is None or st.state == "Z":
            raise NotFoundError(f"no process with pid {pid} on this host")
        if pid == os.getpid():
            raise Refused("that is the assistant itself")
        label = _cmdline(self._proc / str(pid)) or f"pid {pid}"
        note = None
        if log is not None:
            log_path: str | None = check_log_path(log, self._home)
        else:
            log_path = self._stdout_file(pid)
            if log_path is None:
                note = (
                    "its output is not a file (a terminal or a pipe): add log=<path> to read"
                    " a file it writes"
                )
        return Resolved(
            ref=f"{pid}:{st.start}", label=label, state="running", log_path=log_path, note=note
        )

    def _stdout_file(self, pid: int) -> str | None:
        try:
            target = os.readlink(self._proc / str(pid) / "fd" / "1")
        except OSError:
            return None
        if not target.startswith("/") or target.endswith(" (deleted)"):
            return None
        try:
            return check_log_path(target, self._home)
        except Refused:
            return None

    def _pid(self, watch: WatchRecord) -> tuple[int, int]:
        pid, _, start = watch.ref.partition(":")
        return int(pid), int(start)

    async def observe(self, watch: WatchRecord) -> Observation:
        pid, start = self._pid(watch)
        st = proc_stat(pid, self._proc)
        if st is None:
            return Observation(
                "ended", how="ended (its exit code is not known: it is not the assistant's child)"
            )
        if st.start != start:
            return Observation("ended", how="ended (its pid names another process now)")
        if st.state == "Z":  # exited, not yet reaped by its parent: its status is known
            if st.exit_status is None:
                return Observation("ended", how="ended (exit status not readable)")
            if os.WIFSIGNALED(st.exit_status):
                number = os.WTERMSIG(st.exit_status)
                return Observation("ended", how=f"killed by {signal_name(number)}", ok=False)
            code = os.WEXITSTATUS(st.exit_status)
            how, ok = exit_words(code)
            return Observation("ended", how=how, exit_code=code, ok=ok)
        return Observation("running")

    async def read(self, watch: WatchRecord, *, final: bool) -> Chunk:
        if watch.log_path is None:
            return Chunk([], watch.out_offset)
        output = self.outputs.setdefault(watch.id, FileOutput(watch.log_path))
        return output.read(watch.out_offset, final=final)

    async def stop(self, watch: WatchRecord) -> str:
        await self.signal(watch, "SIGTERM")
        return f"SIGTERM sent to {self.named(watch)}"

    def named(self, watch: WatchRecord) -> str:
        return f"process {self._pid(watch)[0]}"

    async def signal(self, watch: WatchRecord, name: Sig) -> bool:
        """Send `name` to the process, if its pid still names it (its start time is read
        again first: a pid given to another process is never signalled); False: it has
        ended.

        :raises Refused: SIGTERM to a process that has ended; one of another user's.
        """
        pid, start = self._pid(watch)
        st = proc_stat(pid, self._proc)
        sent = st is not None and st.start == start and st.state != "Z"
        if sent:
            try:
                os.kill(pid, signal.Signals[name])
            except PermissionError:
                raise Refused(
                    f"the assistant may not signal process {pid} (another user's)"
                ) from None
            except ProcessLookupError:
                sent = False
        if not sent and name == "SIGTERM":
            raise Refused(f"process {pid} has ended already")
        return sent


def _cmdline(proc_dir: Path, limit: int = 200) -> str:
    try:
        with open(proc_dir / "cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- Slurm jobs ---------------------------------------------------------------------------

SLURM_ENDS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "killed at its time limit (TIMEOUT)",
    "OUT_OF_MEMORY": "out of memory (OUT_OF_MEMORY)",
    "NODE_FAIL": "its node failed (NODE_FAIL)",
    "PREEMPTED": "preempted",
    "BOOT_FAIL": "its node did not boot (BOOT_FAIL)",
    "DEADLINE": "past its deadline (DEADLINE)",
}


class SlurmSource:
    """A Slurm job through `slurm_cli.SlurmCli` (one listing serves a pass's questions);
    its output from the StdOut file `scontrol show job` names, on a shared filesystem."""

    kind = "slurm"

    def __init__(self, cli: Callable[[], SlurmCli], home: Path) -> None:
        self._cli = cli
        self._home = home
        self.outputs: dict[str, FileOutput] = {}

    async def _job(self, job_id: str) -> SlurmJob | None:
        return await self._cli().job_state(job_id)

    async def resolve(self, target: str) -> Resolved:
        """:raises NotFoundError: the controller (and accounting) know no such job.
        :raises Refused: it is one of the assistant's own runs."""
        job = await self._job(target)
        if job is None:
            raise NotFoundError(
                f"no Slurm job {target} is known to {self._cli().where}; squeue lists jobs"
            )
        if job.comment.startswith("assistant:"):
            run_id = job.comment.rsplit(":", 1)[-1]
            raise Refused(f"Slurm job {target} is run {run_id}: /run show {run_id} follows it")
        log_path, note = self._stdout(expand_stdout(job.stdout, job))
        state = _slurm_observation(job)
        if state.reason and state.reason not in ("None", "pending"):
            note = "; ".join(n for n in (f"it waits in the queue: {state.reason}", note) if n)
        label = job.name + (f" on {job.partition}" if job.partition else "")
        return Resolved(
            ref=job.job_id, label=label, state=state.state, log_path=log_path, note=note
        )

    def _stdout(self, path: str) -> tuple[str | None, str | None]:
        if not path or not path.startswith("/"):
            return None, "Slurm names no output file for it (StdOut): only its state is followed"
        real = Path(os.path.realpath(path))
        for root in (*FORBIDDEN_ROOTS, Path(os.path.realpath(self._home))):
            if real == root or root in real.parents:
                return None, f"its output file lies in {root}: not read"
        return str(real), None

    async def observe(self, watch: WatchRecord) -> Observation:
        job = await self._job(watch.ref)
        if job is None:
            return Observation(
                "ended", how="no longer known to the controller (and no accounting to ask)"
            )
        return _slurm_observation(job)

    async def read(self, watch: WatchRecord, *, final: bool) -> Chunk:
        if watch.log_path is None:
            return Chunk([], watch.out_offset)
        if watch.state == "pending" and not final:
            return Chunk([], watch.out_offset)  # not started: no file yet
        output = self.outputs.setdefault(watch.id, FileOutput(watch.log_path))
        return output.read(watch.out_offset, final=final)

    async def stop(self, watch: WatchRecord) -> str:
        await self._cli().cancel(watch.ref)
        return f"Slurm job {watch.ref} cancelled (scancel)"


_FILENAME_PATTERN = re.compile(r"%(\d*)([jAaxuN%])")


def expand_stdout(template: str, job: SlurmJob) -> str:
    """The StdOut path with sbatch's filename patterns filled in (squeue's JSON gives the
    template: `slurm-%j.out`); a pattern not known here is left as it is."""
    base, _, task = str(job.job_id).partition("_")
    values = {
        "j": base,
        "A": base,
        "a": task or "4294967294",
        "x": job.name,
        "u": job.user,
        "N": (job.nodes or "").split(",")[0],
    }

    def fill(match: re.Match[str]) -> str:
        width, key = match.group(1), match.group(2)
        if key == "%":
            return "%"
        value = values[key]
        return value.zfill(int(width)) if width and value.isdigit() else value

    return _FILENAME_PATTERN.sub(fill, template)


def _slurm_observation(job: SlurmJob) -> Observation:
    if job.pending:
        return Observation("pending", reason=job.waiting)
    if not job.ended:
        return Observation("running")
    words = SLURM_ENDS.get(job.state, job.state.lower())
    ok: bool | None = job.state == "COMPLETED" and (job.exit_code or 0) == 0
    parts = [words]
    if job.signal:
        parts.append(f"killed by {signal_name(job.signal)}")
    elif job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    if job.state == "OUT_OF_MEMORY":
        ok = False
    return Observation("ended", how=", ".join(parts), exit_code=job.exit_code, ok=ok)
