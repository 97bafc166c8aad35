"""The supervisor inside a run: start the recipe, keep a heartbeat, leave a result behind.

    python -m assistant.jobs.agent RUN_DIR

It reads `spec.json`, launches the recipe (through torchrun when nproc > 1, the ranks
meeting over loopback: rendezvous.py) in its own process group with output appended to
`stdout.log`, writes a `heartbeat` event every `heartbeat_s`, forwards SIGTERM/SIGINT to
the recipe, and finally writes `result.json`: the recipe's own `result` event when it wrote
one, or a `failed` result with the cause read from the recipe's `error` event, its exit
status and the tail of its output.

Standard library only (plus the stdlib-only recipe registry): it must start, and report
a failure, even where torch itself is broken.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from assistant.jobs.declared_run import (
    CheckpointWatcher,
    DeclaredJob,
    DeclaredSpecError,
    OutputFollower,
    build_job,
)
from assistant.jobs.lines import LineTail, open_regular
from assistant.jobs.output_mask import copy_masked, secret_patterns
from assistant.jobs.protocol import (
    CHECKPOINTS,
    EVENTS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PAUSED,
    EXIT_STOPPED,
    RESULT,
    SPEC,
    STDOUT,
    EventWriter,
    read_control,
    utc_now_iso,
)
from assistant.jobs.recipes import ParamError, RecipeInfo, get_recipe, to_cli_args
from assistant.jobs.rendezvous import rendezvous_env, torchrun_args

TAIL_LINES = 20
TAIL_BYTES = 64 * 1024  # enough to find the traceback or OOM text near the end
DEFAULT_HEARTBEAT_S = 5.0
# What torchrun may spend on a graceful stop before it SIGKILLs the workers: they save
# a checkpoint first, which can take minutes for a large model.
TORCHRUN_SHUTDOWN_S = "600"
COPY_GRACE_S = 5.0  # for the masked output copy to drain after the command exits
EXIT_CODES = {
    "succeeded": EXIT_OK,
    "paused": EXIT_PAUSED,
    "stopped": EXIT_STOPPED,
    "failed": EXIT_FAILED,
}
_OOM_TEXT = re.compile(r"MemoryError|out of memory|OutOfMemoryError|Signal 9 \(SIGKILL\)", re.I)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds assistant/


class SpecError(ValueError):
    """spec.json is missing, not JSON, or asks for something impossible."""


@dataclass(frozen=True)
class Spec:
    """The parts of spec.json the agent acts on; `declared` is set for an admin's recipe."""

    run_id: str
    name: str
    recipe: RecipeInfo | None
    params: dict[str, Any]
    nproc: int
    resume_from: str | None
    heartbeat_s: float
    declared: DeclaredJob | None = None
    time_limit_s: float | None = None


def load_spec(run_dir: Path) -> Spec:
    """Read and check spec.json against the recipe registry.

    :raises SpecError: anything wrong with it, in words fit for a chat message.
    """
    try:
        raw = json.loads((run_dir / SPEC).read_text())
    except FileNotFoundError:
        raise SpecError(f"{SPEC} is missing") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{SPEC} is unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{SPEC} must hold a JSON object")
    nproc, heartbeat = _nproc_and_heartbeat(raw)
    if "declared" in raw:
        try:
            job = build_job(raw, run_dir)
        except DeclaredSpecError as exc:
            raise SpecError(str(exc)) from None
        return Spec(
            str(raw.get("run_id", run_dir.name)),
            job.recipe.name,
            None,
            job.params,
            nproc,
            job.resumed_from,
            heartbeat,
            declared=job,
            time_limit_s=job.recipe.time_limit_s,
        )
    try:
        recipe = get_recipe(str(raw.get("recipe")))
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise SpecError("params must be an object")
        to_cli_args(recipe, params)  # validates
    except ParamError as exc:
        raise SpecError(str(exc)) from None
    resume = raw.get("resume_from")
    if resume is not None:
        if not isinstance(resume, str) or not resume:
            raise SpecError("resume_from must be a checkpoint path relative to the run dir")
        if not recipe.supports_resume:
            raise SpecError(f"recipe {recipe.name!r} cannot resume")
        if Path(resume).is_absolute() or ".." in Path(resume).parts:
            raise SpecError(f"resume_from must stay inside the run dir, got {resume!r}")
        if not (run_dir / resume).is_file():
            raise SpecError(f"resume_from {resume!r} does not exist in the run dir")
    return Spec(
        str(raw.get("run_id", run_dir.name)), recipe.name, recipe, params, nproc, resume, heartbeat
    )


def _nproc_and_heartbeat(raw: dict[str, Any]) -> tuple[int, float]:
    nproc = raw.get("nproc", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= 64:
        raise SpecError(f"nproc must be an integer from 1 to 64, got {nproc!r}")
    heartbeat = raw.get("heartbeat_s", DEFAULT_HEARTBEAT_S)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or heartbeat <= 0:
        raise SpecError(f"heartbeat_s must be a positive number, got {heartbeat!r}")
    return nproc, float(heartbeat)


def build_command(spec: Spec, run_dir: Path) -> list[str]:
    """The recipe's command line; torchrun (as `python -m torch.distributed.run`) for nproc > 1,
    with its rendezvous on 127.0.0.1 (see assistant/jobs/rendezvous.py for why).

    A declared recipe's command is the admin's own, already rendered: it calls torchrun
    itself if it wants to.
    """
    if spec.declared is not None:
        return spec.declared.argv
    assert spec.recipe is not None
    launcher = [sys.executable, "-m"]
    if spec.nproc > 1:  # ranks meet over loopback, never by host name (rendezvous.py)
        launcher += ["torch.distributed.run", *torchrun_args(spec.nproc, spec.run_id), "-m"]
    args = ["--run-dir", str(run_dir), *to_cli_args(spec.recipe, spec.params)]
    if spec.resume_from:
        args.append(f"--resume={spec.resume_from}")
    return [*launcher, spec.recipe.module, *args]


@dataclass
class EventTail:
    """Follows events.jsonl from where this attempt began (earlier attempts are history)."""

    path: Path
    offset: int
    step: int | None = None
    checkpoint: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    _lines: LineTail = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lines = LineTail(self.path, self.offset)

    def poll(self) -> None:
        for line in self._lines.read():
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nested thousands deep
                continue
            if isinstance(event, dict):
                self._see(event)

    def _see(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "heartbeat":
            return
        if isinstance(event.get("step"), int):
            self.step = event["step"]
        if kind == "checkpoint":
            self.checkpoint = event.get("path")
        elif kind == "result":
            self.result = event
        elif kind == "error" and self.error is None:
            self.error = event  # the first error is the cause; later ones are fallout


class SignalForwarder:
    """Passes SIGTERM/SIGINT on to the recipe's whole process group (torchrun and workers)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.received: int | None = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self.forward()

    def forward(self) -> None:
        # returncode, not poll(): no reaping from inside a signal handler
        if self.proc is not None and self.received is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, self.received)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the agent dies, so no orphan keeps a GPU."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def read_tail(path: Path, start: int) -> str:
    """The last TAIL_BYTES of `path` written after offset `start` ("" unless a regular file:
    the recipe may have swapped its log for a link to a file that is not its to show)."""
    try:
        with open_regular(path) as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def classify_failure(returncode: int | None, text: str) -> dict[str, Any]:
    """An `error` event's fields for a recipe that ended without a result.

    A declared recipe or a plain script knows nothing of our `error` event: all it leaves
    is a Python traceback in its output, so the exception it names is the cause.
    """
    lines = [_clip(ln) for ln in text.splitlines() if ln.strip()]
    tail = lines[-TAIL_LINES:]
    killed = returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    if killed or _OOM_TEXT.search(text):
        how = "killed by SIGKILL" if killed else f"exited with code {returncode}"
        return {"kind": "oom", "message": f"out of memory ({how})", "traceback": tail}
    found = last_exception(text.splitlines())
    if found is not None:
        return {"kind": "exception", "message": found.message, "traceback": found.lines}
    return {"kind": "exit", "message": f"exited with code {returncode}", "traceback": tail}


_TB_HEADER = "Traceback (most recent call last):"
# torchrun (and `--tee`) put "[rank1]: " or "[default1]:" before each line of a worker
_LINE_PREFIX = re.compile(r"\[(?P<tag>[A-Za-z_]*\d+)\]: ?")
# what ends a traceback: "ValueError: bad", "torch.OutOfMemoryError: x", "KeyboardInterrupt"
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?::.*)?")
_TORCHRUN_FAILED = "ChildFailedError"
_LINE_CHARS = 500  # of one traceback line: the error event must stay one readable line


@dataclass
class FoundException:
    """The exception line of one traceback in the output, and where it ended."""

    message: str
    lines: list[str]
    end: int
    tag: str


def last_exception(lines: list[str]) -> FoundException | None:
    """The exception the output's last Python traceback names (of a chain: the last one).

    Each worker's lines (by their "[rankN]:" tag) are read apart, so ranks that print at
    once do not mix. torchrun's own ChildFailedError only says a worker failed: the
    worker's exception is the cause when the output has it.
    """
    streams: dict[str, list[tuple[int, str]]] = {}
    for number, raw in enumerate(lines):
        tagged = _LINE_PREFIX.match(raw)
        tag, body = (tagged["tag"], raw[tagged.end() :]) if tagged else ("", raw)
        streams.setdefault(tag, []).append((number, body))
    found = sorted(
        (hit for tag, stream in streams.items() for hit in _tracebacks(tag, stream)),
        key=lambda hit: hit.end,
    )
    if not found:
        return None
    workers = [hit for hit in found if _TORCHRUN_FAILED not in hit.message.split(":")[0]]
    if not workers:
        found[-1].message = _TORCHRUN_FAILED + _torchrun_root(lines[found[-1].end :])
        return found[-1]
    best = workers[-1]
    if best.tag:
        best.message += f" ({best.tag})"
    return best


_ROOT_FIELD = re.compile(r"\s*(?P<key>rank|exitcode)\s*:\s*(?P<value>-?\d+)")


def _torchrun_root(summary: list[str]) -> str:
    """The rank that failed and its exit code, from torchrun's "Root Cause" block ("" if none)."""
    fields: dict[str, str] = {}
    roots = [n for n, line in enumerate(summary) if "Root Cause" in line]
    for line in summary[roots[-1] if roots else 0 :]:
        field = _ROOT_FIELD.match(line)
        if field is not None:
            fields.setdefault(field["key"], field["value"])
    if "rank" not in fields:
        return ""
    code = fields.get("exitcode")
    return f": rank {fields['rank']} failed" + (f" with exit code {code}" if code else "")


def _tracebacks(tag: str, stream: list[tuple[int, str]]) -> list[FoundException]:
    """Every complete traceback in one stream of lines: header, frames, exception line."""
    found: list[FoundException] = []
    start: int | None = None
    for pos, (number, body) in enumerate(stream):
        if body.rstrip() == _TB_HEADER:
            start = pos
            continue
        text = body.strip()
        # frames are indented; an unindented line that is no exception is other output
        if start is None or not text or body[0].isspace() or not _EXCEPTION_LINE.fullmatch(text):
            continue
        frames = [_clip(b) for _, b in stream[start : pos + 1] if b.strip()]
        found.append(FoundException(_clip(text), frames[-TAIL_LINES:], number, tag))
        start = None
    return found


def _clip(line: str) -> str:
    """One output line, cut to a length a report can show."""
    line = line.rstrip()
    return line if len(line) <= _LINE_CHARS else line[: _LINE_CHARS - 1] + "…"


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    tmp = run_dir / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / RESULT)


def fail(
    writer: EventWriter,
    run_dir: Path,
    base: dict[str, Any],
    error: dict[str, Any],
    *,
    emit_error: bool = True,
    step: int | None = None,
    checkpoint: str | None = None,
) -> int:
    """Report a failed run: error event (unless the recipe wrote one), result event, result.json."""
    if emit_error:
        writer.emit("error", **error)
    writer.emit("result", status="failed", step=step, final={}, best={}, checkpoint=checkpoint)
    write_result(
        run_dir,
        {
            **base,
            "status": "failed",
            "step": step,
            "final": {},
            "best": {},
            "checkpoint": checkpoint,
            "error": {k: error.get(k) for k in ("kind", "message", "traceback")},
            "ended_at": utc_now_iso(),
        },
    )
    return EXIT_FAILED


def supervise(run_dir: Path) -> int:
    """Run one attempt of the run in `run_dir`; returns the agent's exit code."""
    events = run_dir / EVENTS
    start_offset = events.stat().st_size if events.exists() else 0
    # a result.json from an earlier attempt (e.g. the pause before this resume) would read
    # as this attempt's end to anyone looking before we finish
    with contextlib.suppress(PermissionError):  # the host removes it first in any case
        (run_dir / RESULT).unlink(missing_ok=True)
    writer = EventWriter(run_dir)
    forwarder = SignalForwarder()
    base: dict[str, Any] = {"run_id": run_dir.name, "recipe": None, "exit_code": None}
    try:
        spec = load_spec(run_dir)
    except SpecError as exc:
        return fail(
            writer,
            run_dir,
            base,
            {"kind": "exception", "message": f"invalid spec: {exc}", "traceback": []},
        )
    base.update(run_id=spec.run_id, recipe=spec.name)
    command = build_command(spec, run_dir)
    # arguments only: a declared recipe's secrets travel in the environment, never logged
    writer.emit("log", level="info", message=f"recipe {spec.name}: {' '.join(command)}")
    if forwarder.received is not None:  # told to stop before anything started
        return _stopped_before_start(writer, run_dir, base)

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    if spec.nproc > 1:
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TORCHRUN_SHUTDOWN_S)
        env.update(rendezvous_env(env))  # MASTER_ADDR/PORT and socket interfaces: loopback
    stdout_path = run_dir / STDOUT
    stdout_offset = stdout_path.stat().st_size if stdout_path.exists() else 0
    tail = EventTail(events, start_offset)
    follow = _Follow.start(spec.declared, writer, stdout_path, stdout_offset)
    if spec.declared is not None:
        env.update(spec.declared.env)
        writer.emit(
            "started",
            total=spec.declared.total,
            world_size=spec.nproc,
            params=spec.params,
            **({} if spec.resume_from else {"step": 0}),
        )
    started = time.monotonic()
    secrets = secret_patterns(spec.declared.secrets if spec.declared is not None else ())
    copier: threading.Thread | None = None
    with stdout_path.open("ab", buffering=0) as out:
        try:
            proc = subprocess.Popen(
                command,
                # with secrets, through the agent, which masks them (output_mask.py)
                stdout=subprocess.PIPE if secrets else out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=spec.declared.cwd if spec.declared is not None else None,
                start_new_session=True,  # its own process group, so a signal reaches all of it
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            return fail(
                writer,
                run_dir,
                base,
                {"kind": "exception", "message": f"cannot start recipe: {exc}", "traceback": []},
            )
        if secrets and proc.stdout is not None:
            copier = copy_masked(proc.stdout, out, secrets)
        forwarder.proc = proc
        forwarder.forward()  # a signal that came while Popen ran
        returncode = _wait(proc, writer, tail, spec, follow)
        if copier is not None:
            # the last output; a child it left behind may hold the pipe: do not wait long
            copier.join(COPY_GRACE_S)
    if follow is not None:
        follow.finish()
    tail.poll()
    base.update(exit_code=returncode, duration_s=round(time.monotonic() - started, 3))

    if follow is not None and tail.result is None:
        return _declared_end(writer, run_dir, base, follow, forwarder, returncode, stdout_offset)
    if tail.result is not None:
        res = {k: v for k, v in tail.result.items() if k not in ("ts", "type")}
        status = res.get("status", "failed")
        write_result(
            run_dir,
            {
                **base,
                **res,
                "error": tail.error and _error_fields(tail.error),
                "ended_at": utc_now_iso(),
            },
        )
        return EXIT_CODES.get(status, EXIT_FAILED)
    if forwarder.received is not None and tail.error is None:
        # told to stop, and it ended before the recipe could checkpoint (e.g. in start-up)
        return _stopped_before_start(
            writer, run_dir, base, step=tail.step, checkpoint=tail.checkpoint
        )
    if tail.error is not None:
        error = _error_fields(tail.error)
        if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
            error["kind"] = "oom"
        return fail(
            writer,
            run_dir,
            base,
            error,
            emit_error=False,
            step=tail.step,
            checkpoint=tail.checkpoint,
        )
    error = classify_failure(returncode, read_tail(stdout_path, stdout_offset))
    return fail(writer, run_dir, base, error, step=tail.step, checkpoint=tail.checkpoint)


@dataclass
class _Follow:
    """What the agent watches for a declared recipe: its output, checkpoints, time limit."""

    job: DeclaredJob
    output: OutputFollower
    checkpoints: CheckpointWatcher | None
    writer: EventWriter
    timed_out: bool = False

    @classmethod
    def start(
        cls, job: DeclaredJob | None, writer: EventWriter, stdout: Path, offset: int
    ) -> _Follow | None:
        if job is None:
            return None
        watcher = None
        if job.recipe.resume is not None:
            watcher = CheckpointWatcher(job.checkpoint_root, job.recipe.resume.checkpoints)
            watcher.prime()
        return cls(job, OutputFollower(job, writer, stdout, offset), watcher, writer)

    def tick(self) -> None:
        self.output.poll()
        if self.checkpoints is not None:
            self.checkpoints.poll(self.output.step, self.writer)

    def finish(self) -> None:
        self.output.poll(final=True)
        if self.checkpoints is not None:
            self.checkpoints.poll(self.output.step, self.writer, final=True)

    @property
    def checkpoint(self) -> str | None:
        if self.checkpoints is None:
            return None
        return self.checkpoints.latest or self.job.resumed_from


DECLARED_TICK_S = 0.5  # how often a declared recipe's output is read
KILL_AFTER_S = 30.0  # from the time limit's SIGTERM to SIGKILL


def _wait(
    proc: subprocess.Popen[bytes],
    writer: EventWriter,
    tail: EventTail,
    spec: Spec,
    follow: _Follow | None,
) -> int:
    """Wait for the recipe, with a heartbeat (and the last step seen) every heartbeat_s.

    For a declared recipe also read its output every DECLARED_TICK_S and enforce its time
    limit: SIGTERM to its process group, SIGKILL KILL_AFTER_S later.
    """
    every = spec.heartbeat_s
    tick = min(every, DECLARED_TICK_S) if follow is not None else every
    started = time.monotonic()
    deadline = started + spec.time_limit_s if spec.time_limit_s else None
    next_beat = started
    while True:
        now = time.monotonic()
        if follow is not None:
            follow.tick()
            if deadline is not None and now >= deadline:
                _signal_group(proc, signal.SIGTERM if not follow.timed_out else signal.SIGKILL)
                deadline = now + KILL_AFTER_S
                follow.timed_out = True
        if now >= next_beat:
            tail.poll()
            writer.emit("heartbeat", **({"step": tail.step} if tail.step is not None else {}))
            next_beat = now + every
        try:
            return proc.wait(timeout=tick)
        except subprocess.TimeoutExpired:
            continue


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _declared_end(
    writer: EventWriter,
    run_dir: Path,
    base: dict[str, Any],
    follow: _Follow,
    forwarder: SignalForwarder,
    returncode: int,
    stdout_offset: int,
) -> int:
    """The result of a declared recipe, which writes no result event of its own."""
    step, checkpoint = follow.output.step, follow.checkpoint
    if follow.timed_out:
        limit = follow.job.recipe.time_limit_s or 0
        lines = read_tail(run_dir / STDOUT, stdout_offset).splitlines()[-TAIL_LINES:]
        error = {
            "kind": "timeout",
            "message": f"time limit reached ({limit:g}s); the command was stopped",
            "traceback": lines,
        }
        return fail(writer, run_dir, base, error, step=step, checkpoint=checkpoint)
    if forwarder.received is not None:
        if read_control(run_dir) == "pause" and checkpoint is not None:
            return _ended(writer, run_dir, base, follow, "paused")
        if checkpoint is None:
            return _stopped_before_start(writer, run_dir, base, step=step)
        return _ended(writer, run_dir, base, follow, "stopped")
    if returncode == 0:
        return _ended(writer, run_dir, base, follow, "succeeded")
    error = classify_failure(returncode, read_tail(run_dir / STDOUT, stdout_offset))
    return fail(writer, run_dir, base, error, step=step, checkpoint=checkpoint)


def _ended(
    writer: EventWriter, run_dir: Path, base: dict[str, Any], follow: _Follow, status: str
) -> int:
    fields = {
        "status": status,
        "step": follow.output.step,
        "final": follow.output.final,
        "best": follow.output.best,
        "checkpoint": follow.checkpoint,
    }
    writer.emit("result", **fields)
    write_result(run_dir, {**base, **fields, "error": None, "ended_at": utc_now_iso()})
    return EXIT_CODES[status]


def _error_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("kind", "message", "traceback")}


def _stopped_before_start(
    writer: EventWriter,
    run_dir: Path,
    base: dict[str, Any],
    *,
    step: int | None = None,
    checkpoint: str | None = None,
) -> int:
    """A stop that arrived before the recipe could checkpoint: `stopped`, nothing to resume."""
    writer.emit("log", level="warning", message="stopped before the recipe could save a checkpoint")
    writer.emit("result", status="stopped", step=step, final={}, best={}, checkpoint=checkpoint)
    write_result(
        run_dir,
        {
            **base,
            "status": "stopped",
            "step": step,
            "final": {},
            "best": {},
            "checkpoint": checkpoint,
            "error": None,
            "ended_at": utc_now_iso(),
        },
    )
    return EXIT_STOPPED


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m assistant.jobs.agent RUN_DIR", file=sys.stderr)
        return EXIT_FAILED
    run_dir = Path(args[0]).resolve()
    if not run_dir.is_dir():
        print(f"agent: run dir {run_dir} does not exist", file=sys.stderr)
        return EXIT_FAILED
    (run_dir / CHECKPOINTS).mkdir(exist_ok=True)
    return supervise(run_dir)


if __name__ == "__main__":
    sys.exit(main())
