"""The GPU check (`scripts/gpu-check`): the project's own code on this machine's GPU, reported.

    scripts/gpu-check [--cpu] [--no-compile] [--keep DIR]

Four parts, each a real run of what the service runs, each one line of the report:

- nvml: the GPU lines `/status` shows (`HostStats.status_lines`);
- throughput: the gpt recipe at about 100M parameters in bf16 with `torch.compile` for a
  fixed number of steps, after a probe that SDPA's flash kernel takes the recipe's
  attention shapes; tokens/s and MFU are the recipe's own, from its progress events (MFU
  against the peak it looked up by the GPU's name, assistant/jobs/recipes/peaks.py);
- pause/resume: the recipe paused by the run-dir protocol (control.json, then SIGTERM;
  it exits EXIT_PAUSED leaving a checkpoint) and resumed from that checkpoint, which must
  start at the saved step;
- process runner: `ProcessRunner.launch` with one GPU running a short recipe to success.

`--cpu` runs the same parts at tiny sizes on the CPU (float32, no compile), so the tests
keep the script working where there is no GPU. Without a GPU and without `--cpu` it says so
in one line and exits 2. It needs only a Python with torch, numpy and psutil (nvidia-ml-py
for the NVML view); no Docker, no network. Nothing imports torch before the preflight has
named what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import assistant
from assistant.jobs.protocol import CONTROL, EVENTS, EXIT_OK, EXIT_PAUSED, RESULT, SPEC, STDOUT
from assistant.jobs.recipes import RECIPES, Value, to_cli_args

CODE_ROOT = Path(assistant.__file__).resolve().parents[1]
GPT = RECIPES["gpt"]
NEEDED = ("torch", "numpy", "psutil")
EXIT_CANNOT_RUN = 2


@dataclass(frozen=True)
class Sizes:
    """What each part runs: a GPU's figures, or tiny ones for a CPU."""

    device: str  # the recipe's device parameter: cuda | cpu
    bench: dict[str, Value]  # ~100M parameters on a GPU
    pause: dict[str, Value]  # paused once a progress event reaches `pause_at`
    pause_at: int
    runner: dict[str, Value]
    bench_timeout_s: float
    part_timeout_s: float


_QUIET = {"eval_iters": 1, "checkpoint_every": 0, "keep_last": 1}

GPU_SIZES = Sizes(
    device="cuda",
    # 14 blocks of width 768: 100M parameters; 64k tokens a step in micro-batches that fit
    # a 24 GB card. Progress every 20 steps: the first window holds the compile, the
    # other four are the steady rate.
    bench={
        **_QUIET,
        "device": "cuda",
        "steps": 100,
        "log_every": 20,
        "eval_every": 100,
        "n_layer": 14,
        "n_head": 12,
        "n_embd": 768,
        "block_size": 1024,
        "batch_size": 16,
        "grad_accum": 4,
        "dtype": "auto",
        "compile": True,
        "lr": 6e-4,
        "min_lr": 6e-5,
        "warmup_steps": 10,
    },
    pause={
        **_QUIET,
        "device": "cuda",
        "steps": 200,
        "log_every": 5,
        "eval_every": 200,
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 256,
        "block_size": 256,
        "batch_size": 16,
        "sleep_per_step": 0.02,
    },
    pause_at=20,
    runner={**_QUIET, "device": "cuda", "steps": 20, "log_every": 10, "eval_every": 20},
    bench_timeout_s=360,
    part_timeout_s=120,
)

CPU_SIZES = Sizes(
    device="cpu",
    bench={
        **_QUIET,
        "device": "cpu",
        "steps": 30,
        "log_every": 10,
        "eval_every": 30,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
        "block_size": 64,
        "batch_size": 8,
        "dtype": "float32",
        "compile": False,
    },
    pause={
        **_QUIET,
        "device": "cpu",
        "steps": 100,
        "log_every": 5,
        "eval_every": 100,
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 32,
        "batch_size": 4,
        "sleep_per_step": 0.02,
    },
    pause_at=10,
    runner={
        **_QUIET,
        "device": "cpu",
        "steps": 20,
        "log_every": 10,
        "eval_every": 20,
        "n_layer": 1,
        "n_embd": 32,
        "block_size": 32,
        "batch_size": 4,
    },
    bench_timeout_s=120,
    part_timeout_s=120,
)


class PartFailed(Exception):
    """A part did not do what it must; the message is its report line."""


@dataclass(frozen=True)
class Part:
    name: str
    ok: bool
    detail: str
    more: list[str] = field(default_factory=list)  # further lines, indented

    def lines(self) -> list[str]:
        head = f"{self.name}: {'ok' if self.ok else 'FAILED'} · {self.detail}"
        return [head, *(f"  {line}" for line in self.more)]


# ----------------------------------------------------------------------------- run dirs


def read_events(run_dir: Path, type_: str) -> list[dict[str, Any]]:
    """The run's events of one type; a line still being written is skipped."""
    try:
        text = (run_dir / EVENTS).read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == type_:
            found.append(event)
    return found


def last_event(run_dir: Path, type_: str) -> dict[str, Any]:
    """:raises PartFailed: the run wrote no such event."""
    events = read_events(run_dir, type_)
    if not events:
        raise PartFailed(f"no {type_} event{why_not(run_dir)}")
    return events[-1]


def why_not(run_dir: Path) -> str:
    """The last line the run printed (usually the exception), for a failure's line."""
    for name in (STDOUT, "agent.log"):
        try:
            lines = (run_dir / name).read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            continue
        if lines:
            return f"; its output ends: {lines[-1].strip()[:200]}"
    return ""


def recipe_env(sizes: Sizes) -> dict[str, str]:
    """This environment with the project's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(CODE_ROOT), env.get("PYTHONPATH"))))
    if sizes.device == "cpu":
        # tiny models: one thread each, so parts on a small shared box do not spin
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_recipe(
    sizes: Sizes, run_dir: Path, params: dict[str, Value], resume: str | None = None
) -> subprocess.Popen[bytes]:
    """The gpt recipe as its own process, its output appended to the run's stdout.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", GPT.module, "--run-dir", str(run_dir)]
    argv += to_cli_args(GPT, params)
    if resume is not None:
        argv.append(f"--resume={resume}")
    with open(run_dir / STDOUT, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=recipe_env(sizes), cwd=run_dir
        )


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float, run_dir: Path) -> int:
    """:raises PartFailed: it did not end in time (it is killed)."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise PartFailed(
            f"the recipe did not end within {timeout_s:.0f} s{why_not(run_dir)}"
        ) from None


def wait_until(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, run_dir: Path
) -> None:
    """:raises PartFailed: the recipe ended or the time ran out first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise PartFailed(f"the recipe ended early (exit {proc.returncode}){why_not(run_dir)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise PartFailed(f"nothing to pause within {timeout_s:.0f} s{why_not(run_dir)}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- parts


def nvml_part(on_gpu: bool) -> Part:
    """NVML's view, in /status's own lines: a GPU host whose NVML sees none fails."""
    from assistant.hoststats import HostStats

    host = HostStats()
    try:
        gpus = host.gpus()
        lines = host.status_lines(gpus)
    finally:
        host.aclose()
    if on_gpu and not gpus:
        return Part("nvml", False, f"{lines[0]}: /status will show no GPU")
    return Part("nvml", True, lines[0], lines[1:])


def flash_probe(params: dict[str, Value]) -> str:
    """Whether SDPA's flash kernel takes the recipe's attention shapes (it is SDPA's first
    choice when it does); the dispatcher's warnings say why not when it does not."""
    import warnings

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    n_head, n_embd = int(params["n_head"]), int(params["n_embd"])
    shape = (int(params["batch_size"]), n_head, int(params["block_size"]), n_embd // n_head)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    q = torch.randn(shape, device="cuda", dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                scaled_dot_product_attention(q, q, q, is_causal=True)
            torch.cuda.synchronize()
        except RuntimeError as exc:
            reasons = "; ".join(str(w.message).splitlines()[0] for w in caught) or str(exc)
            return f"flash attention NOT usable ({reasons[:200]})"
        finally:
            del q
            torch.cuda.empty_cache()
    return "SDPA flash attention"


def bench_part(sizes: Sizes, work: Path) -> Part:
    """The recipe's own figures over a fixed number of steps, compile window left out."""
    params = sizes.bench
    attention = flash_probe(params) if sizes.device == "cuda" else "SDPA (CPU kernels)"
    run_dir = work / "throughput"
    t0 = time.monotonic()
    code = wait_exit(start_recipe(sizes, run_dir, params), sizes.bench_timeout_s, run_dir)
    took = time.monotonic() - t0
    if code != EXIT_OK:
        raise PartFailed(f"the recipe exited {code}{why_not(run_dir)}")
    started = last_event(run_dir, "started")
    progress = read_events(run_dir, "progress")
    steady = progress[1:]  # the first window holds the compile and the first steps' warm-up
    if not steady:
        raise PartFailed(f"{len(progress)} progress event(s): too few for a steady rate")
    tps = statistics.median(float(e["tokens_per_s"]) for e in steady)
    info = started["params"]
    steps = int(params["steps"])
    tokens = int(info["batch_size"]) * int(info["block_size"]) * int(info["grad_accum"])
    compiled = "torch.compile" if params.get("compile") else "eager"
    detail = (
        f"gpt {info['n_params'] / 1e6:.1f}M parameters, {info['dtype']}, {compiled},"
        f" {attention}; {steps} steps of {tokens:,} tokens, {took:.1f} s wall"
        f" · {tps:,.0f} tokens/s after the first {info['log_every']} steps"
        f" · {mfu_text(started, steady)}"
    )
    return Part("throughput", "NOT usable" not in attention, detail)


def mfu_text(started: dict[str, Any], steady: list[dict[str, Any]]) -> str:
    peak = started.get("peak_flops")
    name = started.get("device_name") or started.get("device")
    if started.get("device") == "cpu":
        return "MFU not given: no peak for a CPU"
    if not peak:
        return f"MFU not given: no peak known for {name!r} (assistant/jobs/recipes/peaks.py)"
    mfu = statistics.median(float(e["mfu"]) for e in steady)
    return f"MFU {mfu:.1%} of {float(peak) / 1e12:,.0f} TFLOP/s ({name})"


def pause_part(sizes: Sizes, work: Path) -> Part:
    """Pause by the protocol, resume from the checkpoint it left: the same step."""
    params, run_dir = sizes.pause, work / "pause"
    proc = start_recipe(sizes, run_dir, params)

    def far_enough() -> bool:
        return any(e["step"] >= sizes.pause_at for e in read_events(run_dir, "progress"))

    wait_until(proc, far_enough, sizes.part_timeout_s, run_dir)
    (run_dir / CONTROL).write_text(json.dumps({"action": "pause"}))
    proc.send_signal(signal.SIGTERM)
    code = wait_exit(proc, sizes.part_timeout_s, run_dir)
    paused = last_event(run_dir, "result")
    if code != EXIT_PAUSED or paused["status"] != "paused" or not paused.get("checkpoint"):
        raise PartFailed(
            f"asked to pause, it exited {code} with result {paused['status']!r}"
            f" and checkpoint {paused.get('checkpoint')!r}{why_not(run_dir)}"
        )
    saved, checkpoint = int(paused["step"]), str(paused["checkpoint"])
    (run_dir / CONTROL).unlink()  # as the host does before a resume
    code = wait_exit(
        start_recipe(sizes, run_dir, params, resume=checkpoint), sizes.part_timeout_s, run_dir
    )
    resumed = last_event(run_dir, "started")
    done = last_event(run_dir, "result")
    detail = (
        f"paused at step {saved} (exit {EXIT_PAUSED}, {checkpoint}) · resumed at step"
        f" {resumed['step']} · {done['status']} at step {done['step']}"
    )
    ok = (
        code == EXIT_OK
        and resumed.get("resumed_from") == checkpoint
        and resumed["step"] == saved
        and done["status"] == "succeeded"
        and done["step"] == params["steps"]
    )
    return Part("pause/resume", ok, detail + ("" if ok else why_not(run_dir)))


async def runner_part(sizes: Sizes, work: Path) -> Part:
    """The process runner's public API, as the run manager drives it, with one GPU."""
    from assistant.runs.process_runner import ProcessRunner
    from assistant.runs.runner import LaunchRequest

    run_id = "gpu-check-runner"
    run_dir = work / run_id
    run_dir.mkdir(parents=True)
    spec = {"run_id": run_id, "recipe": GPT.name, "params": sizes.runner, "nproc": 1}
    (run_dir / SPEC).write_text(json.dumps({**spec, "resume_from": None, "heartbeat_s": 1}))
    gpus = (0,) if sizes.device == "cuda" else ()
    runner = ProcessRunner(work)
    request = LaunchRequest(run_id=run_id, recipe=GPT.name, run_dir=run_dir, image="", gpus=gpus)
    t0 = time.monotonic()
    handle = await runner.launch(request)
    try:
        while (state := await runner.state(handle)).running:
            if time.monotonic() - t0 > sizes.part_timeout_s:
                await runner.kill(handle)
                raise PartFailed(f"not done within {sizes.part_timeout_s:.0f} s{why_not(run_dir)}")
            await asyncio.sleep(0.2)
        took = time.monotonic() - t0
        await runner.remove(handle)
    finally:
        await runner.aclose()
    code = state.exit.exit_code if state.exit is not None else None
    try:
        result = json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        raise PartFailed(f"exit {code} and no {RESULT}{why_not(run_dir)}") from None
    device = str(last_event(run_dir, "started").get("device"))
    shown = f"gpus={len(gpus)} (CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))!r})"
    detail = f"{shown} · gpt on {device} · {result.get('status')} at step {result.get('step')}"
    detail += f" in {took:.1f} s"
    ok = code == EXIT_OK and result.get("status") == "succeeded" and device.startswith(sizes.device)
    return Part("process runner", ok, detail + ("" if ok else why_not(run_dir)))


# ----------------------------------------------------------------------------- the report


def run_part(name: str, body: Callable[[], Part]) -> Part:
    """One part; what it raises is its failure line, and the other parts still run."""
    try:
        return body()
    except PartFailed as exc:
        return Part(name, False, str(exc))
    except Exception as exc:  # a part's own bug must not hide the other parts' figures
        return Part(name, False, f"{type(exc).__name__}: {exc}")


def preflight(want_gpu: bool) -> str | None:
    """Why this Python cannot run the check, in one line; None when it can."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"gpu-check: {sys.executable} lacks {', '.join(missing)}; install them into it"
            " or point PYTHON= at a Python that has them"
        )
    import torch

    if want_gpu and not torch.cuda.is_available():
        return (
            f"gpu-check: no CUDA GPU visible to {sys.executable} (torch {torch.__version__});"
            " --cpu runs the CPU check"
        )
    return None


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu-check",
        description="Check this machine's GPU with the project's own code and print a report.",
    )
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (for CI)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the run dirs in DIR")
    parser.add_argument(
        "--no-compile", action="store_true", help="measure without torch.compile (eager)"
    )
    args = parser.parse_args(argv)
    refusal = preflight(want_gpu=not args.cpu)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return EXIT_CANNOT_RUN
    import torch

    sizes = CPU_SIZES if args.cpu else GPU_SIZES
    if args.no_compile:
        sizes = replace(sizes, bench={**sizes.bench, "compile": False})
    on_gpu = sizes.device == "cuda"
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    print(f"gpu-check on {sizes.device}: {name} · torch {torch.__version__} · {sys.executable}")
    t0 = time.monotonic()
    parts: list[Part] = []
    with work_dir(args.keep) as work:
        for part_name, body in (
            ("nvml", lambda: nvml_part(on_gpu)),
            ("throughput", lambda: bench_part(sizes, work)),
            ("pause/resume", lambda: pause_part(sizes, work)),
            ("process runner", lambda: asyncio.run(runner_part(sizes, work))),
        ):
            part = run_part(part_name, body)
            parts.append(part)
            print("\n".join(part.lines()), flush=True)
    passed = sum(p.ok for p in parts)
    kept = f" · run dirs in {args.keep}" if args.keep else ""
    print(f"gpu-check: {passed} of {len(parts)} parts ok in {time.monotonic() - t0:.0f} s{kept}")
    return 0 if passed == len(parts) else 1


if __name__ == "__main__":
    sys.exit(main())
