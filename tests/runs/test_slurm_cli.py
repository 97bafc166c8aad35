"""The Slurm client calls against the real one-node cluster: what they parse, how they fail.

`squeue --json` and `scontrol show job --oneliner` must read the same jobs alike (the
second is what a Slurm without the openapi plugins gives); a controller that does not
answer is `EngineUnavailable` within the call's bound, never a hang or a refusal.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from assistant.errors import EngineUnavailable
from assistant.runs.slurm_cli import SlurmCli, SlurmRefused, gres_count, limit_minutes
from tests.support.slurm_cluster import SlurmCluster


@pytest.fixture
def cli(slurm_cluster: SlurmCluster) -> SlurmCli:
    return SlurmCli(env={**os.environ, **slurm_cluster.env})


async def _ended(cli: SlurmCli, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        job = await cli.job_state(job_id)
        if job is not None and job.ended:
            return
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.3)


async def test_jobs_read_alike_from_json_and_key_value(
    cli: SlurmCli, slurm_cluster: SlurmCluster
) -> None:
    script = "#!/bin/sh\nexit 3\n"
    failed = await cli.submit(["--output=/dev/null", "--comment=probe:a b", "--mem=64"], script)
    later = ["--output=/dev/null", "--gres=gpu:2", "--mem=64", "--begin=now+3600"]
    held = await cli.submit(later, "#!/bin/sh\n")
    await _ended(cli, failed)
    as_json = await cli.jobs(fresh=True)
    assert cli.use_json is True  # Debian's 22.05 has the openapi plugins
    as_text = await SlurmCli(env={**os.environ, **slurm_cluster.env}, use_json=False).jobs()
    for job_id in (failed, held):
        one, two = as_json[job_id], as_text[job_id]
        assert (one.state, one.exit_code, one.restarts, one.gres) == (
            two.state,
            two.exit_code,
            two.restarts,
            two.gres,
        ), (one, two)
    assert as_json[failed].state == "FAILED" and as_json[failed].exit_code == 3
    assert as_text[failed].comment == "probe:a b"  # a value with a space
    assert as_json[held].pending and as_json[held].waiting == "BeginTime"
    assert as_json[held].gpus == 2
    await cli.cancel(held)
    await cli.cancel(held)  # over already: no error
    assert await cli.accounting() is False  # no slurmdbd: sacct has nothing to say
    assert await cli.job_state("999999") is None


async def test_the_cluster_summary_counts_nodes_and_gpus(cli: SlurmCli) -> None:
    job = await cli.submit(
        ["--output=/dev/null", "--gres=gpu:3", "--mem=64"], "#!/bin/sh\nsleep 30\n"
    )
    try:
        deadline = time.monotonic() + 30
        while (await cli.job_state(job)).state != "RUNNING":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        summary = await cli.cluster_summary()
        (main,) = summary.partitions
        assert (main.name, main.default, main.up, main.gpus, main.gpus_free) == (
            "main",
            True,
            True,
            4,
            1,
        )
        assert main.nodes == {"allocated": 1}
        assert summary.lines() == [
            "  main (default, up, max 1:00:00): nodes 1 allocated · GPUs 1/4 free"
        ]
    finally:
        await cli.cancel(job)


async def test_sbatch_refusals_are_refusals(cli: SlurmCli) -> None:
    with pytest.raises(SlurmRefused, match=r"sbatch:.*[Ii]nvalid"):
        await cli.submit(["--partition=nosuch", "--output=/dev/null"], "#!/bin/sh\n")
    with pytest.raises(SlurmRefused, match="node configuration is not available"):
        await cli.submit(["--gres=gpu:9", "--output=/dev/null"], "#!/bin/sh\n")


async def test_a_controller_that_does_not_answer_is_unavailable(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    conf = slurm_cluster.conf.read_text()
    dead = "\n".join(
        "SlurmctldPort=9" if line.startswith("SlurmctldPort=") else line
        for line in conf.splitlines()
    )
    (tmp_path / "slurm.conf").write_text(dead + "\n")
    (tmp_path / "gres.conf").write_text((slurm_cluster.conf.parent / "gres.conf").read_text())
    cli = SlurmCli(env={**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf")}, call_s=20)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="no Slurm controller answers at"):
        await cli.jobs()
    with pytest.raises(EngineUnavailable):
        await cli.ping()
    assert time.monotonic() - started < 45


def test_counts_and_limits_read_as_slurm_writes_them() -> None:
    assert gres_count("gres:gpu:a100:2(IDX:0-1),gres:shard:8", "gpu") == 2
    assert gres_count("gpu:4", "gpu") == 4 and gres_count("", "gpu") == 0
    assert [limit_minutes(t) for t in ("1:00:00", "2-00:00:00", "30:00", "UNLIMITED")] == [
        60,
        2880,
        30,
        None,
    ]
