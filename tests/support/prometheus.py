"""A real Prometheus server for the tests: Debian's `prometheus`, on loopback, scraping fast.

    async with PrometheusServer(tmp_path, target="127.0.0.1:41234") as prom:
        series = await prom.wait_for('assistant_run_step{run_id="abc123"}')

It scrapes the target's /metrics every second, keeps its data in a temporary folder, and
is stopped (and waited for) at the end. A missing binary is a failure, not a skip:
scripts/test installs the package.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: assistant
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition (its linter: names, units, HELP, types)."""
    return subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class PrometheusServer:
    def __init__(self, folder: Path, *, target: str) -> None:
        self.folder = folder
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not PROMETHEUS.exists():
            raise AssertionError(f"{PROMETHEUS} is missing: apt-get install prometheus")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(CONFIG.format(target=self.target))
        self._log_file = (self.folder / "prometheus.log").open("wb")
        self._process = await asyncio.create_subprocess_exec(
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await self._until_ready()

    async def _until_ready(self, timeout: float = 60) -> None:
        assert self._session is not None and self._process is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._process.returncode is not None:
                raise AssertionError(f"prometheus exited at start: {self.log()[-2000:]}")
            try:
                async with self._session.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"prometheus not ready after {timeout}s: {self.log()[-2000:]}")
            await asyncio.sleep(0.2)

    def log(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; the result's vector."""
        assert self._session is not None
        async with self._session.get(f"{self.url}/api/v1/query", params={"query": promql}) as r:
            body = await r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def targets(self) -> list[dict[str, Any]]:
        assert self._session is not None
        async with self._session.get(f"{self.url}/api/v1/targets") as r:
            body = await r.json()
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active

    async def wait_for(self, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The query's first non-empty result; fails with the targets' state after `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await self.query(promql)
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"prometheus found nothing for {promql!r} in {timeout}s;"
                    f" targets: {await self.targets()}"
                )
            await asyncio.sleep(0.25)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> PrometheusServer:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
