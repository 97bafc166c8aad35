"""The benchmark client's own cost and accuracy, against the fake server in another process.

    python bench/serve_client.py [--requests 20000] [--timing-out 64]

overhead  zero delays (ttft 0, itl 0), 16-token answers, concurrency 64: the request rate
          and streamed chunks/s one client process sustains, and its CPU per request. On a
          2-core box the fake server has the other core; when the server is the busier of
          the two, `client-bound max` (1 / client CPU per request) is what the client
          alone could do.
timing    configured TTFT/ITL against what the client measured, at c16 and c64: the error
          of the mean, median and p99 in ms (TPOT is compared with the configured ITL).
          The fake schedules every token on an absolute deadline, so the error is the
          client's plus the two processes' scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.jobs.bench.client import BenchClient, ClientConfig
from assistant.jobs.bench.profiles import custom_profile
from assistant.jobs.bench.results import RunMetadata, build_result

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fakes" / "openai_server.py"
META = RunMetadata("fake-model", "fake-model", "/v1/completions", server_healthy=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class FakeProcess:
    """The fake server as its own process, as the benchmark meets a real one."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, str(FAKE), "--port", str(self.port), "--stats-interval-s", "0"]
        self.proc = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the fake server did not start")

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def overhead(requests: int) -> None:
    fake = FakeProcess()
    try:
        config = ClientConfig(fake.url, "fake-model", warmup=0)
        async with BenchClient(config) as client:
            await client.run(custom_profile(16, 16, 64, 500))  # connections and caches warm
            cpu0, server0 = time.process_time(), fake.cpu_s()
            run = await client.run(custom_profile(16, 16, 64, requests))
            cpu, server = time.process_time() - cpu0, fake.cpu_s() - server0
    finally:
        fake.close()
    r = build_result(run, META)
    chunks = sum(len(rec.itl) + 1 for rec in run.records if rec.ok)
    per_request = cpu / max(1, r["completed"])
    print(
        f"overhead  {r['completed']:,} requests ok, {r['failed']} failed in {run.duration:.2f} s:"
        f" {r['request_throughput']:,.0f} requests/s, {chunks / run.duration:,.0f} chunks/s"
        f" ({r['output_throughput']:,.0f} tokens/s)"
    )
    print(
        f"          client CPU {per_request * 1e6:,.0f} us/request"
        f" ({per_request * 1e6 / 17:,.1f} us/chunk incl. usage),"
        f" busy {cpu / run.duration:.0%} of a core; server busy {server / run.duration:.0%};"
        f" client-bound max {1 / per_request:,.0f} requests/s"
    )


async def timing(concurrency: int, ttft_ms: float, itl_ms: float, out: int) -> None:
    fake = FakeProcess("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms))
    try:
        async with BenchClient(ClientConfig(fake.url, "fake-model")) as client:
            run = await client.run(custom_profile(128, out, concurrency, 4 * concurrency))
    finally:
        fake.close()
    r = build_result(run, META)
    parts = []
    for name, configured in (("ttft", ttft_ms), ("tpot", itl_ms), ("itl", itl_ms)):
        errors = "/".join(
            f"{r[f'{stat}_{name}_ms'] - configured:+.2f}" for stat in ("mean", "median", "p99")
        )
        parts.append(f"{name.upper()} {errors}")
    print(
        f"timing    c{concurrency:<3d} ttft {ttft_ms:g} ms itl {itl_ms:g} ms x{out}"
        f" ({r['completed']} ok): error mean/median/p99 ms  " + "  ".join(parts)
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--timing-out", type=int, default=64, help="output tokens per request")
    args = parser.parse_args()
    await overhead(args.requests)
    for concurrency in (16, 64):
        for ttft_ms, itl_ms in ((50.0, 10.0), (40.0, 4.0)):
            await timing(concurrency, ttft_ms, itl_ms, args.timing_out)


if __name__ == "__main__":
    asyncio.run(main())
