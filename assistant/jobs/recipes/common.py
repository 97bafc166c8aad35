"""What every training recipe shares: the command line, ranks, stop signals, RNG, checkpoints.

The recipes stay flat and nanoGPT-shaped; the parts that must behave the same in each
(exact resume, keep-last pruning, pause on SIGTERM, reporting only from rank 0) live here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from assistant.jobs.protocol import (
    ARTIFACTS,
    CHECKPOINTS,
    EXIT_PAUSED,
    EXIT_STOPPED,
    EventWriter,
    read_control,
)
from assistant.jobs.recipes import ParamError, RecipeInfo, Value, resolve_params

CKPT_PREFIX = "ckpt_"
CKPT_SUFFIX = ".pt"
TRACEBACK_LINES = 20


# ----------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class Args:
    """A parsed recipe command line."""

    run_dir: Path
    config: dict[str, Value]  # every parameter, defaults filled in
    resume: str | None  # checkpoint path, relative to run_dir (or absolute)


def parse_args(info: RecipeInfo, argv: Sequence[str]) -> Args:
    """Read `--run-dir DIR --key=value ... [--resume=PATH]`, typed by the registry.

    :raises ParamError: an unknown key, a bad value, or a missing --run-dir.
    """
    run_dir: str | None = None
    resume: str | None = None
    given: dict[str, str] = {}
    items = list(argv)
    while items:
        arg = items.pop(0)
        if not arg.startswith("--"):
            raise ParamError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if key in ("run-dir", "run_dir", "resume") and not eq:
            if not items:
                raise ParamError(f"--{key} needs a value")
            value = items.pop(0)
        elif not eq:
            raise ParamError(f"{arg!r} needs a value: --{key}=VALUE")
        if key in ("run-dir", "run_dir"):
            run_dir = value
        elif key == "resume":
            resume = value or None
        else:
            if key in given:
                raise ParamError(f"--{key} given twice")
            given[key] = value
    if run_dir is None:
        raise ParamError("--run-dir is required")
    if resume is not None and not info.supports_resume:
        raise ParamError(f"recipe {info.name!r} cannot resume")
    return Args(Path(run_dir).resolve(), resolve_params(info, given), resume)


# ----------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a torchrun launch (world_size 1 without torchrun)."""

    rank: int
    local_rank: int
    world_size: int
    control: Any  # a gloo process group for CPU-side agreement, or None alone

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up; nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 0, 1, None)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    # A gloo group for flags and RNG states: agreeing on "stop now" must not wait on
    # the GPU stream, so it never goes through nccl.
    control = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world, control)


def agree(d: Dist, value: bool) -> bool:
    """Rank 0's answer on every rank."""
    if d.world_size == 1:
        return value
    t = torch.tensor([1 if value else 0], dtype=torch.int32)
    dist.broadcast(t, src=0, group=d.control)
    return bool(t.item())


def batch_seed(*key: object) -> int:
    """A stable 63-bit seed for one batch; Python's hash() is salted per process."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big") >> 1


def close_distributed(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.barrier(group=d.control)
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when there is one; under torchrun each rank takes cuda:LOCAL_RANK.

    :raises ParamError: cuda asked for but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParamError("device=cuda but no CUDA device is visible")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def fit_threads_to_cpu_quota() -> None:
    """Use no more intra-op threads than the container's CPU quota (cgroup v2 cpu.max).

    torch sizes its pool by the host's cores; under a smaller quota its OpenMP threads
    get throttled mid-spin and a step slows down several times. An explicit
    OMP_NUM_THREADS (torchrun sets 1) wins.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        budget = max(1, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2, or "max": no quota
        return
    if budget < torch.get_num_threads():
        torch.set_num_threads(budget)


def any_rank(d: Dist, flag: bool) -> bool:
    """True when any rank says so, so all ranks take the same branch."""
    if d.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return bool(t.item())


# ----------------------------------------------------------------------------- stop signals


class StopFlag:
    """SIGTERM/SIGINT only raise a flag; the loop checkpoints at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def stop_status(run_dir: Path) -> tuple[str, int]:
    """The result status and exit code for a stop: what control.json asked for."""
    if read_control(run_dir) == "pause":
        return "paused", EXIT_PAUSED
    return "stopped", EXIT_STOPPED


# ----------------------------------------------------------------------------- reporting


def _num(value: Any) -> str:
    """A number as a log line shows it: four significant digits for floats."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _progress_line(f: dict[str, Any]) -> str:
    parts = [f"step {f.get('step')}/{f.get('total')}"]
    parts += [f"{k} {_num(f[k])}" for k in ("loss", "lr") if f.get(k) is not None]
    line = " ".join(parts)
    if f.get("tokens_per_s") is not None:
        line += f", {f['tokens_per_s']:.0f} tok/s"
    if f.get("mfu") is not None:
        line += f", mfu {f['mfu']:.1%}"
    if f.get("elapsed_s") is not None:
        line += f", {f['elapsed_s']:.1f}s elapsed"
    return line


def _started_line(f: dict[str, Any]) -> str:
    params = f.get("params") or {}
    head = f"resumed from {f['resumed_from']} at" if f.get("resumed_from") else "started:"
    line = f"{head} step {f.get('step')}/{f.get('total')} on {f.get('device')}"
    if f.get("world_size", 1) > 1:
        line += f" x {f['world_size']} processes"
    if "n_params" in params:
        line += f", {params['n_params']:,} parameters"
    return line


def _checkpoint_line(f: dict[str, Any]) -> str:
    notes = ["best"] if f.get("best") else []
    notes += [f"{k} {_num(f[k])}" for k in ("val_loss", "accuracy") if f.get(k) is not None]
    return f"checkpoint step {f.get('step')}: {f.get('path')}" + (
        f" ({', '.join(notes)})" if notes else ""
    )


def _result_line(f: dict[str, Any]) -> str:
    final = {k: v for k, v in (f.get("final") or {}).items() if v is not None}
    shown = ", ".join(f"{k} {_num(v)}" for k, v in final.items())
    return f"{f.get('status')} at step {f.get('step')}" + (f": {shown}" if shown else "")


def _log_line(f: dict[str, Any]) -> str:
    level = f.get("level", "info")
    return str(f.get("message")) if level == "info" else f"{level}: {f.get('message')}"


def _metric_line(f: dict[str, Any]) -> str:
    return f"eval step {f.get('step')}: {f.get('name')} {_num(f.get('value'))}"


_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "log": _log_line,
    "started": _started_line,
    "progress": _progress_line,
    "metric": _metric_line,
    "checkpoint": _checkpoint_line,
    "result": _result_line,
}


def describe(type_: str, fields: dict[str, Any]) -> str | None:
    """The human-readable output line for an event, or None for one that has none.

    Errors have none: the interpreter prints their traceback to the same output. ASCII
    only, so a run image whose locale cannot encode more never fails on a log line.
    """
    line = _LINES.get(type_)
    return None if line is None else line(fields)


class Reporter:
    """Events from rank 0 only; other ranks report nothing but their own errors.

    Each event is also printed as a plain line: events.jsonl is for the host, while
    stdout.log (the recipe's output, which the agent keeps) is what `/run logs` and a
    failed run's report show a person.
    """

    def __init__(self, run_dir: Path, d: Dist) -> None:
        self.run_dir = run_dir
        self.rank = d.rank
        run_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventWriter(run_dir) if d.is_main else None

    def emit(self, type_: str, **fields: Any) -> None:
        if self._writer is None:
            return
        line = describe(type_, fields)
        if line is not None:
            # before the event: whoever sees the event's step finds its line already there
            print(line, flush=True)
        self._writer.emit(type_, **fields)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Report an exception as an `error` event (any rank), then let it propagate."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                raise
            oom = isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError)
            lines = traceback.format_exc().rstrip().splitlines()[-TRACEBACK_LINES:]
            writer = self._writer or EventWriter(self.run_dir)
            fields: dict[str, Any] = {"rank": self.rank} if self.rank else {}
            writer.emit(
                "error",
                kind="oom" if oom else "exception",
                message=f"{type(exc).__name__}: {exc}",
                traceback=lines,
                **fields,
            )
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def write_json(path: Path, obj: Any) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def artifact(run_dir: Path, name: str) -> Path:
    return run_dir / ARTIFACTS / name


# ----------------------------------------------------------------------------- RNG


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every RNG a step may touch, in plain types so `torch.load(weights_only=True)` reads it."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, cached)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def gather_rng(d: Dist, device: torch.device) -> list[dict[str, Any]]:
    """RNG states of all ranks (collective: every rank must call it), rank order."""
    mine = capture_rng(device)
    if d.world_size == 1:
        return [mine]
    states: list[Any] = [None] * d.world_size
    dist.all_gather_object(states, mine, group=d.control)
    return states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """`checkpoints/ckpt_<step>.pt`: written atomically, the last N kept plus the best."""

    def __init__(self, run_dir: Path, keep_last: int) -> None:
        self.run_dir = run_dir
        self.dir = run_dir / CHECKPOINTS
        self.keep_last = keep_last

    def relpath(self, step: int) -> str:
        return f"{CHECKPOINTS}/{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"

    def save(self, state: dict[str, Any], step: int, best_step: int | None) -> str:
        """Write the checkpoint for `step`, prune old ones; returns its run-dir path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rel = self.relpath(step)
        path = self.run_dir / rel
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        best = Path(self.relpath(best_step)).name if best_step is not None else None
        self._prune(best)
        return rel

    def _prune(self, best: str | None) -> None:
        # Newest first by write time: after resuming from an older checkpoint, the files
        # of the abandoned timeline are the old ones, whatever their step numbers say.
        files = sorted(
            self.dir.glob(f"{CKPT_PREFIX}*{CKPT_SUFFIX}"),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
            reverse=True,
        )
        for i, p in enumerate(files):
            if i >= self.keep_last and p.name != best:
                p.unlink(missing_ok=True)

    def load(self, path: str) -> dict[str, Any]:
        """Read a checkpoint onto the CPU (plain tensors and containers only; no pickled code).

        `load_state_dict` then copies onto each parameter's device, and the RNG states
        must stay CPU tensors anyway.

        :raises FileNotFoundError: no such checkpoint.
        """
        full = Path(path) if Path(path).is_absolute() else self.run_dir / path
        state: dict[str, Any] = torch.load(full, map_location="cpu", weights_only=True)
        return state


def check_resume_config(
    saved: dict[str, Value], config: dict[str, Value], keys: Sequence[str]
) -> None:
    """The model's shape must match the checkpoint's; everything else may change.

    :raises ParamError: a shape parameter differs from the checkpoint.
    """
    diff = [
        f"{k}={config[k]} (checkpoint has {saved[k]})" for k in keys if saved.get(k) != config[k]
    ]
    if diff:
        raise ParamError("cannot resume with a different model shape: " + ", ".join(diff))


# ----------------------------------------------------------------------------- odds and ends


def allocate_ballast(mb: int) -> np.ndarray[Any, Any] | None:
    """The alloc_mb test knob: really touch the pages, so a memory limit bites."""
    if mb <= 0:
        return None
    return np.ones(mb * 1024 * 1024, dtype=np.uint8)


def maybe_fail(fail_at_step: int, step: int) -> None:
    """The fail_at_step test knob.

    :raises RuntimeError: always, at step `fail_at_step`.
    """
    if fail_at_step and step == fail_at_step:
        raise RuntimeError(f"fail_at_step={fail_at_step}: injected failure at step {step}")


def maybe_sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def cli_main(
    info: RecipeInfo, train: Callable[[Args], int], argv: Sequence[str] | None = None
) -> int:
    """Parse the command line and run `train(args) -> exit code`; bad args exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage(info))
        return 0
    try:
        args = parse_args(info, argv)
    except ParamError as exc:
        print(f"{info.module}: error: {exc}", file=sys.stderr)
        return 2
    return train(args)


def usage(info: RecipeInfo) -> str:
    lines = [
        f"python -m {info.module} --run-dir DIR [--key=value ...] [--resume=CHECKPOINT]",
        f"{info.summary}",
        "",
        *(f"  --{p.describe()}" for p in info.params),
    ]
    return "\n".join(lines)
