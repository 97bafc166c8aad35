"""The fake OpenAI-compatible server as its own process, as a benchmark meets a real one.

In one process the fake and the client take turns on one event loop: when sixteen
requests go out at once, the sixteenth reaches the server only after the loop has sent
the other fifteen and parsed their bodies, so a timed test would measure the shared
loop as much as the client. Started as a program, the fake has its own interpreter (on
a 2-core box, the other core) and the client's figures are its own plus the two
processes' scheduling, which is what a user's benchmark against vLLM sees too.

    with FakeProcess("--ttft-ms", "40", "--itl-ms", "4") as fake:
        fake.url   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import psutil

PROGRAM = Path(__file__).resolve().with_name("openai_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class FakeProcess:
    """`python openai_server.py --port P ARGS...`, answering /health before it returns."""

    def __init__(self, *args: str, start_timeout_s: float = 20.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, str(PROGRAM), "--port", str(self.port)]
        if "--stats-interval-s" not in args:
            command += ["--stats-interval-s", "0"]
        self.proc = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fake server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the fake server did not answer /health in {start_timeout_s:g} s")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user and system)."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
