"""A `Runner` whose runs never end: what is under test (or measured) is the monitor's
reading of run dirs, not an engine. Used by tests/runs/test_monitor_memory.py and by
bench/runs.py and bench/monitor_scale.py."""

from __future__ import annotations

from pathlib import Path

from assistant.runs.runner import (
    Capabilities,
    HostPaths,
    LaunchRequest,
    RunHandle,
    RunnerKind,
    RunnerState,
)
from assistant.services import Services
from storage.runs import RunRecord
from storage.timestamps import to_iso


class StillRunning:
    """Every run it launched is running, for ever; every other call does nothing."""

    kind: RunnerKind = "process"
    capabilities = Capabilities(paths=HostPaths())

    @property
    def description(self) -> str:
        return "still running"

    async def launch(self, request: LaunchRequest) -> RunHandle:
        return RunHandle("process", "1", request.run_id)

    async def state(self, handle: RunHandle) -> RunnerState:
        return RunnerState(running=True)

    async def signal_stop(self, handle: RunHandle) -> None:
        return None

    async def kill(self, handle: RunHandle) -> None:
        return None

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        return ""

    async def list_managed(self) -> list[RunHandle]:
        return []

    async def remove(self, handle: RunHandle) -> None:
        return None

    async def ping(self, timeout_s: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def running_run(
    services: Services, image: str = "img", beat: bool = False
) -> tuple[RunRecord, Path]:
    """A run made through the repo in state running, as StillRunning launched it (`beat`:
    with a heartbeat now), and its run dir, made empty."""
    now = to_iso(services.clock.now())
    run = await services.runs.repo.create(
        kind="train",
        recipe="gpt",
        params={},
        image=image,
        gpus_wanted=0,
        nproc=1,
        memory_mb=None,
        cpus=None,
        chat_id="tg:1",
        total=None,
        now=now,
        state="running",
    )
    beats = {"last_beat_at": now} if beat else {}
    await services.runs.repo.update(run.id, runner="process", handle="1", started_at=now, **beats)
    run_dir = services.runs.run_dir(run.id)
    run_dir.mkdir(parents=True)
    return run, run_dir
