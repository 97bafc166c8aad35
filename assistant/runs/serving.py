"""Serving containers for benchmark runs: started before the run, stopped after it.

The host owns the server's lifecycle; the benchmark job only talks to it over HTTP. A
server gets the GPUs its run was given, the host network on 127.0.0.1 and a port chosen
here, no capabilities and no new privileges. It is labelled with its run, so a restart
finds it again and one whose run has ended is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig

from assistant.errors import EngineUnavailable, RunStartError
from assistant.jobs.text import decoded
from assistant.runs import rundir
from assistant.runs.docker_engine import INSTANCE_LABEL, DockerEngine
from assistant.runs.engine_paths import EnginePaths
from assistant.runs.runner import StartedServer

SERVER_OF_LABEL = "assistant.server_of"
HF_MOUNT = "/root/.cache/huggingface"
LOG_TAIL = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Servers:
    """The `ServerPool` of a Docker engine; every call bounded as the engine's are.

    :param paths: the engine's view of our paths (the HF cache's mount source is its host's).
    """

    def __init__(
        self, engine: DockerEngine, paths: Callable[[], Awaitable[EnginePaths]] | None = None
    ) -> None:
        self.engine = engine
        self._paths = paths

    async def start(
        self,
        run_id: str,
        image: str,
        args: tuple[str, ...],
        gpus: tuple[int, ...],
        *,
        shm_size: str = "16g",
        hf_cache: Path | None = None,
    ) -> StartedServer:
        """Create and start the server; it is still loading when this returns.

        :raises RunStartError: the engine's reason (image missing, no GPU runtime, ...).
        :raises EngineUnavailable: the engine did not answer.
        """
        port = free_port()
        command = [*args, "--host", "127.0.0.1", "--port", str(port)]
        kwargs: dict[str, Any] = {
            "command": command,
            "name": f"assistant-server-{run_id}-{port}",
            "labels": {SERVER_OF_LABEL: run_id, INSTANCE_LABEL: self.engine.instance},
            "network_mode": "host",  # the benchmark reaches it on 127.0.0.1
            "security_opt": ["no-new-privileges:true"],
            "cap_drop": ["ALL"],
            "shm_size": shm_size,
            "environment": {"HF_HUB_DISABLE_TELEMETRY": "1", "VLLM_NO_USAGE_STATS": "1"},
            "log_config": LogConfig(
                type=LogConfig.types.JSON, config={"max-size": "50m", "max-file": "2"}
            ),
        }
        if hf_cache is not None:
            source = (
                str(hf_cache) if self._paths is None else (await self._paths()).to_host(hf_cache)
            )
            kwargs["volumes"] = {source: {"bind": HF_MOUNT, "mode": "rw"}}
        if gpus:
            kwargs["device_requests"] = [
                DeviceRequest(device_ids=[str(i) for i in gpus], capabilities=[["gpu"]])
            ]
        try:
            container: Container = await self.engine.call(
                lambda client: client.containers.create(image, **kwargs), image=image
            )
        except RunStartError as exc:
            raise RunStartError(f"the serving container could not be created: {exc}") from None
        try:
            await self.engine.start(str(container.id), image=image)
        except RunStartError as exc:
            await self.remove(str(container.id))
            raise RunStartError(f"the serving container could not start: {exc}") from None
        except EngineUnavailable:
            # an answer lost on the way may still have started it: never leave it
            with contextlib.suppress(EngineUnavailable, RunStartError):
                await self.remove(str(container.id))
            raise
        return StartedServer(str(container.id), port)

    async def logs(self, ref: str, since: float | None = None, tail: int | None = None) -> str:
        """Its output since a time (unix seconds) or its last `tail` lines; "" if gone."""

        def read(client: docker.DockerClient) -> str:
            try:
                data = client.api.logs(
                    ref, stdout=True, stderr=True, since=since, tail=tail or "all"
                )
            except docker.errors.NotFound:
                return ""
            return decoded(bytes(data))

        return await self.engine.call(read)

    async def stop(self, ref: str, log_path: Path) -> list[str]:
        """Keep its output in `log_path`, remove it, and return its last lines."""
        text = await self.logs(ref)
        await asyncio.to_thread(_save, log_path, text)
        await self.remove(ref)
        return text.splitlines()[-LOG_TAIL:]

    async def remove(self, ref: str) -> None:
        def remove(client: docker.DockerClient) -> None:
            try:
                client.api.remove_container(ref, force=True)
            except docker.errors.NotFound:
                return

        await self.engine.call(remove)

    async def running(self) -> dict[str, str]:
        """Servers of this assistant on the engine: container id -> run id."""
        labels = [SERVER_OF_LABEL, f"{INSTANCE_LABEL}={self.engine.instance}"]
        found: list[Container] = await self.engine.call(
            lambda client: client.containers.list(all=True, filters={"label": labels})
        )
        return {str(c.id): str(c.labels.get(SERVER_OF_LABEL, "")) for c in found}


def _save(path: Path, text: str) -> None:
    """The server's log into the run's artifacts/, which the run can write: a link the run
    left under that name is replaced, never followed."""
    rundir.make_dir(path.parents[1], path.parent.name)
    rundir.write_beside(path, text.encode("utf-8", "replace"))
