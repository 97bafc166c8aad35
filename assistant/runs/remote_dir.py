"""A run dir on an engine that does not share this host's filesystem (ssh://).

The host's code (the monitor, the report, `/run show`) reads a run's local run dir and
nothing else. On a remote engine the run writes into a named volume on the engine's host
(`volume_name`, mounted at the run mount's parent, the run dir a folder in it: a local
run's path, and ownership the host sets), and the runner
keeps the local run dir a mirror of what the host reads, through the engine's archive
API alone (no shared folder, no second channel):

- `push`, before the container starts (and before each stop or pause signal): what the
  host writes for the run (spec.json, control.json, the secrets folder; empty
  checkpoints/ and artifacts/) goes into the volume, owned as a local run dir is after
  `rundir.hand_over`: the run cannot change the host's files;
- `pull`, at each state query and once more when the container has ended: events.jsonl,
  result.json and stdout.log come back whole (bounded; stdout.log keeps its last part),
  artifacts/ at the end; a checkpoint named by a `checkpoint` event becomes a small note
  in the local checkpoints/ saying where it is kept: checkpoints stay on the engine's
  host, where a resume mounts the same volume.

Everything that comes back is hostile: only regular files are taken (links, devices and
folders in the archive are skipped), each under a size bound, with names checked, and
written only through `rundir.write_file` (atomic, never through a link). A result.json
older than the container's start (a paused part's, still in the volume) is not taken.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors

from assistant.errors import RunStartError
from assistant.jobs.protocol import ARTIFACTS, CHECKPOINTS, CONTROL, EVENTS, RESULT, SPEC, STDOUT
from assistant.runs import rundir
from assistant.runs.docker_engine import DockerEngine
from assistant.runs.runner import LaunchRequest

log = logging.getLogger(__name__)

EVENTS_LIMIT = 64 << 20  # events.jsonl comes back whole while it is under this
RESULT_LIMIT = 1 << 20
STDOUT_KEEP = 1 << 20  # the last part of stdout.log that comes back
ARTIFACT_LIMIT = 16 << 20  # per file
ARTIFACTS_TOTAL = 64 << 20
HOST_FILES = (SPEC, CONTROL)  # root's in the volume: the run reads, never changes them
RUN_FOLDERS = (CHECKPOINTS, ARTIFACTS)  # the run's: never pushed, only made


def volume_name(instance: str, run_id: str) -> str:
    """One volume per run (a resume mounts it again): this assistant's, by its instance."""
    return f"assistant-{instance}-{run_id}"


@dataclass
class Mirror:
    """What one run's mirror has taken so far (sizes and times, to skip what is unchanged)."""

    seen: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (size, mtime)
    events_read: int = 0  # bytes of events.jsonl whose checkpoints have notes
    ended: bool = False  # the last pull (artifacts too) is done


# ---- push --------------------------------------------------------------------------


def push_archive(
    run_dir: Path, uid: int, top: str, *, only: tuple[str, ...] | None = None
) -> bytes:
    """A tar of what the host wrote in `run_dir`, under the folder `top`, owned as
    `rundir.hand_over` leaves a local run dir.

    The run dir is a folder in the volume, not its root: the engine does not change the
    owner of the folder it extracts into, but makes `top` as the archive says.
    `only`: just these top-level files (control.json before a signal).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None, owner: int, mode: int) -> None:
            info = tarfile.TarInfo(f"{top}/{name}" if name != "." else top)
            info.uid, info.gid, info.mode, info.mtime = owner, uid, mode, int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        files = rundir.names(run_dir, "")
        if only is None:
            add(".", None, 0, 0o1770)  # the run dir: root's, sticky, the run's group
            for folder in RUN_FOLDERS:
                add(folder, None, uid, 0o755)
            if CONTROL not in files:  # an earlier part's, still in the volume, says nothing
                add(CONTROL, b"{}", 0, 0o644)
        for name in files:
            if name in HOST_FILES and (only is None or name in only):
                add(name, rundir.read_bytes(run_dir, name, limit=RESULT_LIMIT), 0, 0o644)
        if only is None:
            folders = set(rundir.names(run_dir, "", dirs=True)) - set(files) - set(RUN_FOLDERS)
            for folder in sorted(folders):  # the secrets: the run's to read
                add(folder, None, uid, 0o700)
                for inner in rundir.names(run_dir, folder):
                    data = rundir.read_bytes(run_dir, f"{folder}/{inner}", limit=RESULT_LIMIT)
                    add(f"{folder}/{inner}", data, uid, 0o400)
    return buf.getvalue()


# ---- pull --------------------------------------------------------------------------


def pull(
    client: docker.DockerClient,
    ref: str,
    mount: str,
    run_dir: Path,
    mirror: Mirror,
    *,
    started_at: str | None,
    final: bool,
) -> None:
    """Bring what the host reads from the container's run dir into `run_dir` (see above).

    Runs in an engine thread (blocking calls). A file the run has not written yet is
    skipped; NotFound for the container passes through (it is gone).
    """
    _pull_file(client, ref, mount, run_dir, mirror, EVENTS, EVENTS_LIMIT, None)
    _note_checkpoints(run_dir, mirror)
    _pull_file(client, ref, mount, run_dir, mirror, RESULT, RESULT_LIMIT, started_at)
    _pull_file(client, ref, mount, run_dir, mirror, STDOUT, None, None)
    if final and not mirror.ended:
        _pull_artifacts(client, ref, mount, run_dir)
        mirror.ended = True


def _archive(client: docker.DockerClient, ref: str, path: str) -> tuple[Any, dict[str, Any]] | None:
    try:
        stream, stat = client.api.get_archive(ref, path)
    except docker.errors.NotFound as exc:
        if "No such container" in str(exc):
            raise
        return None  # the run has not written it (yet)
    return stream, dict(stat or {})


def _pull_file(
    client: docker.DockerClient,
    ref: str,
    mount: str,
    run_dir: Path,
    mirror: Mirror,
    name: str,
    limit: int | None,
    not_before: str | None,
) -> None:
    found = _archive(client, ref, f"{mount}/{name}")
    if found is None:
        return
    stream, stat = found
    try:
        size, mtime = int(stat.get("size") or 0), str(stat.get("mtime") or "")
        if mirror.seen.get(name) == (size, mtime) or not _regular(stat):
            return
        if limit is not None and size > limit:
            log.warning("%s of %s is %d bytes, over %d: not mirrored", name, run_dir, size, limit)
            return
        if not_before and _when(mtime) < _when(not_before):
            return  # an earlier part's (a paused run's result), still in the volume
        data = _member(stream, name, STDOUT_KEEP if limit is None else limit)
    finally:
        _close(stream)
    if data is None:
        return
    if _write(run_dir, name, data):
        mirror.seen[name] = (size, mtime)


def _pull_artifacts(client: docker.DockerClient, ref: str, mount: str, run_dir: Path) -> None:
    found = _archive(client, ref, f"{mount}/{ARTIFACTS}")
    if found is None:
        return
    stream, _ = found
    total = 0
    try:
        with tarfile.open(fileobj=_Chunks(stream), mode="r|") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if len(parts) != 2 or parts[0] != ARTIFACTS or not member.isreg():
                    continue  # folders, links, devices, anything deeper: not taken
                name = parts[1]
                if name.startswith(".") or member.size > ARTIFACT_LIMIT:
                    continue
                total += member.size
                if total > ARTIFACTS_TOTAL:
                    break
                source = tar.extractfile(member)
                if source is None:
                    continue
                _write(run_dir, f"{ARTIFACTS}/{name}", source.read(ARTIFACT_LIMIT))
    finally:
        _close(stream)


def _write(run_dir: Path, rel: str, data: bytes) -> bool:
    """One mirrored file into the local run dir; a local failure is logged, never taken
    for the engine's (an OSError leaving an engine call reads as "no answer")."""
    try:
        rundir.write_file(run_dir, rel, data)
    except OSError as exc:
        log.warning("could not mirror %s into %s: %s", rel, run_dir, exc)
        return False
    return True


def _member(stream: Iterable[bytes], name: str, keep: int) -> bytes | None:
    """The one regular file `name` in a tar stream; its last `keep` bytes when longer."""
    with tarfile.open(fileobj=_Chunks(stream), mode="r|") as tar:
        for member in tar:
            if member.name != name or not member.isreg():
                return None
            source = tar.extractfile(member)
            if source is None:
                return None
            tail = b""
            while chunk := source.read(1 << 16):
                tail = (tail + chunk)[-keep:]
            return tail
    return None


def _note_checkpoints(run_dir: Path, mirror: Mirror) -> None:
    """A note in the local checkpoints/ for each checkpoint the new events name.

    The monitor takes a `checkpoint` event only when its path is a regular file in the run
    dir; on a remote engine the file stays there, and the note says where.
    """
    try:
        data = rundir.read_bytes(run_dir, EVENTS, limit=EVENTS_LIMIT, offset=mirror.events_read)
    except OSError:
        return
    complete = data[: data.rfind(b"\n") + 1]
    mirror.events_read += len(complete)
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("type") != "checkpoint":
            continue
        path = event.get("path")
        if not isinstance(path, str) or not _inside(path, CHECKPOINTS):
            continue  # the monitor names the problem when it reads the event
        note = f"kept on the engine's host, in the run's volume: {path}\n"
        try:
            rundir.write_file(run_dir, path, note.encode())
        except OSError as exc:
            log.warning("no note for checkpoint %r of %s: %s", path, run_dir, exc)


def _inside(path: str, folder: str) -> bool:
    parts = PurePosixPath(path).parts
    return len(parts) == 2 and parts[0] == folder and parts[1] not in ("..", ".")


def _regular(stat: dict[str, Any]) -> bool:
    """A plain file (Go's FileMode: no type bits set above the permissions)."""
    mode = int(stat.get("mode") or 0)
    return mode & ~0o7777 & ~(1 << 23 | 1 << 22) == 0  # setuid/setgid bits aside


def _when(text: str) -> datetime:
    """An engine's RFC 3339 time (nanoseconds cut to microseconds); the epoch if unreadable."""
    try:
        head, _, rest = text.partition(".")
        zone = rest.lstrip("0123456789") if rest else text[len(head) :]
        fraction = rest[: len(rest) - len(zone)][:6] if rest else ""
        stamp = f"{head}.{fraction or '0'}{zone.replace('Z', '+00:00')}"
        return datetime.fromisoformat(stamp)
    except ValueError:
        return datetime.fromisoformat("1970-01-01T00:00:00+00:00")


class _Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks (the archive API's streamed answer)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


# ---- the runner's side -----------------------------------------------------------------

RUN_DIR_LABEL = "assistant.run_dir"  # the local run dir a container's volume is mirrored to


class RemoteRunDirs:
    """The run dirs of one engine that does not share this host's filesystem.

    `DockerRunner` calls it at four points: `prepare` (the volume instead of a bind
    mount), `push` (before the start), `pull` (at each state query) and `push_control`
    (before a stop or pause signal).
    """

    def __init__(self, engine: DockerEngine, run_mount: str, run_uid: int) -> None:
        self.engine = engine
        self.run_mount = run_mount
        where = PurePosixPath(run_mount)
        self.volume_mount, self.top = str(where.parent), where.name  # the run dir's folder
        self.run_uid = run_uid
        self._mirrors: dict[str, Mirror] = {}  # container ref -> what was taken

    async def prepare(self, request: LaunchRequest, kwargs: dict[str, Any]) -> None:
        """Mount the run's volume (made if new) at the run mount's parent folder.

        :raises RunStartError: the run needs a folder of this host (a declared recipe's
            working dir, the agent for a foreign image), which the engine cannot mount.
        """
        if request.mounts or request.bring_agent:
            raise RunStartError(
                f"the engine at {self.engine.url} does not share this host's folders: a"
                " declared recipe with a working dir or its own image runs only on a local"
                " engine"
            )
        name = volume_name(self.engine.instance, request.run_id)
        labels = {**kwargs.get("labels", {}), RUN_DIR_LABEL: str(request.run_dir)}
        await self.engine.call(
            lambda client: client.volumes.create(name=name, labels=_volume_labels(labels))
        )
        kwargs["labels"] = labels
        kwargs["volumes"] = {name: {"bind": self.volume_mount, "mode": "rw"}}

    async def push(self, ref: str, run_dir: Path) -> None:
        data = await asyncio.to_thread(push_archive, run_dir, self.run_uid, self.top)
        await self._put(ref, data)

    async def push_control(self, ref: str) -> None:
        """control.json into the volume, before the signal that makes the agent read it."""
        run_dir = await self._run_dir(ref)
        if run_dir is None:
            return
        data = await asyncio.to_thread(
            push_archive, run_dir, self.run_uid, self.top, only=(CONTROL,)
        )
        await self._put(ref, data)

    async def pull(self, ref: str, attrs: dict[str, Any]) -> None:
        """Mirror the run's files into its local run dir; the whole of it once ended."""
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        where = labels.get(RUN_DIR_LABEL)
        if not where:
            return
        state = attrs.get("State") or {}
        mirror = self._mirrors.setdefault(ref, Mirror())
        final = not state.get("Running")
        started = state.get("StartedAt")

        def fetch(client: docker.DockerClient) -> None:
            pull(
                client,
                ref,
                self.run_mount,
                Path(where),
                mirror,
                started_at=started,
                final=final,
            )

        try:
            await self.engine.call(fetch)
        except RunStartError as exc:  # the engine answered no: the next pass tries again
            log.warning("mirroring run dir %s from %s failed: %s", where, self.engine.url, exc)

    async def _run_dir(self, ref: str) -> Path | None:
        try:
            attrs = await self.engine.call(lambda client: client.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        where = ((attrs.get("Config") or {}).get("Labels") or {}).get(RUN_DIR_LABEL)
        return Path(where) if where else None

    async def _put(self, ref: str, data: bytes) -> None:
        ok = await self.engine.call(
            lambda client: client.api.put_archive(ref, self.volume_mount, data)
        )
        if not ok:
            raise RunStartError(f"the engine at {self.engine.url} did not take the run's files")


def _volume_labels(labels: dict[str, str]) -> dict[str, str]:
    """The container's labels a volume keeps (whose it is), not its local path."""
    return {k: v for k, v in labels.items() if k != RUN_DIR_LABEL}
