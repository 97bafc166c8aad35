"""/run and /runs: launch, watch, stop, pause, resume and retry training runs."""

from __future__ import annotations

import asyncio
import shlex
from datetime import datetime

from assistant.durations import format_duration
from assistant.errors import CommandError
from assistant.jobs import protocol
from assistant.jobs.bench.profiles import profiles_from_params
from assistant.reply import Reply
from assistant.runs import rundir
from assistant.runs.bench_report import compare_chart, compare_text, load_results
from assistant.runs.bench_spec import build_bench_spec, hardware_label
from assistant.runs.lifecycle import ACTIVE
from assistant.runs.monitor import Live, key_metric, run_numbers
from assistant.runs.report import eta, log_tail, number
from assistant.runs.signals import pending
from assistant.runs.spec import build_spec, recipe_help
from commands.formatting import time_ago
from commands.registry import (
    CommandContext,
    CommandRouter,
    Guard,
    ParsedCommand,
    usage_error,
)
from storage.runs import RunRecord
from storage.timestamps import from_iso

router = CommandRouter()

USAGE = "\n".join(
    [
        "/run train <recipe> [key=value ...] — e.g. /run train gpt steps=2000 gpus=1",
        "/run show <id> — spec, state history, metrics, checkpoint, container, exit code",
        "/run logs <id> [n] — the last n lines of its output (default 20)",
        "/run stop <id> — stop it (it checkpoints first)",
        "/run pause <id> — checkpoint and free its GPUs; /run resume <id> continues",
        "/run resume <id> — relaunch a paused run from its checkpoint",
        "/run retry <id> — the same spec as a fresh run",
        "/run recipes [name] — recipes and their parameters",
        "/run bench serve model=<id> [gpus=N] [tp=N] [image=...] [profiles=...] [in= out= c= n="
        " rate=] — serving benchmark: starts the server, runs the profiles, reports",
        "/run bench serve url=http://host:port/v1 model=<name> — benchmark a running server",
        "/run compare <id> <id> ... — benchmark runs side by side",
    ]
)


@router.command(
    "run",
    usage=USAGE,
    summary="launch and control training runs",
    quiet=frozenset({"show", "logs", "recipes", "compare"}),
    guards=(Guard("stop", confirm="stop run {0} for good"),),
)
async def run_command(ctx: CommandContext, cmd: ParsedCommand) -> str | Reply:
    try:
        return await _dispatch(ctx, cmd)
    except CommandError as exc:
        raise usage_error(router.commands["run"], str(exc)) from None


@router.command(
    "recipes",
    usage="/recipes [name] — the recipes runs can use (built-in and declared), or one in full",
    summary="list recipes and their parameters",
    traced=False,
)
async def recipes_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    try:
        return recipes_text(ctx, list(cmd.args))
    except CommandError as exc:
        raise usage_error(router.commands["recipes"], str(exc)) from None


@router.command(
    "runs", usage="/runs — active runs, then recent ones", summary="list runs", traced=False
)
async def runs_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if cmd.args:
        raise usage_error(router.commands["runs"], "/runs takes no arguments.")
    manager = ctx.services.runs
    active = await manager.repo.in_states(ACTIVE)
    recent = [r for r in await manager.repo.recent(15) if r.state not in ACTIVE]
    if not active and not recent:
        return "No runs yet. Start one: /run train gpt"
    now = ctx.services.clock.now()
    lines = []
    if active:
        lines.append("Active:")
        lines.extend(_run_line(r, now, ctx.services.monitor.live.get(r.id)) for r in active)
    if recent:
        lines.append("Recent:")
        lines.extend(_run_line(r, now, None) for r in recent[:10])
    return "\n".join(lines)


def _run_line(run: RunRecord, now: datetime, live: Live | None) -> str:
    # a benchmark counts requests over all its profiles, as its progress line does
    done, planned = live.counts(run) if live is not None else (run.step, run.total)
    unit = "requests" if live is not None and live.bench else "step"
    total = f"/{planned}" if planned else ""
    parts = [f"{run.id} {run.recipe} {run.state}", f"{unit} {done}{total}"]
    key, _ = key_metric(run)
    for name in (key, "loss"):
        if name in run.metrics:
            parts.append(f"{name} {number(run.metrics[name])}")
            break
    if live is not None:
        left = eta(done, planned, live.rate())
        if left is not None:
            parts.append(f"ETA {format_duration(left)}")
    parts.append(time_ago(from_iso(run.created_at), now))
    if run.stalled:
        parts.append("STALLED")
    return "  " + " · ".join(parts)


async def _dispatch(ctx: CommandContext, cmd: ParsedCommand) -> str | Reply:
    if not cmd.args:
        raise CommandError("say what to do: train, show, logs, stop, pause, resume, retry")
    sub, rest = cmd.args[0].lower(), list(cmd.args[1:])
    if sub == "train":
        return await _train(ctx, rest)
    if sub == "recipes":
        return recipes_text(ctx, rest)
    if sub == "bench":
        return await _bench(ctx, rest)
    if sub == "compare":
        return await _compare(ctx, rest)
    if sub not in ("show", "logs", "stop", "pause", "resume", "retry"):
        raise CommandError(f"unknown subcommand {cmd.args[0]!r}")
    if not rest:
        raise CommandError(f"missing the run id: /run {sub} <id>; /runs shows ids")
    if len(rest) > (2 if sub == "logs" else 1):
        raise CommandError(
            f"/run {sub} takes one run id" + (" and a count" if sub == "logs" else "")
        )
    manager = ctx.services.runs
    run = await manager.repo.resolve(rest[0])
    if sub == "show":
        return await _show(ctx, run)
    if sub == "logs":
        return _logs(ctx, run, rest[1:])
    if sub == "stop":
        return halt_text(await manager.stop(run, ctx.event_id))
    if sub == "pause":
        return halt_text(await manager.pause(run, ctx.event_id))
    if sub == "resume":
        run = await manager.resume(run, ctx.event_id)
        return f"Run {run.id} resumes from {run.checkpoint} ({run.state})."
    fresh = await manager.retry(run, ctx.event_id)
    return f"Run {fresh.id} retries {run.id}: {fresh.recipe}, {fresh.state}."


def halt_text(run: RunRecord) -> str:
    """What a stop or pause did: done, asked, or waiting for the engine (never "failed")."""
    if pending(run):
        return (
            f"Run {run.id}: {run.state} — the {run.wanted} is recorded (control.json written);"
            f" it reaches the run when the engine answers: {run.blocked}."
        )
    if run.wanted == "kill":
        return (
            f"Run {run.id} was already stopping: it is killed now (its steps since the last"
            " checkpoint are lost); the report follows."
        )
    if run.state == "stopping":
        return f"Run {run.id}: stopping. It checkpoints, then stops; the report follows."
    if run.state == "pausing":
        return f"Run {run.id}: pausing — it checkpoints, then frees its GPUs."
    return f"Run {run.id}: {run.state}."


def recipes_text(ctx: CommandContext, words: list[str]) -> str:
    """`/recipes`: every recipe a run can name; `/recipes <name>`: one in full."""
    catalog = ctx.services.runs.catalog
    if len(words) > 1:
        raise CommandError("/recipes takes at most one recipe name")
    if words:
        return recipe_help(catalog.require(words[0]))
    entries = catalog.entries()
    lines = [f"{e.info.name} — {e.info.summary}" for e in entries if e.declared is None]
    declared = [e for e in entries if e.declared is not None]
    if declared:
        lines.append(f"Declared in {catalog.path}:")
        lines.extend(f"{e.info.name} — {e.info.summary}" for e in declared)
    if catalog.note:
        lines.append(f"Note: {catalog.note}")
    lines.append("/recipes <name> shows its parameters.")
    return "\n".join(lines)


async def _train(ctx: CommandContext, words: list[str]) -> str:
    s = ctx.services
    manager = s.runs
    if not words:
        raise CommandError(f"name a recipe: {', '.join(manager.catalog.names())}")
    spec = build_spec(
        manager.catalog.require(words[0]),
        words[1:],
        chat_id=ctx.chat_id,
        image=s.settings.run_image,
        default_gpus=min(1, len(manager.gpu_inventory)),
        memory_mb=s.settings.run_memory_mb,
        cpus=s.settings.run_cpus,
    )
    run = await manager.submit(spec, ctx.event_id)
    shown = ", ".join(f"{k}={v}" for k, v in spec.params.items() if k in spec.overrides) or (
        "defaults"
    )
    where = manager.runner.description
    gpus = (
        f"GPUs {run.gpus}" if run.gpus else ("no GPU" if not spec.gpus else f"{spec.gpus} GPU(s)")
    )
    head = f"Run {run.id}: {run.recipe} ({shown}) · {gpus} · image {run.image} · {where}."
    if run.state == "queued":
        if run.blocked:
            return f"{head}\nQueued: {run.blocked}; it starts when the engine answers."
        if manager.building:
            return f"{head}\nQueued: the run image is being built first; it starts after."
        if spec.gpus:
            position = await manager.queue_position(run)
            wait = f" (position {position})" if position else ""
            return f"{head}\nQueued: waiting for {spec.gpus} free GPU(s){wait}."
        return f"{head}\nQueued: waiting for a free CPU slot (ASSISTANT_MAX_CPU_RUNS)."
    if run.state == "failed":
        return f"{head}\nIt could not start: {run.error}"
    return (
        f"{head}\nState: {run.state}. /run show {run.id} follows it; the report comes at the end."
    )


async def _bench(ctx: CommandContext, words: list[str]) -> str:
    if not words or words[0].lower() != "serve":
        raise CommandError("the benchmark is /run bench serve model=<id> (or url=... model=...)")
    s = ctx.services
    manager = s.runs
    spec = build_bench_spec(
        words[1:],
        chat_id=ctx.chat_id,
        run_image=s.settings.run_image,
        server_image=s.settings.bench_image,
        server_admin_args=shlex.split(s.settings.bench_server_args),
        default_gpus=min(1, len(manager.gpu_inventory)),
        memory_mb=s.settings.run_memory_mb,
        cpus=s.settings.run_cpus,
        hardware=hardware_label(s.host, manager.gpu_inventory),
        cluster_label=s.settings.cluster_label,
        engine_known=manager.servers is not None,
        allow_link_local=s.settings.bench_allow_link_local,
    )
    run = await manager.submit(spec, ctx.event_id)
    p = run.params
    names = ", ".join(pr.name for pr in profiles_from_params(p))
    target = p["url"] or f"a server from {spec.server['image'] if spec.server else '?'}"
    head = (
        f"Run {run.id}: bench serve {p['model']} on {target} · profiles {names}"
        f" · {run.gpus_wanted} GPU(s) · {manager.runner.description}."
    )
    if run.state == "failed":
        return f"{head}\nIt could not start: {run.error}"
    if run.state == "queued":
        if run.blocked:
            return f"{head}\nQueued: {run.blocked}; it starts when the engine answers."
        return f"{head}\nQueued: waiting for {run.gpus_wanted} free GPU(s)."
    return (
        f"{head}\nState: {run.state}. /run show {run.id} follows it; the report comes at the end."
    )


async def _compare(ctx: CommandContext, words: list[str]) -> str | Reply:
    if not 2 <= len(words) <= 12:
        raise CommandError("name 2 to 12 benchmark runs: /run compare <id> <id> ...")
    manager = ctx.services.runs
    runs = [await manager.repo.resolve(w) for w in words]
    not_bench = [r.id for r in runs if r.kind != "bench"]
    if not_bench:
        raise CommandError(f"not benchmark runs: {', '.join(not_bench)}")
    rows = [(r.id, str(r.params.get("model")), load_results(manager.run_dir(r.id))) for r in runs]
    empty = [run_id for run_id, _, results in rows if not results]
    if empty:
        raise CommandError(f"no results yet for: {', '.join(empty)}")
    text = compare_text(rows)
    out = manager.run_dir(runs[0].id) / protocol.ARTIFACTS / f"compare-{'-'.join(words)}.png"
    chart = await asyncio.to_thread(compare_chart, rows, out)
    return Reply(text, (chart,) if chart else ())


async def _show(ctx: CommandContext, run: RunRecord) -> str:
    manager = ctx.services.runs
    zone = ctx.services.settings.zone
    lines = [
        f"Run {run.id} · {run.kind} {run.recipe} · {run.state}"
        + (" · STALLED" if run.stalled else ""),
        "Params: " + ", ".join(f"{k}={v}" for k, v in run.params.items()),
        f"Resources: {run.gpus_wanted} GPU(s) {run.gpus or ''}, {run.nproc} proc(s),"
        f" memory {run.memory_mb} MB, cpus {run.cpus} · image {run.image}",
        f"Progress: step {run.step}" + (f"/{run.total}" if run.total else ""),
    ]
    if run.state in ("running", "starting"):
        now = run_numbers(run, ctx.services.monitor.live.get(run.id))
        if now:
            lines.append("Now: " + " · ".join(now))
    for label, values in (("Latest", run.metrics), ("Best", run.best)):
        if values:
            shown = ", ".join(f"{k} {number(v)}" for k, v in sorted(values.items()))
            lines.append(f"{label}: {shown}")
    run_dir = manager.run_dir(run.id)
    if run.checkpoint:
        lines.append(f"Checkpoint: {run_dir / run.checkpoint}")
    artifacts = rundir.names(run_dir, protocol.ARTIFACTS, dirs=True)  # follows no link the run left
    if artifacts:
        lines.append(f"Artifacts ({run_dir / protocol.ARTIFACTS}): {', '.join(artifacts)}")
    lines.append(
        f"Runner: {run.runner or '-'} {run.handle or ''} · exit code"
        f" {run.exit_code if run.exit_code is not None else '-'}"
    )
    if run.error:
        lines.append(f"Error: {run.error}")
    if run.retry_of:
        lines.append(f"Retry of {run.retry_of}")
    lines.append("History:")
    for ts, state, note in await manager.repo.history(run.id):
        local = from_iso(ts).astimezone(zone).strftime("%m-%d %H:%M:%S")
        lines.append(f"  {local} {state}" + (f" — {note}" if note else ""))
    return "\n".join(lines)


def _logs(ctx: CommandContext, run: RunRecord, rest: list[str]) -> str:
    """The last n lines of the run's output; "yet" only while it may still print some."""
    if rest and (not rest[0].isdigit() or not 1 <= int(rest[0]) <= 200):
        raise CommandError("the line count is a number from 1 to 200")
    n = int(rest[0]) if rest else 20
    lines = log_tail(ctx.services.runs.run_dir(run.id), n)
    if not lines:
        if run.state in ACTIVE:
            return f"Run {run.id} has no output yet."
        return f"Run {run.id} printed no output."
    return f"Run {run.id}, last {len(lines)} line(s):\n" + "\n".join(lines)
