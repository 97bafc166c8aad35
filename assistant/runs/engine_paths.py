"""Where the engine finds the service's own paths, for every bind mount it is asked for.

An engine resolves a bind mount's source on its own host. When the service runs on that
host, its paths are the engine's: nothing to translate. When it runs in a container
(deploy/compose.yaml), `/data/runs/<id>` is a path of the container's, and the engine
would mount the host's `/data/runs/<id>`: the run would write where the service never
reads. So the service finds its own container on the engine (its id from
/proc/self/mountinfo, else the host name a container gets) and reads its mounts: each
mount's destination (inside) is its source (on the engine's host). ASSISTANT_HOST_HOME
overrides where ASSISTANT_HOME lies on the engine's host.

A mapping is checked at start (`EnginePaths.check`): a marker written into ASSISTANT_HOME
must be read back by a tiny container that mounts the translated path; a wrong mapping
is a `ConfigError` naming both paths, never runs that vanish. The agent's own source
(bind-mounted into images that are not ours) lies in the service's site-packages, which
no mount reaches from a container: it is copied into ASSISTANT_HOME once per version.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from assistant.errors import ConfigError, EngineUnavailable, RunStartError
from assistant.jobs.text import decoded
from assistant.runs.docker_engine import DockerEngine

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
# The engine bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf from the
# container's own folder, whose name is its id: the id a `hostname:` setting cannot hide.
_CONTAINER_ID_RE = re.compile(r"/containers/([0-9a-f]{64})/")
MARKER = ".engine-path-check"
CHECK_TARGET = "/check"


@dataclass(frozen=True)
class EnginePaths:
    """The engine's view of the service's paths: (inside, on the engine's host) pairs.

    `contained`: the service runs in a container on this engine, so a path no pair
    covers lies in the container's own filesystem, which no run can mount.
    """

    pairs: tuple[tuple[PurePosixPath, PurePosixPath], ...] = ()
    contained: bool = False
    how: str = "the service runs on the engine's host"

    @property
    def identity(self) -> bool:
        return not self.contained and all(inside == host for inside, host in self.pairs)

    def to_host(self, path: Path) -> str:
        """`path` as the engine's host sees it.

        :raises RunStartError: it lies in the container's own filesystem.
        """
        pure = PurePosixPath(path)
        for inside, host in sorted(self.pairs, key=lambda pair: -len(pair[0].parts)):
            if pure == inside or inside in pure.parents:
                return str(host / pure.relative_to(inside))
        if self.contained:
            raise RunStartError(
                f"{path} lies in the service's container, not on a folder mounted from the"
                " engine's host, so no run can mount it: mount its folder into the service's"
                " container (deploy/compose.yaml volumes)"
            )
        return str(path)


def own_container_ids(mountinfo: Path = MOUNTINFO) -> list[str]:
    """Candidates for this process's container id: mountinfo's, then the host name."""
    found: list[str] = []
    try:
        text = mountinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for match in _CONTAINER_ID_RE.finditer(text):
        if match.group(1) not in found:
            found.append(match.group(1))
    found.append(socket.gethostname())
    return found


async def discover(engine: DockerEngine, home: Path | None, host_home: Path | None) -> EnginePaths:
    """The mapping: the override, plus this container's mounts if it is one of the engine's."""
    mounts: list[dict[str, Any]] | None = None
    for ref in own_container_ids():
        mounts = await engine.call(functools.partial(_mounts_of, ref=ref))
        if mounts is not None:
            break
    pairs = [
        (PurePosixPath(m["Destination"]), PurePosixPath(m["Source"]))
        for m in mounts or []
        if m.get("Type") in ("bind", "volume") and m.get("Source") and m.get("Destination")
    ]
    how = (
        "read from the service's own container's mounts"
        if mounts is not None
        else "the service runs on the engine's host"
    )
    if host_home is not None and home is not None:
        pairs.insert(0, (PurePosixPath(home), PurePosixPath(host_home)))
        how = "ASSISTANT_HOST_HOME"
    return EnginePaths(tuple(pairs), contained=mounts is not None, how=how)


def _mounts_of(client: docker.DockerClient, ref: str) -> list[dict[str, Any]] | None:
    try:
        attrs = client.api.inspect_container(ref)
    except docker.errors.NotFound:
        return None
    return list(attrs.get("Mounts") or [])


async def check(
    engine: DockerEngine, paths: EnginePaths, home: Path, image: str, user: str
) -> None:
    """Prove the mapping: a container mounting ASSISTANT_HOME's host path reads our marker.

    Nothing to prove when there is nothing to translate; unprovable (logged) while the
    run image is not built yet.

    :raises ConfigError: the mapping is wrong, with both paths and what to set.
    """
    if paths.identity:
        return
    try:
        host = paths.to_host(home)
    except RunStartError as exc:
        raise ConfigError(f"ASSISTANT_HOME: {exc}") from None
    if not await engine.has_image(image):
        log.warning(
            "ASSISTANT_HOME %s is %s on the engine's host (%s); not checked: image %s is"
            " not built yet",
            home,
            host,
            paths.how,
            image,
        )
        return
    token = secrets.token_hex(16)
    await asyncio.to_thread(_write_marker, home / MARKER, token)
    seen = await _read_through_engine(engine, image, host, user)
    if seen.strip() != token:
        raise ConfigError(
            f"ASSISTANT_HOME {home} is not {host} on the engine's host ({paths.how}): a"
            f" container that mounts {host} does not see this service's files"
            f" ({seen.strip()[:120] or 'nothing'}). Runs would write where the service never"
            " reads. Mount a host folder at ASSISTANT_HOME and set ASSISTANT_HOST_HOME to"
            " that folder's path on the engine's host (or unset it to read it from the"
            " container's mounts)."
        )
    log.info("ASSISTANT_HOME %s is %s on the engine's host (%s; checked)", home, host, paths.how)


def _write_marker(path: Path, token: str) -> None:
    """Private as the rest of ASSISTANT_HOME: the check's container runs as our uid."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


async def _read_through_engine(engine: DockerEngine, image: str, host: str, user: str) -> str:
    kwargs: dict[str, Any] = {
        "command": ["cat", f"{CHECK_TARGET}/{MARKER}"],
        # a mount, not a bind: a source missing on the host is an error, never created
        "mounts": [Mount(CHECK_TARGET, host, type="bind", read_only=True)],
        "user": user,
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": {"assistant.path_check": "true"},
    }
    try:  # e.g. the engine's host has no such folder
        container = await engine.call(lambda client: client.containers.create(image, **kwargs))
    except RunStartError as exc:
        return str(exc)
    ref = str(container.id)
    try:
        await engine.start(ref, image=image)
        await engine.call(lambda client: client.api.wait(ref, timeout=engine.call_timeout_s))
        data = await engine.call(lambda client: client.api.logs(ref, stdout=True, stderr=True))
        return decoded(bytes(data))
    except RunStartError as exc:
        return str(exc)
    finally:
        try:
            await engine.call(lambda client: client.api.remove_container(ref, force=True))
        except (RunStartError, EngineUnavailable, docker.errors.NotFound):
            log.warning("could not remove the path-check container %s", ref[:12])


def agent_copy(source: Path, home: Path) -> Path:
    """The agent package (`assistant/__init__.py` and `assistant/jobs`, what the run image
    holds) copied under ASSISTANT_HOME/agent/<content hash>/assistant, once per version."""
    files = sorted(
        p
        for p in [source / "__init__.py", *(source / "jobs").rglob("*.py")]
        if "__pycache__" not in p.parts
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    target = home / "agent" / digest.hexdigest()[:16] / "assistant"
    if target.is_dir():
        return target
    staging = target.parent.with_name(target.parent.name + f".{secrets.token_hex(4)}")
    for path in files:
        dest = staging / "assistant" / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    try:
        staging.rename(target.parent)
    except OSError:  # another copy won the race: it is the same content
        shutil.rmtree(staging, ignore_errors=True)
    return target
