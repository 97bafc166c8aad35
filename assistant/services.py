"""The running services, handed to command handlers as one explicit object."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.access import Access
from assistant.agent import Agent
from assistant.channels.base import Channel
from assistant.clock import Clock
from assistant.config import Settings
from assistant.hoststats import HostStats
from assistant.observability import EventLog
from assistant.queue import GroupQueue
from assistant.redaction import Redactor
from storage.chats import ChatRepo
from storage.db import Database
from storage.runs import RunRepo

if TYPE_CHECKING:
    from assistant.http_server import HttpServer
    from assistant.metrics import Metrics
    from assistant.reply import Reply
    from assistant.runs.manager import RunManager
    from assistant.runs.monitor import RunMonitor
    from assistant.runs.report import ShowProgress
    from assistant.runs.runner import Runner
    from assistant.scheduler import TaskScheduler
    from assistant.watch.poller import Watcher

# send(chat_id, reply, caused_by) -> delivered?
SendFn = Callable[[str, "str | Reply", "int | None"], Awaitable[bool]]


@dataclass
class Services:
    settings: Settings
    db: Database
    log: EventLog
    clock: Clock
    queue: GroupQueue
    scheduler: TaskScheduler
    channels: Sequence[Channel]
    chats: ChatRepo
    access: Access
    host: HostStats
    agent: Agent
    started_at: datetime
    send: SendFn
    runs: RunManager
    monitor: RunMonitor
    redactor: Redactor
    metrics: Metrics  # the instance's own registry: /metrics and the command histogram
    # the HTTP listener (/healthz, /metrics); None when ASSISTANT_HTTP=off. Routes are
    # added before the orchestrator starts it, once every service above exists.
    http: HttpServer | None = None
    # jobs launched elsewhere that /watch follows; None where watches are not started
    watches: Watcher | None = None


def build_runs(
    repo: RunRepo,
    runner: Runner,
    event_log: EventLog,
    settings: Settings,
    clock: Clock,
    send: SendFn,
    gpu_inventory: list[int],
    show_progress: ShowProgress | None,
) -> tuple[RunManager, RunMonitor]:
    """The run manager and the monitor, each given what it uses.

    They share the one `Lifecycle` (the only writer of a run's state) and an event the
    manager sets at each launch, which wakes the monitor to read the new run at once.
    """
    from assistant.runs.manager import RunManager
    from assistant.runs.monitor import RunMonitor

    launched = asyncio.Event()
    manager = RunManager(
        repo,
        runner,
        event_log,
        settings,
        clock,
        send,
        gpu_inventory,
        show_progress=show_progress,
        launched=launched,
    )
    monitor = RunMonitor(
        repo,
        runner,
        manager.lifecycle,
        event_log,
        send,
        settings,
        clock,
        dispatch=manager.dispatch,
        wake=launched,
        engine=manager.engine,
        signals=manager.signals,
        show_progress=show_progress,
    )
    return manager, monitor


def build_watcher(
    db: Database, event_log: EventLog, settings: Settings, clock: Clock, send: SendFn
) -> Watcher:
    """The watches' service (/watch): its repository masks what a job says, as runs do."""
    from assistant.watch.poller import Watcher
    from storage.watches import WatchRepo

    return Watcher(WatchRepo(db, shared_redactor(settings)), event_log, send, settings, clock)


def shared_redactor(settings: Settings) -> Redactor:
    """The process's one redactor for these settings, built on first use.

    The service log's formatter (set up before the service starts), the event log, the
    messages, every reply and the model all take it from here: a secret the redactor
    learns (a file added to the secrets folder) is then masked everywhere at once.
    """
    return _redactor(settings.secrets_dir, tuple(settings.secret_values()))


@functools.cache
def _redactor(secrets_dir: Path, secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets, secrets_dir=secrets_dir)
