"""/status: what the assistant is doing right now, and /status tasks."""

from __future__ import annotations

from assistant.durations import format_duration
from assistant.health import OK, engine_probe
from assistant.hoststats import GpuInfo
from assistant.runs.engine_watch import UNANSWERED
from assistant.runs.monitor import run_numbers
from assistant.runs.runner import ClusterView
from commands.formatting import format_local, quote, time_until
from commands.pool_view import pool_note
from commands.registry import CommandContext, CommandRouter, ParsedCommand, usage_error
from commands.tasks import format_task_list
from commands.usage import usage_line
from storage.timestamps import from_iso

router = CommandRouter()

USAGE = "/status — the dashboard\n/status tasks — every task with its schedule and last run"


@router.command("status", usage=USAGE, summary="what the assistant is doing now", traced=False)
async def status_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if cmd.args == ("tasks",):
        return await tasks_view(ctx)
    if cmd.args:
        spec = ctx.router.commands["status"]
        raise usage_error(spec, f"/status has no view {quote(' '.join(cmd.args))}.")
    return await dashboard(ctx)


async def dashboard(ctx: CommandContext) -> str:
    s = ctx.services
    now = s.clock.now()
    lines = [
        f"{s.settings.assistant_name} status",
        f"Uptime: {format_duration(now - s.started_at)} · Memory: {s.host.rss_mb():.0f} MB"
        f" · Timezone: {s.settings.tz}",
    ]
    channels = ", ".join(
        f"{c.name} ({'connected' if c.is_connected else 'disconnected'}"
        + (f", {c.skipped} unreadable skipped" if c.skipped else "")
        + ")"
        for c in s.channels
    )
    lines.append(f"Channels: {channels or 'none'}")
    chats = await s.chats.all()
    if chats:
        admin = s.access.is_admin
        shown = [f"{c.id}{' (admin)' if admin(c.id) else ''}" for c in chats[:10]]
        more = f" +{len(chats) - 10} more" if len(chats) > 10 else ""
        lines.append(f"Chats: {', '.join(shown)}{more}")
    else:
        lines.append("Chats: none yet")
    queue = s.queue.status()
    busy = [f"{c.chat_id} {c.state}" for c in queue.chats if c.state != "idle"]
    lines.append(
        f"Queue: {queue.active}/{queue.max_concurrent} active"
        + (f", {queue.waiting} waiting" if queue.waiting else "")
        + (f" · {', '.join(busy)}" if busy else " · all idle")
    )
    gpus = s.host.gpus()
    lines.extend(await runs_section(ctx, {g.index: g for g in gpus}))
    lines.extend(s.host.status_lines(gpus))
    summary = await s.scheduler.summary()
    task_line = f"Tasks: {summary.active} active, {summary.paused} paused"
    due = summary.next_due
    if due is not None and due.next_run_at:
        moment = from_iso(due.next_run_at)
        task_line += (
            f" · next: {due.what[:40]!r} {time_until(moment, now)}"
            f" ({format_local(moment, s.settings.zone)}, id {due.id})"
        )
    lines.append(task_line)
    monitor_note = s.monitor.health_note()
    if monitor_note is not None:
        lines.append(monitor_note)
    writer = s.log.stats
    lines.append(
        f"Event log: {writer.written:,} rows written, {s.log.pending:,} pending"
        + (f", {writer.dropped:,} rows dropped, last: {writer.last_drop}" if writer.dropped else "")
        + (f", last error: {writer.last_error}" if writer.failures else "")
    )
    lines.append(f"Model: {s.agent.description}")
    lines.append(await usage_line(s))
    return "\n".join(lines)


async def tasks_view(ctx: CommandContext) -> str:
    s = ctx.services
    return format_task_list(await ctx.task_ops.listing(), s.clock.now(), s.settings.zone)


async def runs_section(ctx: CommandContext, gpus: dict[int, GpuInfo]) -> list[str]:
    """Each active run: recipe, step/total, loss, throughput, ETA, GPU memory; the queue."""
    s = ctx.services
    manager = s.runs
    active = await ctx.run_ops.active()
    lines = [f"Runner: {manager.runner.description}"]
    # the probe /healthz shares: a kept answer, or one ping bounded to 2.5 s
    engine = await engine_probe(manager.runner).check()
    if engine != OK:
        lines.append(f"Engine: {engine}")
    if manager.runner.capabilities.cluster is not None:  # asked apart: a slow ping says less
        lines.extend(await cluster_lines(manager.runner.capabilities.cluster))
    hosts = manager.runner.capabilities.hosts
    if hosts is not None:  # a pool: each host, up or not, its GPUs and runs
        lines.extend(hosts.status_lines(active))
    if manager.build_note:
        lines.append(f"Image: {manager.build_note}")
    manager.catalog.refresh()
    if manager.catalog.note:
        lines.append(f"Recipes: {manager.catalog.note}")
    if not active:
        lines.append("Runs: none active")
        return lines
    lines.append(f"Runs: {len(active)} active")
    for run in active:
        total = f"/{run.total}" if run.total else ""
        parts = [f"  {run.id} {run.recipe} {run.state}", f"step {run.step}{total}"]
        on_host = pool_note(hosts, run, active)
        if on_host:
            parts.append(on_host)
        elif run.state == "queued":
            wanted = f"{run.gpus_wanted} GPU(s)" if run.gpus_wanted else "a CPU slot"
            parts.append(f"waiting for {wanted}")
        reason = s.monitor.waiting.get(run.id)
        if reason:  # held in the engine's own queue (Slurm): its reason
            parts.append(f"waiting: {reason}")
        parts.extend(run_numbers(run, s.monitor.live.get(run.id)))
        mem = [gpus[g] for g in run.gpus if g in gpus]
        if mem:
            parts.append("GPU mem " + ", ".join(f"{g.mem_used_mb:,} MB" for g in mem))
        if run.stalled:
            parts.append("STALLED")
        lines.append(" · ".join(parts))
    return lines


async def cluster_lines(cluster: ClusterView) -> list[str]:
    """The engine's cluster (Slurm): partitions, nodes, GPUs free, our jobs and reasons."""
    try:
        return await cluster.cluster_lines()
    except UNANSWERED as exc:
        return [f"Cluster: not answering ({exc})"]
