"""The serving benchmark as a run: the reference's matrix runner and enricher in one job.

    python -m assistant.jobs.bench.serve --run-dir DIR --url=URL --model=ID [--key=value ...]

It waits until the server answers 200 on `/health` (or `/v1/models`), runs the selected
standard profiles and then the custom one (an extra run beside the matrix, never a
replacement), and writes `artifacts/bench/<profile>.json` (vLLM's field names plus
`run_metadata`) and `<profile>.requests.jsonl` as each profile ends. Events follow
`assistant.jobs.protocol`: progress counts requests over all profiles, one `metric`
event per headline figure as `<profile>/<name>`, one `log` line per profile, and a
`result` whose `bench` block says where the files are and whether the set is comparable.
Each profile's file also holds `server_metrics`: the server's own counts from its
Prometheus `/metrics` (see `server_metrics`), read before and after the profile and every
second during it; those readings also come as the live `metric` events the progress line
shows (server generation tok/s, KV cache %).
SIGTERM stops it between or during profiles: what finished is kept, marked not
comparable, and the result is `stopped`.

The parameters are `BENCH_SERVE`'s, checked with the registry's own `resolve_params`, so
what the host accepted is what runs; the model name and URL are checked again here
because they go into HTTP requests. Its `total_param` is empty on purpose: a run's length
is the prompts of every selected profile (the standard ones fixed, plus a custom `n`),
which no single parameter holds, so the job states it as `total` in its `started` event.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.jobs.bench.client import (
    BenchClient,
    ClientConfig,
    ProgressFn,
    served_models,
    server_root,
    wait_healthy,
)
from assistant.jobs.bench.profiles import (
    Profile,
    check_model_name,
    check_url,
    profiles_from_params,
)
from assistant.jobs.bench.results import (
    RunMetadata,
    build_result,
    comparable,
    headline,
    summary_line,
    write_requests,
    write_result,
)
from assistant.jobs.bench.server_metrics import SCRAPES_METRIC, ServerMetrics, server_line
from assistant.jobs.protocol import (
    ARTIFACTS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EventWriter,
    read_control,
)
from assistant.jobs.recipes import BENCH_SERVE, ParamError, Value, resolve_params

BENCH_DIR = f"{ARTIFACTS}/bench"  # relative to the run dir, as the result event says
EXIT_USAGE = 2  # bad arguments, as argparse and the training recipes use
TRACEBACK_LINES = 20
MAX_LABEL = 100
ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
LIVE_EVERY_S = 5.0  # the server's live figures as metric events, at most this often


@dataclass(frozen=True)
class Job:
    """A checked command line: everything the benchmark needs, nothing left to validate."""

    run_dir: Path
    config: dict[str, Value]  # every parameter, defaults filled in
    profiles: list[Profile]
    url: str
    model: str
    served_model_name: str  # what requests carry as "model"
    endpoint: str  # completions | chat


# ----------------------------------------------------------------------------- command line


def _dest(name: str) -> str:
    return f"param_{name}"  # `in` is a Python keyword; every dest gets the same prefix


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {BENCH_SERVE.module}",
        description=BENCH_SERVE.summary,
        allow_abbrev=False,  # a prefix must never pass for a parameter the host never saw
        exit_on_error=False,
    )
    parser.add_argument("--run-dir", "--run_dir", dest="run_dir")
    for p in BENCH_SERVE.params:
        parser.add_argument(f"--{p.name}", dest=_dest(p.name), metavar="VALUE", help=p.describe())
    return parser


def parse_args(argv: Sequence[str]) -> tuple[Path | None, dict[str, str]]:
    """`--run-dir DIR` and the given `--name=value` strings, unconverted.

    :raises ParamError: an unknown argument (with a close name if there is one).
    """
    run_dir, given, extra = _read(argv)
    _refuse_extra(extra)
    return run_dir, given


def _read(argv: Sequence[str]) -> tuple[Path | None, dict[str, str], list[str]]:
    try:
        ns, extra = _parser().parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        raise ParamError(str(exc)) from None
    run_dir = Path(ns.run_dir).resolve() if ns.run_dir else None
    given = {p.name: getattr(ns, _dest(p.name)) for p in BENCH_SERVE.params}
    return run_dir, {k: v for k, v in given.items() if v is not None}, extra


def _refuse_extra(extra: list[str]) -> None:
    for arg in extra:
        key = arg.removeprefix("--").partition("=")[0]
        if not arg.startswith("--") or not key:
            raise ParamError(f"unexpected argument {arg!r}; use --name=value")
        BENCH_SERVE.param(key)  # raises, suggesting a close name
        raise ParamError(f"--{key} needs a value: --{key}=VALUE")


def build_job(run_dir: Path | None, given: dict[str, str]) -> Job:
    """Check the parameters as the host does, then the strings that reach the server.

    :raises ParamError: a missing or bad value, with the reason.
    """
    if run_dir is None:
        raise ParamError("--run-dir is required")
    config = resolve_params(BENCH_SERVE, given)
    model, url = str(config["model"]), str(config["url"])
    served = str(config["served_model_name"]) or model
    try:
        if not model:
            raise ValueError("model is required, e.g. --model=Qwen/Qwen3-0.6B")
        if not url:
            raise ValueError("url is required, e.g. --url=http://10.0.0.5:8000/v1")
        check_model_name(model)
        check_model_name(served)
        check_url(url)
        for name in ("hardware", "engine", "engine_version", "cluster_label"):
            _check_label(name, str(config[name]))
        profiles = profiles_from_params(config)
    except ValueError as exc:
        raise ParamError(str(exc)) from None
    return Job(run_dir, config, profiles, url, model, served, str(config["endpoint"]))


def _check_label(name: str, value: str) -> None:
    if len(value) > MAX_LABEL or not value.isprintable():
        raise ValueError(f"{name} must be at most {MAX_LABEL} printable characters")


# ----------------------------------------------------------------------------- the run


class _Run:
    """One benchmark run's reporting: events, the tally for the final result."""

    def __init__(self, job: Job, writer: EventWriter) -> None:
        self.job = job
        self.writer = writer
        self.total = sum(p.num_prompts for p in job.profiles)
        self.started = time.monotonic()
        self.step = 0
        self.final: dict[str, Any] = {}
        self.ran: list[str] = []
        self.reasons: list[str] = []
        self.live_at = -LIVE_EVERY_S
        self.told_no_metrics = False
        self.scrapes = 0

    def emit(self, type_: str, **fields: Any) -> None:
        self.writer.emit(type_, **fields)

    def progress(self, profile: Profile) -> ProgressFn:
        base = self.step

        def report(done: int, total: int, tokens_per_s: float) -> None:
            self.emit(
                "progress",
                step=base + done,
                total=self.total,
                profile=profile.name,
                profile_done=done,
                profile_total=total,
                tokens_per_s=round(tokens_per_s, 1),
                elapsed_s=round(time.monotonic() - self.started, 3),
            )

        return report

    def live(self, figures: Mapping[str, float]) -> None:
        """The server's own figures from /metrics as metric events, every LIVE_EVERY_S."""
        now = time.monotonic()
        if now - self.live_at < LIVE_EVERY_S:
            return
        self.live_at = now
        for name, value in figures.items():
            self.emit("metric", step=self.step, name=name, value=round(value, 3))

    def tell_server_metrics(self, profile: str, result: Mapping[str, Any]) -> None:
        """A log line per profile; the first profile without /metrics says what follows."""
        block = result["server_metrics"]
        if block.get("available"):
            line = server_line(block, result["total_output_tokens"], result["total_input_tokens"])
            self.emit("log", level="info", message=f"{profile}: {line}")
            self.scrapes += int(block.get("samples") or 0)
            self.emit("metric", step=self.step, name=SCRAPES_METRIC, value=self.scrapes)
        elif not self.told_no_metrics:
            self.told_no_metrics = True
            self.emit(
                "log",
                level="warning",
                message=f"{profile}: no server metrics ({block.get('reason')});"
                " the server's log lines are read instead where the server was started here",
            )

    def finish(self, status: str, error: str | None = None, trace: Sequence[str] = ()) -> int:
        """The error event (when failed), the result event, and the exit code."""
        if error is not None:
            self.emit("error", kind="exception", message=error, traceback=list(trace))
        not_run = [p.name for p in self.job.profiles if p.name not in self.ran]
        reasons = list(self.reasons)
        if not_run:
            reasons.append(f"not run: {', '.join(not_run)}")
        bench = {
            "dir": BENCH_DIR,
            "profiles": self.ran,
            "comparable": not reasons,
            "reason": "; ".join(reasons) or None,
        }
        self.emit(
            "result",
            status=status,
            step=self.step,
            final=self.final,
            best={},
            checkpoint=None,
            bench=bench,
        )
        return {"succeeded": EXIT_OK, "stopped": EXIT_STOPPED}.get(status, EXIT_FAILED)


async def _bench(run: _Run, stop: asyncio.Event) -> int:
    """Health, then every profile in order; returns the exit code."""
    job = run.job
    run.emit(
        "started",
        step=0,
        total=run.total,
        device=job.url,
        world_size=1,
        params=job.config,
        profiles=[p.name for p in job.profiles],
    )
    timeout = float(job.config["health_timeout_s"])
    health = await wait_healthy(job.url, timeout, stop)
    if stop.is_set():
        return _stopped(run)
    if not health.ok:
        return run.finish(
            "failed",
            f"the server at {job.url} did not answer 200 on /health or /v1/models within"
            f" {timeout:g} s (last: {health.detail})",
        )
    run.emit("log", level="info", message=f"server healthy after {health.waited_s:.1f} s")
    models = await served_models(job.url)
    if models is not None and job.served_model_name not in models:
        run.emit(
            "log",
            level="warning",
            message=f"{job.served_model_name!r} is not among the served models"
            f" ({', '.join(models) or 'none'}); set served_model_name to one of them",
        )
    meta = RunMetadata(
        model=job.model,
        served_model_name=job.served_model_name,
        endpoint=ENDPOINTS[job.endpoint],
        hardware=str(job.config["hardware"]),
        engine=str(job.config["engine"]),
        engine_version=str(job.config["engine_version"]),
        cluster_label=str(job.config["cluster_label"]),
        server_healthy=True,
        url=job.url,
    )
    config = ClientConfig(
        url=job.url,
        model=job.served_model_name,
        endpoint="chat" if job.endpoint == "chat" else "completions",
        warmup=int(job.config["warmup"]),
        seed=int(job.config["seed"]),
        connections=max(p.concurrency for p in job.profiles),
    )
    out_dir = job.run_dir / BENCH_DIR
    dead: list[str] = []
    async with BenchClient(config) as client, ServerMetrics(server_root(job.url)) as server:
        for profile in job.profiles:
            if stop.is_set():
                break
            run.emit(
                "log",
                level="info",
                message=f"{profile.name}: {profile.num_prompts} prompts, {profile.input_len} in,"
                f" {profile.output_len} out, concurrency {profile.concurrency},"
                f" rate {profile.rate_label}",
            )
            reads = server.profile(run.live)
            measured = await client.run(profile, run.progress(profile), stop, reads.start)
            block = await reads.finish(stopped=measured.stopped)
            run.step += len(measured.records)
            result = build_result(measured, meta)
            result["server_metrics"] = block
            ok, reason = comparable(result, profile)
            result["comparable"] = ok  # the verdict travels with the file
            result["comparable_reason"] = reason
            write_result(out_dir, result)
            write_requests(out_dir, profile.name, measured.records)
            for key, value in headline(result).items():
                name = f"{profile.name}/{key}"
                run.final[name] = value
                run.emit("metric", step=run.step, name=name, value=value)
            run.emit(
                "log",
                level="info" if ok else "warning",
                message=summary_line(profile.name, result, reason),
            )
            run.tell_server_metrics(profile.name, result)
            run.ran.append(profile.name)
            if reason is not None:
                run.reasons.append(f"{profile.name}: {reason}")
            if result["completed"] == 0 and not measured.stopped:
                first = next(iter(result["errors"]), "no error recorded")
                dead.append(f"{profile.name}: all {result['failed']} requests failed ({first})")
    if stop.is_set():
        return _stopped(run)
    if dead:
        return run.finish("failed", "; ".join(dead))
    return run.finish("succeeded")


def _stopped(run: _Run) -> int:
    if read_control(run.job.run_dir) == "pause":
        run.emit("log", level="warning", message="a benchmark cannot pause: it stopped instead")
    return run.finish("stopped")


async def run_job(job: Job) -> int:
    """Run with SIGTERM/SIGINT setting the stop flag; an unexpected error becomes events."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    writer = EventWriter(job.run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = _Run(job, writer)
    try:
        return await _bench(run, stop)
    except Exception as exc:
        lines = traceback.format_exc().rstrip().splitlines()[-TRACEBACK_LINES:]
        return run.finish("failed", f"{type(exc).__name__}: {exc}", lines)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        writer.close()


def _refuse(run_dir: Path | None, message: str) -> int:
    """Bad arguments: say so on stderr and, when there is a run dir, in its events."""
    print(f"{BENCH_SERVE.module}: error: {message}", file=sys.stderr)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = EventWriter(run_dir)
        writer.emit("error", kind="exception", message=f"invalid parameters: {message}")
        bench = {"dir": BENCH_DIR, "profiles": [], "comparable": False, "reason": message}
        writer.emit(
            "result", status="failed", step=None, final={}, best={}, checkpoint=None, bench=bench
        )
        writer.close()
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    run_dir: Path | None = None
    try:
        run_dir, given, extra = _read(args)
        _refuse_extra(extra)
        job = build_job(run_dir, given)
    except ParamError as exc:
        return _refuse(run_dir, str(exc))
    return asyncio.run(run_job(job))


if __name__ == "__main__":
    sys.exit(main())
