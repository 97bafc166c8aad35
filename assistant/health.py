"""`/healthz`: is every part the service needs working right now?

Five checks, each cheap and bounded in time, so a supervisor may probe often and a dead
dependency never makes the probe itself hang:

- process: answering at all is the proof;
- event_log: the chain's writer is not failing its flushes, and rows are not stuck
  waiting (judged from `EventLog.stats` between probes: no private state is read);
- database: a real write and read on its own short-lived connection (`BEGIN IMMEDIATE`,
  a kv row written and read back, rolled back), with a 1 s lock timeout;
- channels: each chat channel connected (`Channel.is_connected`);
- engine: the Docker engine answers its ping within 2 s (the process runner always
  "answers"); the result is kept 2 s, and concurrent probes share one ping, so a burst of
  probes costs the engine one request.

The answer is 200 when every check is "ok" (a channel "connected"), else 503; the body is
always JSON: {"status": "ok" | "unhealthy", "checks": {...}}, each problem one short line.

`python -m assistant.health [--wait SECONDS]` asks a running service from outside (a
compose or Dockerfile healthcheck, systemd's ExecStartPost): it finds the listener through
ASSISTANT_HOME/http.json, prints the body (or why there is none) and exits 0 when healthy,
1 otherwise; `--wait` keeps asking until healthy or the time is up (a service starting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from aiohttp import web

from assistant.config import load_settings
from assistant.errors import ConfigError
from assistant.http_server import ENDPOINT_FILE
from assistant.observability import EventLog

if TYPE_CHECKING:
    from assistant.services import Services

OK = "ok"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
PROBLEM_CHARS = 200  # a problem is one short line, not a traceback


@runtime_checkable
class Pingable(Protocol):
    """A runner whose engine can be asked, cheaply and within a bound, whether it answers."""

    async def ping(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class HealthReport:
    checks: dict[str, str | dict[str, str]]

    @property
    def healthy(self) -> bool:
        for value in self.checks.values():
            states = value.values() if isinstance(value, dict) else [value]
            if any(state not in (OK, CONNECTED) for state in states):
                return False
        return True

    def body(self) -> dict[str, object]:
        return {"status": OK if self.healthy else "unhealthy", "checks": self.checks}


@dataclass
class EventLogWatch:
    """Judges the writer from its counters, compared with the previous probe's.

    Failing: failures grew and nothing was written since. Stuck: rows have waited, with
    nothing written and no failure counted, for longer than `stuck_after_s` (the writer
    flushes every 0.1-5 s, backing off to 5 s while the database refuses).
    """

    log: EventLog
    stuck_after_s: float = 30.0
    now: Callable[[], float] = time.monotonic
    _written: int = field(init=False)
    _failures: int = field(init=False)
    _pending: int = field(init=False)
    _progress_at: float = field(init=False)
    _failing: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._written = self.log.stats.written
        self._failures = self.log.stats.failures
        self._pending = self.log.pending
        self._progress_at = self.now()

    def check(self) -> str:
        stats, pending, now = self.log.stats, self.log.pending, self.now()
        wrote = stats.written > self._written
        # nothing waiting, it moved, or what waits may have come since the last probe
        if pending == 0 or wrote or self._pending == 0:
            self._progress_at = now
        if stats.failures > self._failures and not wrote:
            self._failing = stats.last_error or "a flush failed"
        elif wrote or pending == 0:
            self._failing = None
        self._written, self._failures, self._pending = stats.written, stats.failures, pending
        if self._failing is not None:
            return _short(f"failing: {pending} rows waiting; {self._failing}")
        waited = now - self._progress_at
        if pending and waited > self.stuck_after_s:
            return f"stuck: {pending} rows waiting, none written for {waited:.0f} s"
        return OK


class HealthChecks:
    """The checks over the running services; `run()` gives one report."""

    def __init__(
        self,
        services: Services,
        *,
        engine_timeout_s: float = 2.0,
        engine_cache_s: float = 2.0,
        db_timeout_s: float = 1.0,
    ) -> None:
        self._services = services
        self._engine_timeout_s = engine_timeout_s
        self._engine_cache_s = engine_cache_s
        self._db_timeout_s = db_timeout_s
        self._event_log = EventLogWatch(services.log)
        self._engine_lock = asyncio.Lock()
        self._engine: tuple[float, str] | None = None  # (when, result)

    async def run(self) -> HealthReport:
        database, engine = await asyncio.gather(self.database(), self.engine())
        redact = self._services.redactor
        return HealthReport(
            {
                "process": OK,
                "event_log": redact(self._event_log.check()),
                "database": redact(database),
                "channels": self.channels(),
                "engine": redact(engine),
            }
        )

    def channels(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for channel in self._services.channels:
            name = channel.name if channel.name not in states else f"{channel.name}-{len(states)}"
            try:
                states[name] = CONNECTED if channel.is_connected else DISCONNECTED
            except Exception as exc:  # a channel's property must not break the probe
                states[name] = _short(f"unknown: {type(exc).__name__}: {exc}")
        return states

    async def database(self) -> str:
        """A real write and read, on a connection of its own, bounded by its lock timeout.

        Its own connection: the service's one connection serialises writers behind an
        asyncio lock, and giving up on that wait mid-statement would leave a transaction
        open on the shared connection. This one is bounded by SQLite's own timeout.
        """
        path = self._services.db.path
        try:
            async with asyncio.timeout(self._db_timeout_s + 2):
                await asyncio.to_thread(_write_and_read, path, self._db_timeout_s)
        except TimeoutError:
            return f"no answer within {self._db_timeout_s + 2:g} s"
        except Exception as exc:
            return _short(f"not writable: {_describe(exc)}")
        return OK

    async def engine(self) -> str:
        """The runner's engine answers; one ping per `engine_cache_s` at most."""
        runner = self._services.runs.runner
        if not isinstance(runner, Pingable):
            return OK  # local processes: nothing between the service and its runs
        async with self._engine_lock:  # a burst of probes waits for the one ping
            cached = self._engine
            if cached is not None and time.monotonic() - cached[0] < self._engine_cache_s:
                return cached[1]
            try:
                await runner.ping(self._engine_timeout_s)
                result = OK
            except Exception as exc:
                result = _short(f"unreachable: {_describe(exc)}")
            self._engine = (time.monotonic(), result)
            return result

    async def handle(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 or 503, JSON either way."""
        report = await self.run()
        return web.json_response(report.body(), status=200 if report.healthy else 503)


def _write_and_read(path: Path, timeout_s: float) -> None:
    """BEGIN IMMEDIATE (the write lock), write a kv row, read it back, roll back."""
    stamp = secrets.token_hex(8)
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s, isolation_level=None
    )
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES ('healthz', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (stamp,),
            )
            row = conn.execute("SELECT value FROM kv WHERE key = 'healthz'").fetchone()
            if row is None or row[0] != stamp:
                raise sqlite3.DatabaseError("a row written was not read back")
        finally:
            conn.rollback()
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PROBLEM_CHARS else line[: PROBLEM_CHARS - 1] + "…"


# ---- asking a running service from outside -------------------------------------------------


def probe(home: Path, *, wait_s: float = 0, timeout_s: float = 5) -> tuple[bool, str]:
    """(healthy?, the body or why there is none), asking until healthy or `wait_s` passed.

    http.json is read again on each try: a service starting writes it once it listens,
    and one killed left a stale port behind that a new start replaces.
    """
    deadline = time.monotonic() + wait_s
    while True:
        healthy, said = _probe_once(home / ENDPOINT_FILE, timeout_s)
        if healthy or time.monotonic() >= deadline:
            return healthy, said
        time.sleep(0.5)


def _probe_once(endpoint: Path, timeout_s: float) -> tuple[bool, str]:
    try:
        url = str(json.loads(endpoint.read_text())["url"]) + "/healthz"
    except FileNotFoundError:
        return False, f"no {endpoint}: the service is not up, or ASSISTANT_HTTP=off"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{endpoint} is not readable: {_describe(exc)}"
    # Never through a proxy from the environment: the listener is this host's.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status == 200, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 503: the body says what is not well
        return False, exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return False, f"{url}: {_describe(exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assistant.health",
        description="Ask the running service's /healthz; exit 0 when healthy, else 1.",
    )
    parser.add_argument(
        "--wait", type=float, default=0, help="seconds to keep asking until healthy"
    )
    parser.add_argument("--timeout", type=float, default=5, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        home = load_settings().assistant_home
    except ConfigError as exc:
        print(f"assistant.health: {exc}", file=sys.stderr)
        return 1
    healthy, said = probe(home, wait_s=args.wait, timeout_s=args.timeout)
    print(said.strip(), file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
