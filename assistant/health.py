"""`/healthz`: is every part the service needs working right now?

Five checks, each cheap and bounded in time, so a supervisor may probe often and a dead
dependency never makes the probe itself hang:

- process: answering at all is the proof;
- event_log: the chain's writer is not failing its flushes, and rows are not stuck
  waiting (judged from `EventLog.stats` between probes: no private state is read);
- database: a real write and read on its own short-lived connection (`BEGIN IMMEDIATE`,
  a kv row written and read back, rolled back), with a 1 s lock timeout;
- channels: each chat channel connected (`Channel.is_connected`);
- engine: the runner's engine answers its ping within 2 s (the process runner always
  "answers"); the result is kept 2 s, and concurrent probes share one ping, so a burst of
  probes costs the engine one request. `/status` reads the same probe (`engine_probe`).

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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from assistant.config import load_settings
from assistant.errors import ConfigError, EngineUnavailable
from assistant.http_server import ENDPOINT_FILE
from assistant.observability import EventLog
from assistant.runs.runner import Runner

if TYPE_CHECKING:
    from assistant.services import Services

OK = "ok"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
PROBLEM_CHARS = 200  # a problem is one short line, not a traceback


class EngineProbe:
    """Whether the runner's engine answers: one bounded ping per `cache_s` at most.

    Concurrent askers share the one ping in flight, so /healthz probes and /status
    together cost the engine one request per `cache_s`, and none waits longer than the
    ping's bound (`timeout_s` plus half a second).
    """

    def __init__(self, runner: Runner, *, timeout_s: float = 2.0, cache_s: float = 2.0) -> None:
        self.runner = runner
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = asyncio.Lock()
        self._last: tuple[float, str] | None = None  # (when, result)

    async def check(self, max_age_s: float | None = None) -> str:
        """ "ok", or "unreachable: <why>"; a result younger than `max_age_s` (default
        `cache_s`) is given again without asking."""
        age = self.cache_s if max_age_s is None else max_age_s
        async with self._lock:  # a burst of probes waits for the one ping
            last = self._last
            if last is not None and time.monotonic() - last[0] < age:
                return last[1]
            try:
                await self.runner.ping(self.timeout_s)
                result = OK
            except EngineUnavailable as exc:  # its message names the address and why
                result = _short(f"unreachable: {exc}")
            except Exception as exc:
                result = _short(f"unreachable: {_describe(exc)}")
            self._last = (time.monotonic(), result)
            return result


_PROBES: weakref.WeakKeyDictionary[Runner, EngineProbe] = weakref.WeakKeyDictionary()


def engine_probe(runner: Runner) -> EngineProbe:
    """The one probe of this runner's engine, shared by /healthz and /status."""
    probe = _PROBES.get(runner)
    if probe is None:
        probe = _PROBES[runner] = EngineProbe(runner)
    return probe


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
        self._engine = engine_probe(services.runs.runner)
        self._engine.timeout_s = engine_timeout_s
        self._engine.cache_s = engine_cache_s
        self._db_timeout_s = db_timeout_s
        self._event_log = EventLogWatch(services.log)

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
        return await self._engine.check()

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
