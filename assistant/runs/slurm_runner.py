"""`SlurmRunner`: each run is a Slurm batch job running the run's agent on the cluster.

The service submits from a host with the cluster's client commands (a login node, or any
host with its slurm.conf and munge key; `SLURM_CONF` in the service's environment picks
the cluster) through `slurm_cli.SlurmCli`, every call bounded. The run dir is the one
contract, as on every engine: it lies on a filesystem the service and the nodes share, at
the same path on both (`ASSISTANT_SLURM_RUN_ROOT`, else ASSISTANT_HOME/runs), and the host
reads it as it reads a local one.

What a launch submits (`sbatch_args`):

- `--gres=gpu:N` (the run's `gpus=`), `--cpus-per-task` (its `cpus=`, at least one per
  process), `--mem` (its `mem_mb=`), `--time` (a declared recipe's `time_limit`, else
  `ASSISTANT_SLURM_TIME`, else the partition's default), one node and one task: the agent
  starts the recipe's processes itself (torchrun on the node's loopback for `procs=`/
  `gpus=` > 1, as in a container);
- `--signal=B:USR1@<grace>`: near the time limit the job's wrapper
  (`assistant/jobs/slurm_job.py`) pauses a run that can resume, so it checkpoints first;
- `--requeue` and `--open-mode=append`: a preempted or requeued job starts again by
  itself, and the wrapper resumes it from its last checkpoint; the monitor shows it
  `preempted` meanwhile;
- `--job-name=assistant-<run id>` and `--comment=assistant:<instance>:<run id>`: the comment
  is how `list_managed` finds this assistant's jobs again after a restart;
- `--export=NONE`: nothing of the service's environment (no secret) enters the job; the
  batch script sets PATH, PYTHONPATH and the rest itself;
- `--output` to the run dir's agent.log (what `logs_tail` reads), `--chdir` the run dir,
  the partition (`ASSISTANT_SLURM_PARTITION`) and the admin's own options
  (`ASSISTANT_SLURM_ARGS`, e.g. `--account=ml --qos=normal`).

The batch script execs the wrapper with `ASSISTANT_SLURM_PYTHON` (a venv or conda Python
on the nodes with torch, numpy and scikit-learn; the assistant's code from the checkout's
folder, which must be visible to the nodes too, or installed in that environment), or,
with `ASSISTANT_SLURM_APPTAINER` set, inside that Apptainer/Singularity image
(`apptainer exec --nv`, the run dir and the code bound in; its `python3` runs them).

State: `squeue` (JSON where the installed Slurm has it) says pending (with Slurm's
reason: `RunnerState.waiting`), running, or how the job ended (exit code, signal,
TIMEOUT → `ExitInfo.limit`, OUT_OF_MEMORY); a pending job that ran before
(`restart_cnt` > 0) is `requeued`. A job the controller forgot (ended longer than
`MinJobAge` ago) is asked of sacct where accounting is configured; else it is gone and
the run dir's result.json says how it ended. Stop and pause: control.json, then
`scancel --batch --signal=TERM` to the wrapper, exactly the container protocol; a job
still pending is simply cancelled. Kill: `scancel --signal=KILL`, then `scancel`.

`cluster_lines()` is /status's part: partitions, nodes idle/allocated/down, GPUs free,
and this assistant's jobs with their state or reason.
"""

from __future__ import annotations

import asyncio
import math
import shlex
import sys
from pathlib import Path

import assistant
from assistant.errors import EngineUnavailable, RunStartError, StateError
from assistant.runs import rundir
from assistant.runs.runner import (
    Capabilities,
    ExitInfo,
    HostPaths,
    LaunchRequest,
    RunHandle,
    RunnerKind,
    RunnerState,
)
from assistant.runs.slurm_cli import SlurmCli, SlurmJob, SlurmRefused

AGENT_LOG = rundir.AGENT_LOG
CODE_ROOT = Path(assistant.__file__).resolve().parents[1]
COMMENT_PREFIX = "assistant"
MIN_SIGNAL_S = 10  # the least warning before the time limit that still helps
# Slurm states of a job that is not over (COMPLETING: its processes are still ending)
NOT_OVER = (
    "PENDING",
    "RUNNING",
    "COMPLETING",
    "CONFIGURING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
)


class SlurmRunner:
    """A `Runner` whose engine is a Slurm cluster (see the module docstring)."""

    kind: RunnerKind = "slurm"

    def __init__(
        self,
        cli: SlurmCli,
        runs_dir: Path,
        *,
        instance: str,
        python: str = sys.executable,
        partition: str | None = None,
        time_limit: str | None = None,
        extra_args: tuple[str, ...] = (),
        apptainer: str | None = None,
        signal_grace_s: float = 60.0,
        code_root: Path = CODE_ROOT,
    ) -> None:
        self.cli = cli
        self.runs_dir = runs_dir
        self.instance = instance
        self.python = python
        self.partition = partition
        self.time_limit = time_limit
        self.extra_args = extra_args
        self.apptainer = apptainer
        self.signal_grace_s = signal_grace_s
        self.code_root = code_root
        self._removed: set[str] = set()  # jobs whose end the host has settled
        self.capabilities = Capabilities(
            paths=HostPaths(), resource_limits=True, places_gpus=True, cluster=self
        )

    @property
    def description(self) -> str:
        where = f"partition {self.partition}" if self.partition else "its default partition"
        how = f"Apptainer image {self.apptainer}" if self.apptainer else f"Python {self.python}"
        return f"slurm at {self.cli.where} ({where}; {how})"

    def comment(self, run_id: str) -> str:
        return f"{COMMENT_PREFIX}:{self.instance}:{run_id}"

    def run_of(self, job: SlurmJob) -> str | None:
        """The run id a job of this assistant belongs to; None for anyone else's job."""
        prefix = f"{COMMENT_PREFIX}:{self.instance}:"
        return job.comment[len(prefix) :] if job.comment.startswith(prefix) else None

    # ---- launch ----------------------------------------------------------------------------

    def sbatch_args(self, request: LaunchRequest, time_limit_s: float | None = None) -> list[str]:
        """sbatch's options for a run (see the module docstring)."""
        run_dir = str(request.run_dir)
        cpus = max(request.nproc, math.ceil(request.cpus or 1))
        args = [
            f"--job-name=assistant-{request.run_id}",
            f"--comment={self.comment(request.run_id)}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={cpus}",
            f"--output={run_dir}/{AGENT_LOG}",
            "--open-mode=append",
            f"--chdir={run_dir}",
            "--export=NONE",
            "--requeue",
        ]
        if request.gpus_wanted:
            args.append(f"--gres=gpu:{request.gpus_wanted}")
        if request.memory_mb:
            args.append(f"--mem={request.memory_mb}M")
        minutes = math.ceil(time_limit_s / 60) if time_limit_s else None
        limit = str(minutes) if minutes else self.time_limit
        if limit:
            args.append(f"--time={limit}")
        grace = int(self.signal_grace_s)
        if minutes:  # the warning must come while the job still runs
            grace = min(grace, max(MIN_SIGNAL_S, minutes * 60 // 4))
        args.append(f"--signal=B:USR1@{max(MIN_SIGNAL_S, grace)}")
        if self.partition:
            args.append(f"--partition={self.partition}")
        args.extend(self.extra_args)
        return args

    def batch_script(self, request: LaunchRequest) -> str:
        """The job's script: an environment of its own, then the wrapper (no service env)."""
        q = shlex.quote
        run_dir, code = str(request.run_dir), str(self.code_root)
        cpus = max(1, math.ceil(request.cpus or 1))
        lines = [
            "#!/bin/sh",
            f"# assistant run {request.run_id} ({request.recipe}): assistant/jobs/slurm_job.py",
            f"export PYTHONPATH={q(code)}",
            "export PYTHONUNBUFFERED=1 LANG=C.UTF-8",
            f"export HOME={q(run_dir)} OMP_NUM_THREADS={cpus}",
        ]
        if self.apptainer:
            lines += [
                "export PATH=/usr/local/bin:/usr/bin:/bin",
                f"exec apptainer exec --nv --cleanenv --bind {q(run_dir)} --bind {q(code)}"
                f" --env PYTHONPATH={q(code)} {q(self.apptainer)}"
                f" python3 -m assistant.jobs.slurm_job {q(run_dir)}",
            ]
        else:
            bin_dir = str(Path(self.python).parent)
            lines += [
                f"export PATH={q(bin_dir)}:/usr/local/bin:/usr/bin:/bin",
                f"exec {q(self.python)} -m assistant.jobs.slurm_job {q(run_dir)}",
            ]
        return "\n".join(lines) + "\n"

    async def launch(self, request: LaunchRequest) -> RunHandle:
        if request.mounts:
            raise RunStartError(
                "a recipe with a working dir runs on Slurm from that folder on the shared"
                " filesystem; mounts are a container's (drop workdir or use Docker)"
            )
        time_limit = self._declared_time_limit(request.run_dir)
        try:
            job_id = await self.cli.submit(
                self.sbatch_args(request, time_limit), self.batch_script(request)
            )
        except SlurmRefused as exc:
            raise RunStartError(f"Slurm refused the job: {exc}") from None
        return RunHandle("slurm", job_id, request.run_id)

    @staticmethod
    def _declared_time_limit(run_dir: Path) -> float | None:
        """A declared recipe's time_limit (seconds) from the spec.json the host wrote."""
        import json

        try:
            spec = json.loads(rundir.read_bytes(run_dir, "spec.json", limit=4 * 1024 * 1024))
        except (OSError, ValueError):
            return None
        declared = spec.get("declared") if isinstance(spec, dict) else None
        value = declared.get("time_limit_s") if isinstance(declared, dict) else None
        return float(value) if isinstance(value, int | float) and value > 0 else None

    # ---- state -----------------------------------------------------------------------------

    async def state(self, handle: RunHandle) -> RunnerState:
        if handle.ref in self._removed:
            return RunnerState(running=False, exit=ExitInfo(exit_code=None), gone=True)
        job = await self.cli.job_state(handle.ref)
        if job is None:  # forgotten by the controller, no accounting: result.json says
            return RunnerState(running=False, exit=ExitInfo(exit_code=None), gone=True)
        if job.state in NOT_OVER or not job.ended:
            if job.pending:
                return RunnerState(running=True, waiting=job.waiting, requeued=job.restarts > 0)
            return RunnerState(running=True)
        return RunnerState(running=False, exit=exit_info(job))

    async def signal_stop(self, handle: RunHandle) -> None:
        """SIGTERM to the job's wrapper (which passes it to the agent); a pending job, which
        has nothing to checkpoint, is cancelled."""
        job = await self.cli.job_state(handle.ref)
        if job is None or job.ended:
            return
        if job.pending:
            await self.cli.cancel(handle.ref)
        else:
            await self.cli.cancel(handle.ref, signal="TERM", batch=True)

    async def kill(self, handle: RunHandle) -> None:
        job = await self.cli.job_state(handle.ref)
        if job is None or job.ended:
            return
        if not job.pending:
            await self.cli.cancel(handle.ref, signal="KILL")
        await self.cli.cancel(handle.ref)

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        """The last lines of the job's own output (agent.log in its run dir)."""
        return await asyncio.to_thread(rundir.agent_log_tail, self.runs_dir / handle.run_id, lines)

    async def list_managed(self) -> list[RunHandle]:
        """This assistant's jobs not yet over (pending ones too), by their comment."""
        found = []
        for job in (await self.cli.jobs(fresh=True)).values():
            run_id = self.run_of(job)
            if run_id is not None and not job.ended and job.job_id not in self._removed:
                found.append(RunHandle("slurm", job.job_id, run_id))
        return found

    async def remove(self, handle: RunHandle) -> None:
        """Forget an ended job (Slurm itself keeps nothing to free).

        :raises StateError: it is still pending or running (stop it first).
        """
        if handle.ref in self._removed:
            return
        job = await self.cli.job_state(handle.ref)
        if job is not None and not job.ended:
            raise StateError(f"run {handle.run_id} is still running; stop it first")
        self._removed.add(handle.ref)

    async def ping(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self.cli.ping()
        except TimeoutError:
            raise EngineUnavailable(
                f"no Slurm controller answers at {self.cli.where} (no answer within"
                f" {timeout_s:g} s)"
            ) from None

    async def aclose(self) -> None:
        return None

    # ---- /status ---------------------------------------------------------------------------

    async def cluster_lines(self) -> list[str]:
        """The cluster for /status: partitions, nodes, GPUs free, this assistant's jobs."""
        summary = await self.cli.cluster_summary()
        lines = ["Cluster:", *summary.lines()]
        ours = []
        for job in (await self.cli.jobs()).values():
            run_id = self.run_of(job)
            if run_id is None or job.ended or job.job_id in self._removed:
                continue
            what = job.state.lower()
            if job.pending:
                what = f"waiting: {job.waiting}" + (" (requeued)" if job.restarts else "")
            elif job.nodes:
                what += f" on {job.nodes}"
            gpus = f", {job.gpus} GPU" if job.gpus else ""
            ours.append(f"  job {job.job_id} (run {run_id}{gpus}): {what}")
        lines.append(f"Slurm jobs: {len(ours)}" if ours else "Slurm jobs: none of ours")
        lines.extend(ours[:20])
        if len(ours) > 20:
            lines.append(f"  +{len(ours) - 20} more")
        return lines


def exit_info(job: SlurmJob) -> ExitInfo:
    """How an ended job ended, as the agent's exit codes and a cause read it."""
    code = job.exit_code
    if job.signal and not code:
        code = -job.signal
    if job.state == "TIMEOUT":
        limit = f" (--time {job.time_limit_min} min)" if job.time_limit_min else ""
        return ExitInfo(
            exit_code=code,
            limit=f"time limit reached{limit}: Slurm ended the job (TIMEOUT)",
        )
    if job.state == "OUT_OF_MEMORY":
        return ExitInfo(exit_code=code, oom_killed=True, error="Slurm: OUT_OF_MEMORY")
    if job.state in ("NODE_FAIL", "BOOT_FAIL"):
        return ExitInfo(exit_code=code, error=f"Slurm: {job.state} on {job.nodes or 'its node'}")
    if job.state == "CANCELLED" and code in (None, 0):
        code = -15  # cancelled by scancel (or an admin) before it could end by itself
    if job.state == "PREEMPTED" and code in (None, 0):
        code = -15
    return ExitInfo(exit_code=code, error=None if job.state == "COMPLETED" else job.reason)
