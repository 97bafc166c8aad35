"""Which runner this host uses, and which GPUs runs may take."""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import sys
from pathlib import Path

from assistant.config import Settings
from assistant.errors import ConfigError
from assistant.hoststats import HostStats
from assistant.runs.pool_config import load_hosts
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.runner import Runner

log = logging.getLogger(__name__)


async def choose_runner(settings: Settings, gpu_count: int = 0) -> Runner:
    """Docker if an engine answers (or is required), else local processes.

    :raises ConfigError: when ASSISTANT_RUNNER=docker, or DOCKER_HOST names an ssh://
        engine, and no engine answers.
    """
    hosts = load_hosts(settings.hosts_path)
    if hosts is not None:  # a pool of Docker hosts (hosts.toml)
        from assistant.runs.pool import pool_runner

        return await pool_runner(settings, hosts)
    if settings.runner == "process":
        return _process_runner(settings)
    # One assistant per ASSISTANT_HOME: its containers and jobs carry that home's fingerprint.
    instance = hashlib.sha256(str(settings.assistant_home.resolve()).encode()).hexdigest()[:12]
    if settings.runner == "slurm":
        return await slurm_runner(settings, instance)
    from assistant.runs.docker_runner import DockerRunner

    runner = DockerRunner(
        settings.docker_host,
        image=settings.run_image,
        gpu_count=gpu_count,
        instance=instance,
        run_uid=settings.run_uid,
        home=settings.assistant_home,
        host_home=settings.host_home,
    )
    warning = login_account(settings.run_uid)
    if warning:
        log.warning(warning)
    try:
        await runner.connect()
        return runner
    except ConfigError:
        raise  # the engine answered, but would mount ASSISTANT_HOME from elsewhere
    except Exception as exc:
        if settings.runner == "docker":
            raise ConfigError(f"ASSISTANT_RUNNER=docker but no engine answers: {exc}") from None
        if runner.host.scheme == "ssh":
            # A remote engine was asked for by name: local processes would run on the wrong
            # machine (without its GPUs), so it is an error at start, not a fallback.
            raise ConfigError(f"DOCKER_HOST={runner.base_url} but {exc}") from None
        log.info("no Docker engine (%s): runs use local processes", exc)
        return _process_runner(settings)


async def slurm_runner(settings: Settings, instance: str) -> Runner:
    """Batch jobs on the Slurm cluster SLURM_CONF names (runs/slurm_runner.py).

    :raises ConfigError: its controller does not answer, or the client commands are missing.
    """
    from assistant.runs.slurm_cli import SlurmCli
    from assistant.runs.slurm_runner import SlurmRunner

    runner = SlurmRunner(
        SlurmCli(),
        settings.runs_dir,
        instance=instance,
        python=settings.slurm_python or sys.executable,
        partition=settings.slurm_partition,
        time_limit=settings.slurm_time,
        extra_args=tuple(shlex.split(settings.slurm_args)),
        apptainer=settings.slurm_apptainer,
        signal_grace_s=settings.stop_grace_s,
    )
    try:
        await runner.ping(10.0)
    except Exception as exc:
        raise ConfigError(
            f"ASSISTANT_RUNNER=slurm but {exc}; check `scontrol ping` as the service's user"
        ) from None
    return runner


def _process_runner(settings: Settings) -> ProcessRunner:
    if os.geteuid() == 0:
        log.warning(
            "runs execute as local processes with the service's rights (root): only code you"
            " trust should run here; a Docker engine runs them isolated, as ASSISTANT_RUN_UID"
        )
    return ProcessRunner(settings.runs_dir)


NO_LOGIN_SHELLS = ("nologin", "false", "sync", "halt", "shutdown")


def login_account(uid: int, passwd: Path = Path("/etc/passwd")) -> str | None:
    """A warning when the run uid is a login account of this host, else None.

    Whoever logs in as that user owns what runs write (their run dirs' checkpoints and
    logs) and could plant links there: runs need a uid nobody uses.
    """
    try:
        lines = passwd.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) < 7 or fields[2] != str(uid):
            continue
        shell = fields[6].strip() or "/bin/sh"  # empty: login(1) gives /bin/sh
        if shell.rsplit("/", 1)[-1] not in NO_LOGIN_SHELLS:
            return (
                f"ASSISTANT_RUN_UID={uid} is the login account {fields[0]!r} ({shell}) on this"
                " host: that user can read and change what runs write. Set ASSISTANT_RUN_UID"
                " to a uid no account uses (the default is 64000)."
            )
    return None


def gpu_inventory(settings: Settings, host: HostStats) -> list[int]:
    if settings.gpus == "none":
        return []
    if settings.gpus == "auto":
        return list(range(host.gpu_count()))
    return [int(g) for g in settings.gpus.split(",")]
