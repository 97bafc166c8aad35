"""A unix socket in front of the real Docker engine that a test can cut, black-hole, restore.

The service is pointed at it with DOCKER_HOST=unix://<path>; everything it sends reaches
the real engine until the test says otherwise:

- cut(): the socket is gone and every open connection closed (an engine that is down);
- black_hole(): connections are accepted and read, never answered (a hung engine);
- restore(): forwarding again, on the same path.

It counts the `/_ping` requests it forwarded, so a test can see what probes cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from assistant.runs.docker_runner import DEFAULT_DOCKER_HOST, parse_docker_host


def engine_socket() -> str:
    """The real engine's unix socket (DOCKER_HOST when it names one, else the default)."""
    host = parse_docker_host(os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST)
    if host.path is None:
        raise AssertionError(f"the engine proxy needs a unix:// DOCKER_HOST, not {host.url}")
    return host.path


class EngineProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # a short path: a unix socket's path is limited to 107 bytes
        self._dir = Path(tempfile.mkdtemp(prefix="engine-"))
        self.path = self._dir / "docker.sock"
        self.mode = "closed"
        self.pings = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def restore(self) -> None:
        await self._listen("forward")

    async def black_hole(self) -> None:
        await self._listen("black_hole")

    async def cut(self) -> None:
        self.mode = "closed"
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def aclose(self) -> None:
        await self.cut()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _listen(self, mode: str) -> None:
        await self.cut()  # connections made in the old mode go with it
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.mode = mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "forward":
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
                self._writers.add(up_writer)
                await asyncio.gather(
                    self._pipe(reader, up_writer, count=True),
                    self._pipe(up_reader, writer),
                )
            else:  # black hole: read everything, answer nothing
                while await reader.read(65536):
                    pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    self.pings += data.count(b"/_ping ")
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def engine_proxy() -> AsyncIterator[EngineProxy]:
    """A forwarding proxy to this machine's engine, removed at the end."""
    proxy = EngineProxy(engine_socket())
    await proxy.restore()
    try:
        yield proxy
    finally:
        await proxy.aclose()
