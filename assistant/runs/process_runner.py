"""`ProcessRunner`: the run's agent as a local subprocess, when no Docker engine is reachable.

Same run-dir protocol as a container. The agent starts in a session of its own, so it
outlives an orchestrator restart; `agent.pid` in the run dir lets a new orchestrator find
it again. Its environment is built from scratch: nothing of the host's (no secret) leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import psutil

import assistant
from assistant.errors import RunStartError, StateError
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

PID_FILE = "agent.pid"
AGENT_LOG = rundir.AGENT_LOG
CODE_ROOT = Path(assistant.__file__).resolve().parents[1]


class ProcessRunner:
    """A `Runner` without an engine: no images, no servers, no isolation beyond the uid.

    Nothing stands between the service and its runs, so no call can find an engine
    unreachable: `ping` answers at once.
    """

    kind: RunnerKind = "process"
    capabilities = Capabilities(paths=HostPaths())

    def __init__(self, runs_dir: Path, python: str = sys.executable) -> None:
        self._runs_dir = runs_dir
        self._python = python
        self._exits: dict[str, int] = {}  # reaped children: pid -> exit code
        self._children: set[str] = set()  # pids we spawned (not yet removed)

    @property
    def description(self) -> str:
        return "local processes (no Docker engine)"

    async def launch(self, request: LaunchRequest) -> RunHandle:
        env = {
            # the interpreter's own bin first: a declared recipe's `python`/`torchrun`
            "PATH": os.pathsep.join((str(Path(self._python).parent), os.defpath)),
            "PYTHONPATH": str(CODE_ROOT),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(max(1, int(request.cpus or 1))),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in request.gpus),
            "LANG": "C.UTF-8",
            "HOME": str(request.run_dir),
        }
        argv = [self._python, "-m", "assistant.jobs.agent", str(request.run_dir)]
        try:
            log = rundir.open_append(request.run_dir, AGENT_LOG)
        except OSError as exc:
            raise RunStartError(f"could not open the run's {AGENT_LOG}: {exc}") from None
        try:
            # posix_spawn, not Popen: the agent must outlive us without a Popen object
            # complaining at exit; we reap it ourselves while we live.
            pid = os.posix_spawn(  # noqa: ASYNC221 - returns at once, never waits
                self._python,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise RunStartError(f"could not start the run's process: {exc}") from None
        finally:
            os.close(log)
        self._children.add(str(pid))
        rundir.write_file(request.run_dir, PID_FILE, str(pid).encode())
        return RunHandle("process", str(pid), request.run_id)

    def _reap(self, ref: str) -> int | None:
        """Exit code of our child if it ended (once reaped, remembered); None otherwise."""
        if ref in self._exits:
            return self._exits[ref]
        try:
            pid, status = os.waitpid(int(ref), os.WNOHANG)
        except (ChildProcessError, ValueError):
            self._children.discard(ref)  # not our child (any more): the pid file tells
            return None
        if pid == 0:
            return None
        self._exits[ref] = os.waitstatus_to_exitcode(status)
        return self._exits[ref]

    def _matches(self, handle: RunHandle) -> psutil.Process | None:
        """The live process behind a handle, if it is still our agent for that run."""
        try:
            proc = psutil.Process(int(handle.ref))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = proc.cmdline()
        except (psutil.Error, ValueError):
            return None
        if "assistant.jobs.agent" in cmdline and any(handle.run_id in a for a in cmdline):
            return proc
        return None

    async def state(self, handle: RunHandle) -> RunnerState:
        code = self._reap(handle.ref)
        if code is not None:
            return RunnerState(running=False, exit=ExitInfo(exit_code=code))
        # Our own child that has not ended runs, even in the instant after the spawn
        # when its command line is still ours and not yet the agent's.
        if handle.ref in self._children or self._matches(handle) is not None:
            return RunnerState(running=True)
        code = self._reap(handle.ref)  # it may have ended between the two looks
        if code is not None:
            return RunnerState(running=False, exit=ExitInfo(exit_code=code))
        # Not our child (started before a restart): its exit code is gone; result.json says.
        return RunnerState(running=False, exit=ExitInfo(exit_code=None), gone=True)

    async def signal_stop(self, handle: RunHandle) -> None:
        proc = self._matches(handle)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)

    async def kill(self, handle: RunHandle) -> None:
        proc = self._matches(handle)
        if proc is None:
            return
        with contextlib.suppress(psutil.Error):
            family = [*proc.children(recursive=True), proc]
            for member in family:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            await asyncio.to_thread(psutil.wait_procs, family, 5)
        self._reap(handle.ref)

    async def list_managed(self) -> list[RunHandle]:
        found: list[RunHandle] = []
        try:
            run_ids = sorted(os.listdir(self._runs_dir))
        except OSError:
            return found
        for run_id in run_ids:
            try:  # written by us, in a folder the run can write: read as untrusted
                pid = rundir.read_bytes(self._runs_dir / run_id, PID_FILE, limit=32)
            except OSError:
                continue
            handle = RunHandle("process", pid.decode("ascii", "replace").strip(), run_id)
            if self._matches(handle) is not None:
                found.append(handle)
        return found

    async def remove(self, handle: RunHandle) -> None:
        """Forget an ended run's process.

        :raises StateError: it is still running (stop it first).
        """
        if self._reap(handle.ref) is None and (
            handle.ref in self._children or self._matches(handle) is not None
        ):
            raise StateError(f"run {handle.run_id} is still running; stop it first")
        self._exits.pop(handle.ref, None)
        self._children.discard(handle.ref)

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        """The last lines of the agent's own output (agent.log in its run dir)."""
        return await asyncio.to_thread(rundir.agent_log_tail, self._runs_dir / handle.run_id, lines)

    async def ping(self, timeout_s: float) -> None:
        """Always answers: local processes have no engine between."""
        return None

    async def aclose(self) -> None:
        return None
