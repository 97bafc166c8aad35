"""Launch latency per engine: from `/run train` to the run's `started`, side by side.

    .venv/bin/python -m bench.launch_latency [--launches 3] [--cases local,slurm]

Each case is one small function that sets up an engine and returns the settings (and
runner, if it builds one) a real `Orchestrator` uses; `measure` then times, through the
real chat path (`/run train classifier steps=1 gpus=0`):

  reply    command received -> reply sent (queued, dispatched, handed to the engine)
  queued   reply sent -> the engine started the job (Slurm: the job's StartTime; the
           local engine: the same moment as the reply)
  started  command received -> the recipe's first `started` event in events.jsonl
           (Python and torch start-up in the run included)

Cases:
  local    the local-process runner (no engine between)
  slurm    a one-node Slurm cluster on loopback, started for the bench
           (tests/support/slurm_cluster.py: Debian's slurm-wlm, as root)
  docker   this machine's Docker engine
  pool     a pool of two engines, each run pinned to the remote one: a second dockerd
           behind an sshd on loopback (tests/support/ssh_engine.py, as root), reached
           over ssh:// with its run dir mirrored through the archive API

A case that cannot run here says why in one line; nothing asserts a time. A new case (a
pooled remote host) is one more function in CASES.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.runner import Runner
from bench.harness import NullChannel, started_at

COMMAND = "/run train classifier steps=1 gpus=0"


@dataclass
class Engine:
    """What one case hands the measurement: settings, and a runner if it builds its own."""

    settings: Settings
    runner: Runner | None = None
    started_at: Callable[[str], float | None] | None = None  # run id -> engine start time
    command: str = COMMAND  # what is asked (a pool: pinned to the remote host)


def base_settings(home: Path, runner: str) -> Settings:
    return Settings(
        assistant_home=home,
        admin_chats=("tg:1",),
        runner=runner,  # type: ignore[arg-type]
        gpus="none",
        monitor_interval_s=0.05,
        run_memory_mb=2048,
        http_address="off",  # a running service may hold the default port
        _env_file=None,  # type: ignore[call-arg]
    )


@contextlib.asynccontextmanager
async def local_case(home: Path) -> AsyncIterator[Engine]:
    settings = base_settings(home, "process")
    yield Engine(settings, ProcessRunner(settings.runs_dir))


@contextlib.asynccontextmanager
async def slurm_case(home: Path) -> AsyncIterator[Engine]:
    from tests.support.slurm_cluster import SlurmCluster, missing_tools

    missing = missing_tools()
    if missing:
        raise RuntimeError(f"Slurm is not installed ({', '.join(missing)}): scripts/test does")
    cluster = SlurmCluster()
    try:
        cluster.start()
        os.environ.update(cluster.env)
        settings = base_settings(home, "slurm").model_copy(update={"slurm_python": sys.executable})

        def started_at(run_id: str) -> float | None:
            listing = cluster.command("squeue", "--json")
            for job in json.loads(listing)["jobs"]:
                if str(job.get("comment", "")).endswith(f":{run_id}") and job["start_time"]:
                    return float(job["start_time"])
            return None

        yield Engine(settings, None, started_at)
    finally:
        cluster.close()


RUN_IMAGE = "assistant-run:latest"


@contextlib.asynccontextmanager
async def docker_case(home: Path) -> AsyncIterator[Engine]:
    """This machine's Docker engine alone (the run image must be built)."""
    settings = base_settings(home, "docker").model_copy(update={"run_image": RUN_IMAGE})
    yield Engine(settings)


@contextlib.asynccontextmanager
async def pool_case(home: Path) -> AsyncIterator[Engine]:
    """A pool (hosts.toml) of this machine's engine and a second dockerd reached over
    ssh:// behind a real sshd (tests/support/ssh_engine.py, as root; the run image is
    copied to it once), each run pinned to that remote host with host=gpu2."""
    from assistant.runs.docker_engine import DEFAULT_DOCKER_HOST
    from tests.support.ssh_engine import SshEngine, missing_tools

    missing = missing_tools()
    if missing or os.geteuid() != 0:
        raise RuntimeError(f"needs root and {', '.join(missing) or 'nothing more'}")
    remote = SshEngine()
    before = os.environ.get("HOME")
    try:
        remote.start()
        await asyncio.to_thread(remote.load_image, RUN_IMAGE)
        os.environ["HOME"] = str(remote.home)  # its ~/.ssh/config and known_hosts
        home.mkdir(parents=True, exist_ok=True)
        (home / "hosts.toml").write_text(
            f'[hosts.local]\nengine = "{DEFAULT_DOCKER_HOST}"\ngpus = "none"\n\n'
            f'[hosts.gpu2]\nengine = "{remote.url}"\ngpus = "none"\n'
        )
        settings = base_settings(home, "docker").model_copy(update={"run_image": RUN_IMAGE})
        yield Engine(settings, command=f"{COMMAND} host=gpu2")
    finally:
        if before is not None:
            os.environ["HOME"] = before
        remote.close()


CASES: dict[str, Callable[[Path], AbstractAsyncContextManager[Engine]]] = {
    "local": local_case,
    "slurm": slurm_case,
    "docker": docker_case,
    "pool": pool_case,
}


async def measure(name: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            async with CASES[name](Path(tmp)) as engine:
                await _measure(name, engine, n)
        except Exception as exc:
            print(f"{name:8s} unavailable: {exc}")


async def _measure(name: str, engine: Engine, n: int) -> None:
    replies: list[float] = []
    queued: list[float] = []
    starts: list[float] = []
    async with Orchestrator(
        engine.settings, channels=[NullChannel()], runner=engine.runner
    ) as orch:
        for _ in range(n):
            t0 = time.time()
            reply = await orch.handle_command("tg:1", "bench", engine.command, source="bench")
            t_reply = time.time()
            replies.append(t_reply - t0)
            run_id = reply.text.split(":", 1)[0].removeprefix("Run ")
            events = orch.services.runs.run_dir(run_id) / "events.jsonl"
            starts.append(await started_at(events, 0.02) - t0)
            begun = engine.started_at(run_id) if engine.started_at else None
            queued.append(max(0.0, begun - t_reply) if begun else 0.0)
            while (await orch.services.runs.repo.get(run_id)).state not in (  # type: ignore[union-attr]
                "succeeded",
                "failed",
            ):
                await asyncio.sleep(0.05)
    print(
        f"{name:8s} n={n}  reply median {statistics.median(replies) * 1000:7.1f} ms"
        f"  queued median {statistics.median(queued):5.2f} s"
        f"  to started median {statistics.median(starts):6.2f} s"
        f" (min {min(starts):.2f}, max {max(starts):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"no case {name!r} (cases: {', '.join(CASES)})")
        asyncio.run(measure(name, args.launches))


if __name__ == "__main__":
    main()
