"""`/metrics`: the service's figures in the Prometheus text format, through prometheus_client.

Most figures already live somewhere (the runs table, the usage table, the event-log
writer, the channels, NVML), so they are read when Prometheus scrapes, not copied into
metric objects as they change: nothing on the hot path pays for them. What the database
holds is read in one hop to its thread; NVML and the rendering run in a worker thread, so
a scrape never holds the event loop for long. Only the command latency is instrumented.

Each service instance has its own registry: several orchestrators can live in one
process (the tests do) without mixing their series.

Labels are bounded: commands by their registered name (anything else is `other`),
recipes and models capped (the rest is `other`), run ids only for active runs and at
most `MAX_RUN_SERIES` of them, platforms by channel name, GPUs by index. No chat id is
ever a label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from assistant.channels.delivery import SendStats, send_stats
from assistant.hoststats import GpuInfo, HostStats
from assistant.runs.lifecycle import ACTIVE
from storage.timestamps import from_iso

if TYPE_CHECKING:
    from assistant.channels.base import Channel
    from assistant.observability import EventLog
    from assistant.queue import GroupQueue
    from assistant.runs.monitor import RunMonitor
    from assistant.scheduler import TaskScheduler
    from storage.db import Database

log = logging.getLogger(__name__)


class Scraped(Protocol):
    """What a scrape reads of the running service; `Services` is one.

    Named here, not imported, so the services bag (which holds a `Metrics`) and this
    module do not depend on each other.
    """

    @property
    def db(self) -> Database: ...
    @property
    def log(self) -> EventLog: ...
    @property
    def queue(self) -> GroupQueue: ...
    @property
    def scheduler(self) -> TaskScheduler: ...
    @property
    def monitor(self) -> RunMonitor: ...
    @property
    def channels(self) -> Sequence[Channel]: ...
    @property
    def host(self) -> HostStats: ...
    @property
    def started_at(self) -> datetime: ...


MAX_RUN_SERIES = 50  # active runs that get their own series; the rest are only counted
MAX_RECIPES = 50  # recipe label values (built-in and declared); the rest are `other`
MAX_MODELS = 20  # model label values; the rest are `other`
OTHER = "other"
MIB = 1024 * 1024
# Commands answer in milliseconds (/status) up to tens of seconds (a model-backed one).
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


# ---- what one scrape reads ---------------------------------------------------------------


@dataclass(frozen=True)
class ActiveRun:
    """An active run as the runs table has it, plus when it last entered the queue."""

    id: str
    recipe: str
    state: str
    step: int
    total: int | None
    loss: float | None
    gpus: tuple[int, ...]
    queued_since: str | None


@dataclass
class ModelUsage:
    """One model's sums over the usage rows read so far."""

    model: str
    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    cost_usd: float = 0.0

    def add(self, other: ModelUsage) -> None:
        self.calls += other.calls
        self.cost_usd += other.cost_usd
        for kind, n in other.tokens.items():
            self.tokens[kind] = self.tokens.get(kind, 0) + n


@dataclass(frozen=True)
class StoredFigures:
    """Everything a scrape needs from the database, read in one go.

    `usage` holds only the usage rows after the id the previous scrape stopped at (the
    table only grows): a scrape reads the new calls, never the whole history again.
    """

    runs_by_state: list[tuple[str, str, int]]  # (state, recipe, count)
    active: list[ActiveRun]
    tasks_by_status: dict[str, int]
    usage: list[ModelUsage]  # by model, in the order each model first appears
    usage_last_id: int


@dataclass(frozen=True)
class ChannelFigures:
    platform: str
    connected: bool
    skipped: int
    sends: SendStats | None


@dataclass(frozen=True)
class LiveRun:
    tokens_per_s: float | None
    steps_per_s: float | None


@dataclass
class Snapshot:
    """One scrape's figures, gathered on the event loop (cheap copies) and the db thread."""

    now: float
    started_at: float
    stored: StoredFigures | None  # None: the database could not be read this time
    live: dict[str, LiveRun]
    channels: list[ChannelFigures]
    chat_queue_active: int
    chat_queue_waiting: int
    chat_queue_limit: int
    tasks_fired: int
    tasks_failed: int
    tasks_missed: int
    log_written: int
    log_dropped: int
    log_failures: int
    log_pending: int
    log_last_flush_s: float
    log_lag_s: float
    monitor_lines_skipped: int
    trace_spans_dropped: int | None  # None: tracing is off
    host: HostStats
    usage: list[ModelUsage] = field(default_factory=list)  # sums since the first scrape
    gpus: list[GpuInfo] = field(default_factory=list)  # filled in the worker thread


def read_stored(conn: sqlite3.Connection, usage_after: int = 0) -> StoredFigures:
    """The database's part of a scrape; runs on the db thread (Database.read_sync).

    Usage rows are summed from `usage_after` on (their ids only grow, by rowid: a range
    scan of the new rows).
    """
    runs = [
        (str(r[0]), str(r[1]), int(r[2]))
        for r in conn.execute(
            "SELECT state, recipe, count(*) FROM runs GROUP BY state, recipe"
            " ORDER BY count(*) DESC, recipe"
        )
    ]
    marks = ",".join("?" * len(ACTIVE))
    active = [
        ActiveRun(
            id=str(r[0]),
            recipe=str(r[1]),
            state=str(r[2]),
            step=int(r[3] or 0),
            total=None if r[4] is None else int(r[4]),
            loss=_loss(r[5]),
            gpus=tuple(int(g) for g in _json_list(r[6])),
            queued_since=r[7],
        )
        for r in conn.execute(
            "SELECT id, recipe, state, step, total, json_extract(metrics, '$.loss'), gpus,"
            " (SELECT max(ts) FROM run_states s WHERE s.run_id = runs.id AND s.state = 'queued')"
            f" FROM runs WHERE state IN ({marks}) ORDER BY created_at, id",
            ACTIVE,
        )
    ]
    tasks = {
        str(r[0]): int(r[1])
        for r in conn.execute("SELECT status, count(*) FROM tasks GROUP BY status")
    }
    last = int(conn.execute("SELECT coalesce(max(id), 0) FROM model_usage").fetchone()[0])
    usage = [
        ModelUsage(
            model=str(r[0]),
            calls=int(r[1]),
            tokens={kind: int(r[2 + i]) for i, kind in enumerate(TOKEN_KINDS)},
            cost_usd=float(r[6]),
        )
        for r in conn.execute(
            "SELECT model, count(*), coalesce(sum(input), 0), coalesce(sum(output), 0),"
            " coalesce(sum(cache_read), 0), coalesce(sum(cache_write), 0),"
            " coalesce(sum(cost_usd), 0.0) FROM model_usage WHERE id > ? AND id <= ?"
            " GROUP BY model ORDER BY min(id)",
            (usage_after, last),
        )
    ]
    return StoredFigures(runs, active, tasks, usage, max(last, usage_after))


def _loss(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json_list(text: str | None) -> list[Any]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


# ---- the collector -------------------------------------------------------------------------


def _capped(values: Iterable[str], limit: int) -> Callable[[str], str]:
    """A label mapper that keeps the first `limit` distinct values and names the rest `other`."""
    kept: set[str] = set()
    for value in values:
        if len(kept) >= limit:
            break
        kept.add(value)
    return lambda value: value if value in kept else OTHER


class ScrapeCollector(Collector):
    """Turns the current scrape's `Snapshot` into metric families; empty between scrapes."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def describe(self) -> list[Metric]:
        return []  # collected per scrape: nothing to check against at registration

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        yield from _process_families(snap)
        yield from _channel_families(snap)
        yield from _event_log_families(snap)
        yield from _task_families(snap)
        yield from _gpu_families(snap.gpus)
        yield from _usage_families(snap.usage)
        if snap.stored is not None:
            yield from _run_families(snap, snap.stored)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _process_families(snap: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "assistant_start_time_seconds", "When the service started, in Unix time.", snap.started_at
    )
    yield _gauge(
        "assistant_scrape_database_up",
        "1 if this scrape could read the database, 0 if its figures are missing.",
        0 if snap.stored is None else 1,
    )
    yield _gauge(
        "assistant_chat_queue_active_chats",
        "Chats whose conversation the model is answering now.",
        snap.chat_queue_active,
    )
    yield _gauge(
        "assistant_chat_queue_waiting_chats",
        "Chats with conversation waiting for a free slot.",
        snap.chat_queue_waiting,
    )
    yield _gauge(
        "assistant_chat_queue_limit_chats",
        "How many chats the model answers at once (ASSISTANT_MAX_CONCURRENT).",
        snap.chat_queue_limit,
    )


def _channel_families(snap: Snapshot) -> Iterator[Metric]:
    connected = GaugeMetricFamily(
        "assistant_channel_connected",
        "1 while the chat platform's channel is connected, else 0.",
        labels=["platform"],
    )
    skipped = CounterMetricFamily(
        "assistant_channel_unreadable_skipped",
        "Incoming items the channel could not read and skipped.",
        labels=["platform"],
    )
    sends: dict[str, CounterMetricFamily] = {
        "sent": CounterMetricFamily(
            "assistant_channel_sends",
            "Messages the channel's send queue sent.",
            labels=["platform"],
        ),
        "failures": CounterMetricFamily(
            "assistant_channel_send_failures",
            "Messages that finally failed to send (retries used up, or not retryable).",
            labels=["platform"],
        ),
        "retries": CounterMetricFamily(
            "assistant_channel_send_retries",
            "Sends tried again after a transient error.",
            labels=["platform"],
        ),
        "rate_limited": CounterMetricFamily(
            "assistant_channel_send_rate_limited",
            "Times the platform asked the channel to wait before sending again.",
            labels=["platform"],
        ),
    }
    state: dict[str, bool] = {}
    unread: Counter[str] = Counter()
    counts: dict[str, Counter[str]] = {key: Counter() for key in sends}
    for channel in snap.channels:
        state[channel.platform] = state.get(channel.platform, True) and channel.connected
        unread[channel.platform] += channel.skipped
        for key in sends:
            counts[key][channel.platform] += getattr(channel.sends, key) if channel.sends else 0
    for platform in sorted(state):
        connected.add_metric([platform], 1 if state[platform] else 0)
        skipped.add_metric([platform], unread[platform])
        for key, family in sends.items():
            family.add_metric([platform], counts[key][platform])
    yield connected
    yield skipped
    yield from sends.values()


def _event_log_families(snap: Snapshot) -> Iterator[Metric]:
    yield _counter(
        "assistant_event_log_rows_written",
        "Rows the event-log writer stored (events, actions, tool calls).",
        snap.log_written,
    )
    yield _counter(
        "assistant_event_log_rows_dropped",
        "Rows the event-log writer could not store and dropped.",
        snap.log_dropped,
    )
    yield _counter(
        "assistant_event_log_write_failures",
        "Batches the database refused (they are retried).",
        snap.log_failures,
    )
    yield _gauge(
        "assistant_event_log_pending_rows",
        "Rows logged but not yet written: the writer's backlog.",
        snap.log_pending,
    )
    yield _gauge(
        "assistant_event_log_last_flush_duration_seconds",
        "How long the writer's latest batch took to store.",
        snap.log_last_flush_s,
    )
    yield _gauge(
        "assistant_event_log_lag_seconds",
        "Age of the oldest event waiting to be written (0 when the writer is caught up).",
        snap.log_lag_s,
    )
    if snap.trace_spans_dropped is not None:
        yield _counter(
            "assistant_trace_spans_dropped",
            "Spans of the event chain dropped (collector down or slow, queue full).",
            snap.trace_spans_dropped,
        )
    yield _counter(
        "assistant_run_monitor_lines_skipped",
        "Run event lines the monitor could not read and skipped.",
        snap.monitor_lines_skipped,
    )


def _task_families(snap: Snapshot) -> Iterator[Metric]:
    yield _counter(
        "assistant_tasks_fired", "Scheduled task firings that ran, since start.", snap.tasks_fired
    )
    yield _counter(
        "assistant_tasks_failed",
        "Task firings that failed or were refused, since start.",
        snap.tasks_failed,
    )
    yield _counter(
        "assistant_tasks_missed",
        "Task firings recorded missed (the service was down), since start.",
        snap.tasks_missed,
    )
    if snap.stored is not None:
        tasks = GaugeMetricFamily(
            "assistant_tasks", "Tasks by status (active, paused, done).", labels=["status"]
        )
        for status in sorted({"active", "paused", "done", *snap.stored.tasks_by_status}):
            tasks.add_metric([status], snap.stored.tasks_by_status.get(status, 0))
        yield tasks


def _gpu_families(gpus: Sequence[GpuInfo]) -> Iterator[Metric]:
    used = GaugeMetricFamily(
        "assistant_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu", "name"]
    )
    total = GaugeMetricFamily(
        "assistant_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=["gpu", "name"]
    )
    util = GaugeMetricFamily(
        "assistant_gpu_utilization_ratio",
        "Share of the last sample period the GPU was busy, 0 to 1 (NVML).",
        labels=["gpu", "name"],
    )
    for gpu in gpus:
        labels = [str(gpu.index), gpu.name]
        used.add_metric(labels, gpu.mem_used_mb * MIB)
        total.add_metric(labels, gpu.mem_total_mb * MIB)
        util.add_metric(labels, gpu.util_percent / 100)
    yield used
    yield total
    yield util


def _run_families(snap: Snapshot, stored: StoredFigures) -> Iterator[Metric]:
    recipe_of = _capped(
        [r.recipe for r in stored.active] + [recipe for _, recipe, _ in stored.runs_by_state],
        MAX_RECIPES,
    )
    by_state = GaugeMetricFamily(
        "assistant_runs",
        "Runs recorded, by state and recipe (active states and ended ones).",
        labels=["state", "recipe"],
    )
    grouped: Counter[tuple[str, str]] = Counter()
    for state, recipe, count in stored.runs_by_state:
        grouped[(state, recipe_of(recipe))] += count
    for (state, recipe), count in sorted(grouped.items()):
        by_state.add_metric([state, recipe], count)
    yield by_state

    queued = [r for r in stored.active if r.state == "queued"]
    waits = [
        max(0.0, snap.now - from_iso(r.queued_since).timestamp()) for r in queued if r.queued_since
    ]
    yield _gauge("assistant_run_queue_length", "Runs waiting for a GPU or a CPU slot.", len(queued))
    yield _gauge(
        "assistant_run_queue_oldest_wait_seconds",
        "How long the run waiting longest has waited (0 when none waits).",
        max(waits, default=0.0),
    )

    shown = stored.active[:MAX_RUN_SERIES]
    yield _gauge(
        "assistant_runs_active_unlisted",
        f"Active runs beyond the first {MAX_RUN_SERIES}, which get no series of their own.",
        len(stored.active) - len(shown),
    )
    labels = ["run_id", "recipe"]
    step = GaugeMetricFamily("assistant_run_step", "An active run's latest step.", labels=labels)
    total = GaugeMetricFamily(
        "assistant_run_total_steps", "An active run's planned steps.", labels=labels
    )
    loss = GaugeMetricFamily("assistant_run_loss", "An active run's latest loss.", labels=labels)
    tokens = GaugeMetricFamily(
        "assistant_run_tokens_per_second", "An active run's reported throughput.", labels=labels
    )
    steps = GaugeMetricFamily(
        "assistant_run_steps_per_second", "An active run's steps per second.", labels=labels
    )
    wait = GaugeMetricFamily(
        "assistant_run_queue_wait_seconds", "How long a queued run has waited.", labels=labels
    )
    gpu_mem = GaugeMetricFamily(
        "assistant_run_gpu_memory_used_bytes",
        "Memory in use on each GPU an active run holds (NVML, whole device).",
        labels=[*labels, "gpu"],
    )
    by_index = {g.index: g for g in snap.gpus}
    for run in shown:
        names = [run.id, recipe_of(run.recipe)]
        step.add_metric(names, run.step)
        if run.total:
            total.add_metric(names, run.total)
        if run.loss is not None:
            loss.add_metric(names, run.loss)
        live = snap.live.get(run.id)
        if live is not None and live.tokens_per_s is not None:
            tokens.add_metric(names, live.tokens_per_s)
        if live is not None and live.steps_per_s is not None:
            steps.add_metric(names, live.steps_per_s)
        if run.state == "queued" and run.queued_since:
            wait.add_metric(names, max(0.0, snap.now - from_iso(run.queued_since).timestamp()))
        for index in run.gpus:
            gpu = by_index.get(index)
            if gpu is not None:
                gpu_mem.add_metric([*names, str(index)], gpu.mem_used_mb * MIB)
    yield from (step, total, loss, tokens, steps, wait, gpu_mem)


def _usage_families(usage: Sequence[ModelUsage]) -> Iterator[Metric]:
    model_of = _capped([u.model for u in usage], MAX_MODELS)
    calls = CounterMetricFamily("assistant_model_calls", "Model API calls.", labels=["model"])
    tokens = CounterMetricFamily(
        "assistant_model_tokens",
        "Model tokens as the API reported them, by kind (input, output, cache_read, cache_write).",
        labels=["model", "kind"],
    )
    cost = CounterMetricFamily(
        "assistant_model_cost_usd", "What the model calls cost, in US dollars.", labels=["model"]
    )
    summed_calls: Counter[str] = Counter()
    summed_cost: dict[str, float] = {}
    summed_tokens: Counter[tuple[str, str]] = Counter()
    for row in usage:
        model = model_of(row.model)
        summed_calls[model] += row.calls
        summed_cost[model] = summed_cost.get(model, 0.0) + row.cost_usd
        for kind, n in row.tokens.items():
            summed_tokens[(model, kind)] += n
    for model in sorted(summed_calls):
        calls.add_metric([model], summed_calls[model])
        cost.add_metric([model], summed_cost[model])
        for kind in TOKEN_KINDS:
            tokens.add_metric([model, kind], summed_tokens[(model, kind)])
    yield from (calls, tokens, cost)


# ---- the service's metrics -----------------------------------------------------------------


class Metrics:
    """One per service instance: its registry, the command histogram, and the scrape."""

    def __init__(self, command_names: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._commands = frozenset(command_names)
        self.command_seconds = Histogram(
            "assistant_command_duration_seconds",
            "How long built-in commands took to answer, by command (unknown ones: other).",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.command_errors = PromCounter(
            "assistant_command_errors",
            "Built-in commands that answered with an error, by command.",
            ["command"],
            registry=self.registry,
        )
        for name in sorted(self._commands):  # every command has series before its first use
            self.command_seconds.labels(name)
            self.command_errors.labels(name)
        ProcessCollector(registry=self.registry)
        self._usage: dict[str, ModelUsage] = {}  # by model, summed over the rows read
        self._usage_last_id = 0
        self._scrape = ScrapeCollector()
        self.registry.register(self._scrape)
        self._lock = asyncio.Lock()

    def command_label(self, name: str | None) -> str:
        return name if name is not None and name in self._commands else OTHER

    def observe_command(self, name: str | None, seconds: float, *, ok: bool) -> None:
        """Record one command's latency; a name that is not a registered command is `other`."""
        label = self.command_label(name)
        self.command_seconds.labels(label).observe(max(0.0, seconds))
        if not ok:
            self.command_errors.labels(label).inc()

    async def exposition(self, services: Scraped) -> bytes:
        """The text format of every series, as Prometheus reads it.

        Scrapes run one at a time: the collector holds one scrape's figures while the
        worker thread renders them.
        """
        async with self._lock:
            snapshot = await gather(services, self._usage_last_id)
            if snapshot.stored is not None:
                for row in snapshot.stored.usage:
                    self._usage.setdefault(row.model, ModelUsage(row.model)).add(row)
                self._usage_last_id = snapshot.stored.usage_last_id
            snapshot.usage = list(self._usage.values())
            self._scrape.snapshot = snapshot
            try:
                return await asyncio.to_thread(_render, self.registry, snapshot)
            finally:
                self._scrape.snapshot = None

    def handler(self, services: Scraped) -> Callable[[web.Request], Any]:
        """The aiohttp handler for `GET /metrics`."""

        async def metrics(request: web.Request) -> web.Response:
            body = await self.exposition(services)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        return metrics


def _render(registry: CollectorRegistry, snapshot: Snapshot) -> bytes:
    """Worker thread: NVML (it can take milliseconds per device) and the text."""
    snapshot.gpus = snapshot.host.gpus()
    return generate_latest(registry)


async def gather(services: Scraped, usage_after: int = 0) -> Snapshot:
    """A scrape's figures: one read on the db thread, the rest copied from memory."""
    try:
        stored: StoredFigures | None = await services.db.read_sync(read_stored, usage_after)
    except Exception as exc:  # a scrape reports what it can; the gauge says what is missing
        log.warning("metrics: the database could not be read: %s", exc)
        stored = None
    writer = services.log.stats
    queue = services.queue.status()
    counts = services.scheduler.counts
    return Snapshot(
        now=time.time(),
        started_at=_unix(services.started_at),
        stored=stored,
        live={
            run_id: LiveRun(live.tokens_per_s, live.steps_per_s)
            for run_id, live in list(services.monitor.live.items())
        },
        channels=[
            ChannelFigures(c.name, c.is_connected, c.skipped, send_stats(c))
            for c in services.channels
        ],
        chat_queue_active=queue.active,
        chat_queue_waiting=queue.waiting,
        chat_queue_limit=queue.max_concurrent,
        tasks_fired=counts.fired,
        tasks_failed=counts.failed,
        tasks_missed=counts.missed,
        log_written=writer.written,
        log_dropped=writer.dropped,
        log_failures=writer.failures,
        log_pending=services.log.pending,
        log_last_flush_s=writer.last_flush_ms / 1000,
        log_lag_s=services.log.lag_s(time.time_ns() // 1_000_000),
        monitor_lines_skipped=services.monitor.lines_skipped,
        trace_spans_dropped=None if services.log.tap is None else services.log.tap.dropped,
        host=services.host,
    )


def _unix(moment: datetime) -> float:
    return moment.timestamp()
