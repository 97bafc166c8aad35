"""Multi-process runs in real containers without a network: the ranks meet over loopback.

A run's container has `network_mode=none`, so its host name resolves to nothing and a
rendezvous by host name (torchrun's default) waits for minutes and then fails. Both a
built-in recipe (the agent's own torchrun line) and a declared recipe's own launcher
(torchrun --standalone, or processes that read MASTER_ADDR/MASTER_PORT) must get there
over 127.0.0.1. CPU only, gloo: NCCL over loopback for gpus=2 is untested here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.docker_engine import docker_run_settings, docker_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import launch

RUN_IMAGE = "assistant-run:latest"
TINY_GPT = "n_layer=1 n_embd=32 block_size=32 batch_size=4 eval_iters=2 log_every=1"

# A declared recipe's own DDP script: gloo over whatever its launcher set up, an
# all_reduce that needs every rank, and nanoGPT-style lines from rank 0.
DDP_SCRIPT = r"""
import os, sys
import torch
import torch.distributed as dist

if "RANK" not in os.environ:  # started as one process: spawn the ranks ourselves
    import torch.multiprocessing as mp

    def rank_main(rank, world):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        work()

def work():
    dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    rank, world = dist.get_rank(), dist.get_world_size()
    for it in range(1, 4):
        t = torch.ones(1) * (rank + 1)
        dist.all_reduce(t)
        if rank == 0:
            print(f"iter {it}: loss {t.item():.4f} world {world}", flush=True)
    if rank == 0:
        print(f"master {os.environ['MASTER_ADDR']}", flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    if "RANK" in os.environ:
        work()
    else:
        world = int(sys.argv[1])
        mp.spawn(rank_main, args=(world,), nprocs=world)
"""

RECIPES = """
[recipes.ddp_torchrun]
summary = "the admin's own torchrun line, as its README would show it"
image = "{image}"
workdir = "{workdir}"
command = ["python3", "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node={{nproc}}", "ddp.py"]
gpus = 0

[recipes.ddp_torchrun.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']

[recipes.ddp_spawn]
summary = "one process that spawns its ranks and meets them at MASTER_ADDR:MASTER_PORT"
image = "{image}"
workdir = "{workdir}"
command = ["python3", "ddp.py", "{{nproc}}"]
gpus = 0

[recipes.ddp_spawn.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
"""


@pytest.fixture
def ddp_settings(
    settings: Settings, docker_engine: docker.DockerClient, tmp_path: Path
) -> Settings:
    """Docker runs of the run image, with two declared DDP recipes beside the built-in ones."""
    try:
        docker_engine.images.get(RUN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{RUN_IMAGE} is missing: deploy/build-images.sh builds it", pytrace=False)
    root = tmp_path / "code"
    workdir = root / "ddp"
    workdir.mkdir(parents=True)
    (workdir / "ddp.py").write_text(DDP_SCRIPT)
    for path in (root, workdir):  # the container's user must read it, as on a real host
        path.chmod(0o755)
    (workdir / "ddp.py").chmod(0o644)
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    (settings.assistant_home / "recipes.toml").write_text(
        RECIPES.format(image=RUN_IMAGE, workdir=workdir)
    )
    return docker_run_settings(settings, RUN_IMAGE, recipe_roots=(root,))


@pytest.fixture
async def service(ddp_settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    async with Orchestrator(ddp_settings, channels=[channel], runner=docker_runner()) as orch:
        yield orch, channel


def events_of(orch: Orchestrator, run_id: str, kind: str) -> list[dict[str, object]]:
    path = orch.services.runs.run_dir(run_id) / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["type"] == kind]


async def test_gpt_on_two_processes_in_a_container_without_network(
    service: tuple[Orchestrator, RecordingChannel], docker_engine: docker.DockerClient
) -> None:
    orch, channel = service
    run_id = await launch(channel, f"/run train gpt procs=2 steps=6 eval_every=3 {TINY_GPT}")
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.runner == "docker" and run.nproc == 2 and run.handle
    config = docker_engine.containers.get(run.handle).attrs
    assert config["HostConfig"]["NetworkMode"] == "none"  # no network was opened for it
    report = await channel.wait_for(f"Run {run_id} (gpt) succeeded", timeout=120)
    assert "val_loss" in report and "Checkpoint:" in report
    [started] = events_of(orch, run_id, "started")
    assert started["world_size"] == 2
    assert [e["step"] for e in events_of(orch, run_id, "progress")] == [1, 2, 3, 4, 5, 6]
    [launched] = events_of(orch, run_id, "log")[:1]
    assert "--rdzv-endpoint=127.0.0.1:0" in str(launched["message"])


@pytest.mark.parametrize("recipe", ["ddp_torchrun", "ddp_spawn"])
async def test_a_declared_recipes_own_launcher_meets_over_loopback(
    service: tuple[Orchestrator, RecordingChannel], recipe: str
) -> None:
    orch, channel = service
    run_id = await launch(channel, f"/run train {recipe} procs=2")
    await channel.wait_for(f"Run {run_id} ({recipe}) succeeded", timeout=120)
    log = (orch.services.runs.run_dir(run_id) / "stdout.log").read_text()
    assert "iter 3: loss 3.0000 world 2" in log, log  # 1 + 2: both ranks took part
    if recipe == "ddp_spawn":  # torchrun sets its workers' own MASTER_ADDR
        assert "master 127.0.0.1" in log, log
    assert [e["step"] for e in events_of(orch, run_id, "progress")] == [1, 2, 3]
