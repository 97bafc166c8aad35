"""A `Runner` whose runs never end: what is under test (or measured) is the monitor's
reading of run dirs, not an engine. Used by tests/runs/test_monitor_memory.py and by
bench/runs.py and bench/monitor_scale.py."""

from __future__ import annotations

from assistant.runs.runner import (
    Capabilities,
    HostPaths,
    LaunchRequest,
    RunHandle,
    RunnerKind,
    RunnerState,
)


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
