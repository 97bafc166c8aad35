"""/watch slurm: a batch job submitted with sbatch by hand, on the real one-node cluster."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from tests.support.recording import RecordingChannel
from tests.support.slurm_cluster import SlurmCluster
from tests.support.watched_jobs import ADMIN, JOB, REPO, watch_id_of, watch_settings


@pytest.fixture
async def service(
    settings: Settings, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)  # the cluster's client commands, as deployed
    channel = RecordingChannel()
    wsettings = watch_settings(settings, watch_allow_stop=True)
    async with Orchestrator(wsettings, channels=[channel]) as orch:
        yield orch, channel


def sbatch(cluster: SlurmCluster, folder: Path, *extra: str, steps: int = 20) -> tuple[str, Path]:
    """A user's own batch job: the JOB script with its output in folder/slurm-<id>.out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(JOB)
    go = folder / "go"
    script = folder / "train.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"export REPO={REPO}\n"
        f"exec {sys.executable} -u {folder / 'job.py'} {go} {steps} 0\n"
    )
    out = cluster.command(
        "sbatch",
        "--parsable",
        "--job-name=users-own",
        f"--output={folder}/slurm-%j.out",
        *extra,
        str(script),
    )
    return out.strip().split(";")[0], go


async def test_a_slurm_job_is_followed_to_its_end_with_numbers_and_a_plot(
    service: tuple[Orchestrator, RecordingChannel], slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    orch, channel = service
    job_id, go = sbatch(slurm_cluster, tmp_path / "job")
    (reply,) = await channel.say(ADMIN, f"/watch slurm {job_id}")
    watch_id = watch_id_of(reply)
    assert f"Slurm job {job_id} (users-own on main)" in reply, reply
    assert f"/job/slurm-{job_id}.out" in reply, reply
    go.write_text("go")
    report = await channel.wait_for("ended: completed, exit code 0", timeout=90)
    assert report.startswith(f"Watch {watch_id}: Slurm job {job_id}")
    assert "Step 20/20" in report and "Best: val_loss 0.1" in report
    assert channel.images and channel.images[0][1].read_bytes()[:4] == b"\x89PNG"
    await orch.services.log.flush()
    (story,) = await channel.say(ADMIN, f"/debug watch {watch_id}")
    assert "tool slurm.resolve" in story and "ended: completed" in story


async def test_a_pending_job_says_why_and_a_stop_cancels_it(
    service: tuple[Orchestrator, RecordingChannel], slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    _, channel = service
    job_id, _ = sbatch(slurm_cluster, tmp_path / "job", "--begin=now+3600")
    (reply,) = await channel.say(ADMIN, f"/watch slurm {job_id}")
    watch_id = watch_id_of(reply)
    assert "not started yet" in reply and "it waits in the queue: BeginTime" in reply, reply
    (stopped,) = await channel.say(ADMIN, f"/watch stop {watch_id}")
    assert f"Slurm job {job_id} cancelled (scancel)" in stopped
    report = await channel.wait_for(f"Watch {watch_id}: Slurm job {job_id}", timeout=60)
    report = await channel.wait_for("ended: cancelled", timeout=60)
    assert report.startswith(f"Watch {watch_id}")
    (missing,) = await channel.say(ADMIN, "/watch slurm 987654")
    assert missing.startswith("no Slurm job 987654 is known to")
    assert os.environ["SLURM_CONF"] in missing
