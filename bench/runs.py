"""Runs: launch latency per runner, and the events/s the monitor absorbs.

    python bench/runs.py [--launches 5] [--events 200000]

Launch latency, through the real chat path (`/run train classifier steps=1`):
  reply    command received -> reply sent (the run is queued, dispatched and launched)
  launch   the runner's launch call alone (container create + start, or process spawn)
  started  command received -> the recipe's first `started` event in events.jsonl
           (includes Python and torch start-up inside the container)
Monitor overhead: a run dir pre-filled with N progress events (a run emitting as fast as
it can), followed by the real monitor until it has absorbed them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from bench.harness import NullChannel, started_at
from tests.support.still_running import StillRunning


def settings_for(home: Path, runner: str) -> Settings:
    return Settings(
        assistant_home=home,
        admin_chats=("tg:1",),
        runner=runner,  # type: ignore[arg-type]
        gpus="none",
        monitor_interval_s=0.02,
        run_memory_mb=2048,
        http_address="off",  # a running service may hold the default port
        _env_file=None,  # type: ignore[call-arg]
    )


async def launch_latency(kind: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), kind)
        runner = ProcessRunner(settings.runs_dir) if kind == "process" else None
        try:
            orch = Orchestrator(settings, channels=[NullChannel()], runner=runner)
            await orch.__aenter__()
        except Exception as exc:
            print(f"{kind:8s} unavailable: {exc}")
            return
        try:
            replies, launches, starts = [], [], []
            for _ in range(n):
                t0 = time.time()
                reply = await orch.handle_command(
                    "tg:1", "bench", "/run train classifier steps=1", source="bench"
                )
                replies.append(time.time() - t0)
                run_id = reply.text.split(":", 1)[0].removeprefix("Run ")
                events = orch.services.runs.run_dir(run_id) / "events.jsonl"
                starts.append(await started_at(events, 0.01) - t0)
                while (await orch.services.runs.repo.get(run_id)).state not in (  # type: ignore[union-attr]
                    "succeeded",
                    "failed",
                ):
                    await asyncio.sleep(0.05)
                await orch.services.log.flush()
                launches.append(
                    await orch.services.db.scalar(
                        "SELECT duration_ms FROM tool_call_log WHERE tool_name LIKE ?"
                        " ORDER BY id DESC LIMIT 1",
                        (f"{kind}.launch",),
                    )
                    / 1000
                )
            print(
                f"{kind:8s} n={n}  reply median {statistics.median(replies) * 1000:7.1f} ms"
                f"  launch median {statistics.median(launches) * 1000:7.1f} ms"
                f"  to started median {statistics.median(starts):6.2f} s"
                f" (min {min(starts):.2f}, max {max(starts):.2f})"
            )
        finally:
            await orch.__aexit__(None, None, None)


async def monitor_overhead(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), "process")
        async with Orchestrator(settings, channels=[NullChannel()], runner=StillRunning()) as orch:
            reply = await orch.handle_command(
                "tg:1", "bench", "/run train gpt steps=1000000", source="bench"
            )
            run_id = reply.text.split(":", 1)[0].removeprefix("Run ")
            await orch.services.monitor.aclose()  # this bench drives the monitor itself
            path = orch.services.runs.run_dir(run_id) / "events.jsonl"
            with open(path, "w") as fh:
                fh.write(json.dumps({"ts": "x", "type": "started", "step": 0, "total": n}) + "\n")
                for step in range(1, n + 1):
                    event = {
                        "ts": "2026-11-23T00:00:00.000Z",
                        "type": "progress",
                        "step": step,
                        "total": n,
                        "loss": 2.0 - step / n,
                        "lr": 3e-4,
                        "tokens_per_s": 50000.0,
                    }
                    fh.write(json.dumps(event) + "\n")
                    if step % 1000 == 0:
                        fh.write(
                            json.dumps(
                                {
                                    "ts": "x",
                                    "type": "checkpoint",
                                    "step": step,
                                    "path": f"checkpoints/ckpt_{step:08d}.pt",
                                }
                            )
                            + "\n"
                        )
            size = path.stat().st_size
            monitor = orch.services.monitor
            cpu0, t0 = time.process_time(), time.perf_counter()
            passes = 0
            while True:
                run = await orch.services.runs.repo.get(run_id)
                assert run is not None
                if run.events_offset >= size:
                    break
                await monitor.follow(run)
                passes += 1
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            absorbed = monitor.events_absorbed
            print(
                f"monitor  absorbed {absorbed:,} events ({size / 1e6:.1f} MB) in {wall:.2f}s"
                f" over {passes} passes: {absorbed / wall:,.0f} events/s,"
                f" {cpu / absorbed * 1e6:.1f} us CPU per event"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    # One event loop per part: each starts from a clean slate, as a fresh service would.
    for kind in ("process", "docker"):
        asyncio.run(launch_latency(kind, args.launches))
    asyncio.run(monitor_overhead(args.events))


if __name__ == "__main__":
    main()
