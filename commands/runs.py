"""/run and /runs: launch, watch, stop, pause, resume and retry training runs.

Each form parses its words into the typed arguments of a run operation
(`assistant/operations/runs.py`) and renders what it returns. The model's tools call the
same typed handlers below (`train`, `stop`, ...) with their JSON fields, so a person and
the model share one validation, one operation and one reply.
"""

from __future__ import annotations

from datetime import datetime

from assistant.durations import format_duration
from assistant.errors import CommandError
from assistant.jobs import protocol
from assistant.jobs.bench.profiles import profiles_from_params
from assistant.operations.arguments import Arguments
from assistant.operations.runs import (
    CompareRuns,
    LaunchBench,
    Launched,
    LaunchTraining,
    RecipeQuery,
    RunLogs,
    RunRef,
)
from assistant.reply import Reply
from assistant.runs.lifecycle import ACTIVE
from assistant.runs.monitor import Live, key_metric, run_numbers
from assistant.runs.offers import in_thread, opening, run_actions
from assistant.runs.report import eta, number
from assistant.runs.signals import pending
from assistant.runs.spec import recipe_help
from commands.formatting import time_ago
from commands.pool_view import pool_note
from commands.registry import (
    Bound,
    CommandContext,
    CommandRouter,
    Guard,
    ParsedCommand,
    TypedHandler,
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
    """Input it cannot read gets the usage; a refusal (`Refused`) passes as one line."""
    try:
        return await parse(cmd)(ctx)
    except CommandError as exc:  # words it cannot read, or a value the recipe refused
        raise usage_error(router.commands["run"], str(exc)) from None


@router.command(
    "recipes",
    usage="/recipes [name] — the recipes runs can use (built-in and declared), or one in full",
    summary="list recipes and their parameters",
    traced=False,
)
async def recipes_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    try:
        return await recipes(ctx, _recipe_query(list(cmd.args)))
    except CommandError as exc:
        raise usage_error(router.commands["recipes"], str(exc)) from None


@router.command(
    "runs", usage="/runs — active runs, then recent ones", summary="list runs", traced=False
)
async def runs_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if cmd.args:
        raise usage_error(router.commands["runs"], "/runs takes no arguments.")
    return await runs_list(ctx, Arguments())


# ---- parsing: words -> an operation's arguments ------------------------------------------


def parse(cmd: ParsedCommand) -> Bound:
    """`/run <form> <words>` -> the typed handler of that form and its validated arguments.

    :raises CommandError: the words do not make a request (the reply adds the usage).
    """
    if not cmd.args:
        raise CommandError("say what to do: train, show, logs, stop, pause, resume, retry")
    sub, rest = cmd.args[0].lower(), list(cmd.args[1:])
    if sub == "train":
        if not rest:
            return Bound(_name_a_recipe, Arguments())
        params = assignments(rest[1:])
        fields: dict[str, object] = {"recipe": rest[0].lower(), "params": params}
        if "gpus" in params:  # an argument of its own, as the model's tool gives it
            gpus = params.pop("gpus")
            fields["gpus"] = int(gpus) if gpus.isdigit() else gpus
        if "host" in params:  # likewise: a pool's host or label
            fields["host"] = params.pop("host").lower()
        return Bound(train, LaunchTraining.read(fields))
    if sub == "recipes":
        return Bound(recipes, _recipe_query(rest))
    if sub == "bench":
        if not rest or rest[0].lower() != "serve":
            raise CommandError(
                "the benchmark is /run bench serve model=<id> (or url=... model=...)"
            )
        return Bound(bench, LaunchBench.read({"settings": tuple(rest[1:])}))
    if sub == "compare":
        if not 2 <= len(rest) <= 12:
            raise CommandError("name 2 to 12 benchmark runs: /run compare <id> <id> ...")
        return Bound(compare, CompareRuns.read({"run_ids": tuple(w.lower() for w in rest)}))
    if sub not in _BY_ID:
        raise CommandError(f"unknown subcommand {cmd.args[0]!r}")
    if not rest:
        raise CommandError(f"missing the run id: /run {sub} <id>; /runs shows ids")
    if len(rest) > (2 if sub == "logs" else 1):
        raise CommandError(
            f"/run {sub} takes one run id" + (" and a count" if sub == "logs" else "")
        )
    run_id = rest[0].lower()
    if sub == "logs":
        wanted: dict[str, object] = {"run_id": run_id}
        if len(rest) > 1:
            wanted["lines"] = int(rest[1]) if rest[1].isdigit() else rest[1]
        return Bound(logs, RunLogs.read(wanted))
    return Bound(_BY_ID[sub], RunRef.read({"run_id": run_id}))


async def _name_a_recipe(ctx: CommandContext, _: Arguments) -> str:
    """`/run train` alone: the reply names the recipes there are (the catalog may change)."""
    raise CommandError(f"name a recipe: {', '.join(ctx.run_ops.catalog.names())}")


def assignments(words: list[str]) -> dict[str, str]:
    """`key=value` words as typed -> the parameters (keys lower-cased).

    :raises CommandError: a word that is not key=value, or a key given twice.
    """
    params: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise CommandError(f"{word!r} is not key=value, e.g. steps=2000")
        if key in params:
            raise CommandError(f"{key} is given twice")
        params[key] = value
    return params


def _recipe_query(words: list[str]) -> RecipeQuery:
    if len(words) > 1:
        raise CommandError("/recipes takes at most one recipe name")
    return RecipeQuery.read({"recipe": words[0].lower()} if words else {})


# ---- the typed handlers: commands and the model's tools call these -------------------------


async def train(ctx: CommandContext, args: LaunchTraining) -> Reply:
    launched = await ctx.run_ops.launch_training(ctx.caller, args)
    text = _train_text(launched)
    hosts = ctx.services.runs.runner.capabilities.hosts
    if hosts is not None:  # a pool: the host it went to, or why it waits
        note = pool_note(hosts, launched.run, await ctx.run_ops.active())
        text += f"\nHost: {note}." if note else ""
    return _launched(ctx, launched.run, text)


def _train_text(launched: Launched) -> str:
    spec, run = launched.spec, launched.run
    shown = ", ".join(f"{k}={v}" for k, v in spec.params.items() if k in spec.overrides) or (
        "defaults"
    )
    gpus = (
        f"GPUs {run.gpus}" if run.gpus else ("no GPU" if not spec.gpus else f"{spec.gpus} GPU(s)")
    )
    head = f"Run {run.id}: {run.recipe} ({shown}) · {gpus} · image {run.image} · {launched.runner}."
    if run.state == "queued":
        if run.blocked:
            return f"{head}\nQueued: {run.blocked}; it starts when the engine answers."
        if launched.building:
            return f"{head}\nQueued: the run image is being built first; it starts after."
        if spec.gpus:
            wait = f" (position {launched.position})" if launched.position else ""
            return f"{head}\nQueued: waiting for {spec.gpus} free GPU(s){wait}."
        return f"{head}\nQueued: waiting for a free CPU slot (ASSISTANT_MAX_CPU_RUNS)."
    if run.state == "failed":
        return f"{head}\nIt could not start: {run.error}"
    return (
        f"{head}\nState: {run.state}. /run show {run.id} follows it; the report comes at the end."
    )


async def bench(ctx: CommandContext, args: LaunchBench) -> Reply:
    launched = await ctx.run_ops.launch_bench(ctx.caller, args)
    return _launched(ctx, launched.run, _bench_text(launched))


def _bench_text(launched: Launched) -> str:
    spec, run = launched.spec, launched.run
    p = run.params
    names = ", ".join(pr.name for pr in profiles_from_params(p))
    target = p["url"] or f"a server from {spec.server['image'] if spec.server else '?'}"
    head = (
        f"Run {run.id}: bench serve {p['model']} on {target} · profiles {names}"
        f" · {run.gpus_wanted} GPU(s) · {launched.runner}."
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


def _launched(ctx: CommandContext, run: RunRecord, text: str) -> Reply:
    """A launch's reply: it opens the run's thread (its progress and report go under it)
    and offers what can be done with the run next."""
    return opening(run, text, resumable=ctx.services.runs.supports_resume(run))


async def stop(ctx: CommandContext, ref: RunRef) -> Reply:
    run = await ctx.run_ops.stop(ctx.caller, ref)
    return in_thread(run, halt_text(run))


async def pause(ctx: CommandContext, ref: RunRef) -> Reply:
    run = await ctx.run_ops.pause(ctx.caller, ref)
    return in_thread(run, halt_text(run))


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


async def resume(ctx: CommandContext, ref: RunRef) -> Reply:
    run = await ctx.run_ops.resume(ctx.caller, ref)
    waits = f"; {run.blocked}: it starts when the engine answers" if run.blocked else ""
    text = f"Run {run.id} resumes from {run.checkpoint} ({run.state}{waits})."
    return in_thread(run, text, actions=run_actions(run, resumable=True))


async def retry(ctx: CommandContext, ref: RunRef) -> Reply:
    retried = await ctx.run_ops.retry(ctx.caller, ref)
    fresh = retried.fresh
    waits = f"; {fresh.blocked}: it starts when the engine answers" if fresh.blocked else ""
    text = f"Run {fresh.id} retries {retried.original.id}: {fresh.recipe}, {fresh.state}{waits}."
    return _launched(ctx, fresh, text)


async def logs(ctx: CommandContext, args: RunLogs) -> str:
    """The last n lines of the run's output; "yet" only while it may still print some."""
    log = await ctx.run_ops.logs(args)
    run = log.run
    if not log.lines:
        if run.state in ACTIVE:
            return f"Run {run.id} has no output yet."
        return f"Run {run.id} printed no output."
    return f"Run {run.id}, last {len(log.lines)} line(s):\n" + "\n".join(log.lines)


async def compare(ctx: CommandContext, args: CompareRuns) -> Reply:
    comparison = await ctx.run_ops.compare(args)
    return Reply(comparison.text, (comparison.chart,) if comparison.chart else ())


async def recipes(ctx: CommandContext, query: RecipeQuery) -> str:
    """`/recipes`: every recipe a run can name; `/recipes <name>`: one in full."""
    catalog = ctx.run_ops.catalog
    if query.recipe is not None:
        return recipe_help(catalog.require(query.recipe))
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


async def runs_list(ctx: CommandContext, _: Arguments) -> str:
    """Active runs, then recent ones."""
    active, recent = await ctx.run_ops.overview()
    if not active and not recent:
        return "No runs yet. Start one: /run train gpt"
    now = ctx.services.clock.now()
    lines = []
    if active:
        lines.append("Active:")
        hosts = ctx.services.runs.runner.capabilities.hosts
        lines.extend(
            _run_line(r, now, ctx.services.monitor.live.get(r.id))
            + _engine_queue(ctx, r)
            + "".join(f" · {n}" for n in [pool_note(hosts, r, active)] if n)
            for r in active
        )
    if recent:
        lines.append("Recent:")
        lines.extend(_run_line(r, now, None) for r in recent)
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
    waiting = _waiting(run)
    if waiting:
        parts.append(waiting)
    return "  " + " · ".join(parts)


def _engine_queue(ctx: CommandContext, run: RunRecord) -> str:
    """Why an engine with a queue of its own (Slurm) holds the run: " · waiting: Resources"."""
    reason = ctx.services.monitor.waiting.get(run.id)
    return f" · waiting: {reason}" if reason else ""


def _waiting(run: RunRecord) -> str | None:
    """What the run waits for from the engine, shown where its state alone would mislead."""
    if pending(run):
        return f"{run.wanted} pending: the engine does not answer"
    if run.state == "queued" and run.blocked:
        return f"waiting for the engine ({run.blocked})"
    return None


async def show(ctx: CommandContext, ref: RunRef) -> str:
    view = await ctx.run_ops.show(ref)
    run, run_dir = view.run, view.run_dir
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
    if run.checkpoint:
        lines.append(f"Checkpoint: {run_dir / run.checkpoint}")
    if view.artifacts:
        lines.append(f"Artifacts ({run_dir / protocol.ARTIFACTS}): {', '.join(view.artifacts)}")
    lines.append(
        f"Runner: {run.runner or '-'} {run.handle or ''} · exit code"
        f" {run.exit_code if run.exit_code is not None else '-'}"
    )
    waiting = _waiting(run)
    if waiting:
        lines.append(f"Waiting: {waiting}" + (f" ({run.blocked})" if pending(run) else ""))
    held = ctx.services.monitor.waiting.get(run.id)
    if held:  # the engine's own queue holds it (Slurm): its reason
        lines.append(f"Waiting: {held} (in the {run.runner or 'engine'} queue)")
    hosts = ctx.services.runs.runner.capabilities.hosts
    if hosts is not None:  # a pool: its host, and whether that host answers
        active = await ctx.run_ops.active()
        asked = f" (host={run.host_asked} asked)" if run.host_asked else ""
        lines.append(f"Host: {pool_note(hosts, run, active) or 'not placed yet'}{asked}")
    if run.error:
        lines.append(f"Error: {run.error}")
    if run.retry_of:
        lines.append(f"Retry of {run.retry_of}")
    lines.append("History:")
    for ts, state, note in view.history:
        local = from_iso(ts).astimezone(zone).strftime("%m-%d %H:%M:%S")
        lines.append(f"  {local} {state}" + (f" — {note}" if note else ""))
    return "\n".join(lines)


# the forms that take one run id (and /run logs a count too: parsed on its own)
_BY_ID: dict[str, TypedHandler] = {
    "show": show,
    "logs": logs,
    "stop": stop,
    "pause": pause,
    "resume": resume,
    "retry": retry,
}
