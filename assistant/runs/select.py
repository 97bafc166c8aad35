"""Which runner this host uses, and which GPUs runs may take."""

from __future__ import annotations

import hashlib
import logging

from assistant.config import Settings
from assistant.errors import ConfigError
from assistant.hoststats import HostStats
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.runner import Runner

log = logging.getLogger(__name__)


async def choose_runner(settings: Settings, gpu_count: int = 0) -> Runner:
    """Docker if an engine answers (or is required), else local processes.

    :raises ConfigError: when ASSISTANT_RUNNER=docker and no engine answers.
    """
    if settings.runner == "process":
        return ProcessRunner(settings.runs_dir)
    from assistant.runs.docker_runner import DockerRunner

    # One assistant per ASSISTANT_HOME: its containers carry that home's fingerprint.
    instance = hashlib.sha256(str(settings.assistant_home.resolve()).encode()).hexdigest()[:12]
    runner = DockerRunner(
        settings.docker_host, image=settings.run_image, gpu_count=gpu_count, instance=instance
    )
    try:
        await runner.connect()
        return runner
    except Exception as exc:
        if settings.runner == "docker":
            raise ConfigError(f"ASSISTANT_RUNNER=docker but no engine answers: {exc}") from None
        log.info("no Docker engine (%s): runs use local processes", exc)
        return ProcessRunner(settings.runs_dir)


def gpu_inventory(settings: Settings, host: HostStats) -> list[int]:
    if settings.gpus == "none":
        return []
    if settings.gpus == "auto":
        return list(range(host.gpu_count()))
    return [int(g) for g in settings.gpus.split(",")]
