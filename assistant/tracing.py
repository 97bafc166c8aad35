"""OpenTelemetry traces of the event chain, exported over OTLP/HTTP (ASSISTANT_OTLP_ENDPOINT).

Optional: the `otel` extra. Nothing here imports OpenTelemetry: the spans are built and
exported in a process of their own (`assistant.tracing_worker`), so the service runs
without the extra; asked to trace without it, it says so in one line.

Why another process: the OpenTelemetry SDK builds spans in pure Python, and in the
service's interpreter that work held the GIL against the event loop and the database
writer (an ingest burst went at half the rate). Here the service's part is small:

- the event log hands every row to `ChainTracer.take` as it is logged (the EventLog's
  `tap`), which only appends it to a bounded queue (full: the row's span is dropped and
  counted);
- one thread wakes every `poll_s`, keeps of each row what a span shows (ids, names,
  times, ok, the source id, the redacted target and error: never message text, tool inputs
  or outputs), and writes them, pickled in batches, down a pipe to the exporter process;
- the exporter process (started with only the endpoint and its own settings in its
  environment) builds the spans, waits for parents, exports, and reports what it did.

Exporting never blocks or fails the service: a full queue, a pipe that does not drain, an
exporter process that ends, or a batch the collector did not take (down, slow, refusing)
drops those spans and counts them (`stats`). An exporter process that ends is started
again after a pause, a few times; then tracing is off, said in one line, and the rows are
counted as dropped.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import importlib.util
import logging
import os
import select
import subprocess
import sys
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from assistant.observability import ActionRow, EventLog, EventRow, RowKind, ToolRow
from assistant.redaction import Redactor
from assistant.tracing_worker import (
    ACTION,
    EVENT,
    FATAL_EXIT,
    MODEL_CALL,
    TOOL,
    Stats,
    frame,
    read_frame,
)

if TYPE_CHECKING:
    from assistant.config import Settings

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_S = 2.0  # per batch, retries included: a dead collector costs this, no more
INTAKE_ROWS = 20_000  # rows waiting to be shipped (and, in the exporter, to become spans)
KNOWN_IDS = 50_000  # events and actions remembered as parents of rows still to come
WAITING_ROWS = 10_000  # rows waiting for their parent
MAX_WAIT_S = 1800.0  # the longest an action is waited for (the longest an action lasts)
FRAME_ROWS = 4096  # rows per write down the pipe
SEND_TIMEOUT_S = 5.0  # a pipe that takes no bytes this long: the exporter process is stuck
RESTARTS = 3  # times an exporter process that ended is started again, then tracing is off
RESTART_PAUSE_S = 1.0  # doubled at each restart
HEALTHY_S = 600.0  # an exporter process that lived this long earns its restarts back
PIPE_BYTES = 1 << 20
_ERROR_CHARS = 500
_ROOT = str(Path(__file__).resolve().parents[1])  # where `assistant` is imported from
# What the exporter process gets of the service's environment: what finds Python, the
# locale, and what an HTTPS request to the collector needs (proxies, certificates), plus
# OpenTelemetry's own settings (OTEL_*: the service name, headers for the collector).
# Never the service's secrets (tokens, API keys, ASSISTANT_*).
_PASSED_ENV = frozenset(
    {
        "PATH",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        *(p + s for p in ("HTTP", "HTTPS", "ALL", "NO") for s in ("_PROXY",)),
        *(p + s for p in ("http", "https", "all", "no") for s in ("_proxy",)),
    }
)


@dataclass
class TraceStats:
    """What tracing has done; /debug report shows it, metrics may export it."""

    exported: int = 0
    intake_dropped: int = 0  # the queue was full (written on the event loop only)
    export_dropped: int = 0  # the collector did not take them (written by the reading
    #   thread only)
    lost: int = 0  # not taken by an exporter process: it was behind (the pipe full),
    #   stuck, restarting or off, or it ended with them (written by the shipping thread only)
    failed_exports: int = 0
    last_error: str | None = None
    failing_since: float | None = None  # time.time() of the first failure of a bad stretch
    restarts: int = 0

    @property
    def dropped(self) -> int:
        """Spans lost, for whatever reason: the figure to watch."""
        return self.intake_dropped + self.export_dropped + self.lost


def traces_url(endpoint: str) -> str | None:
    """The OTLP/HTTP traces URL of a base endpoint (…:4318) or a full one (…/v1/traces);
    None if it is not an http(s) URL."""
    endpoint = endpoint.strip()
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def worker_env() -> dict[str, str]:
    """The exporter process's environment: see `_PASSED_ENV`."""
    env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV or k.startswith("OTEL_")}
    env["PYTHONPATH"] = _ROOT
    return env


def start_tracing(settings: Settings, event_log: EventLog, redactor: Redactor) -> None:
    """Trace the event chain to ASSISTANT_OTLP_ENDPOINT, when it is set.

    Never stops the start: a missing extra or an endpoint that is not a URL is one line in
    the log, and the service runs without traces.
    """
    endpoint = settings.otlp_endpoint
    if not endpoint:
        return
    url = traces_url(endpoint)
    if url is None:
        log.warning(
            "ASSISTANT_OTLP_ENDPOINT=%r is not an http(s) URL (e.g. http://127.0.0.1:4318):"
            " no traces",
            endpoint,
        )
        return
    missing = _missing_extra()
    if missing is not None:
        log.warning(
            "ASSISTANT_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s; install"
            " the otel extra: pip install 'gpu-chatops-assistant[otel]'): no traces",
            missing,
        )
        return
    tracer = ChainTracer(url, redactor, destination=redactor(url))
    if tracer.attach(event_log):
        log.info("tracing the event chain to %s", tracer.destination)


def _missing_extra() -> str | None:
    """The module of the otel extra that cannot be imported, if any (found, not imported:
    the exporter process imports them)."""
    for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ImportError as exc:
            return exc.name or name
    return None


def stop_tracing(event_log: EventLog, timeout_s: float = 5.0) -> None:
    """Detach and shut down the tracer (blocking up to `timeout_s`: run it in a thread)."""
    tracer = event_log.tap
    if isinstance(tracer, ChainTracer):
        event_log.tap = None
        tracer.shutdown(timeout_s)


class ChainTracer:
    """Rows of the event log in, shipped to the exporter process; see the module's
    docstring."""

    def __init__(
        self,
        url: str,
        redactor: Redactor,
        *,
        destination: str = "",
        intake_rows: int = INTAKE_ROWS,
        known_ids: int = KNOWN_IDS,
        waiting_rows: int = WAITING_ROWS,
        max_wait_s: float = MAX_WAIT_S,
        poll_s: float = 0.2,
        restarts: int = RESTARTS,
    ) -> None:
        self.stats = TraceStats()
        self.destination = destination or url
        self._clean = redactor
        self._intake: deque[tuple[RowKind, tuple[Any, ...], int]] = deque()
        self._intake_rows = intake_rows
        self._config: dict[str, Any] = {
            "url": url,
            "destination": self.destination,
            "export_timeout_s": EXPORT_TIMEOUT_S,
            "known_ids": known_ids,
            "waiting_rows": waiting_rows,
            "max_wait_s": max_wait_s,
            "poll_s": poll_s,
            "queue_rows": intake_rows,
        }
        self._poll_s = poll_s
        self._restarts = restarts
        self._floor = 0  # ids below were logged before tracing started
        self._last_id = 0  # the last row shipped: a new exporter process starts after it
        self._row_bytes = 32  # a shipped row's size, as last seen
        self._worker: _Worker | None = None
        self._done = _Done()  # what exporter processes that ended had done
        self._restart_at = 0.0
        self._off: str | None = None  # why tracing is off, once it is
        self._closed = False
        self._deadline = 0.0  # of the shutdown
        self._wake = threading.Event()
        self._flushes = threading.Condition()
        self._flush_asked = 0
        self._flush_sent = 0
        self._flushed = 0
        self._thread = threading.Thread(target=self._run, name="trace-shipper", daemon=True)

    # ---- the event loop's side ---------------------------------------------------------

    def attach(self, event_log: EventLog) -> bool:
        """Start seeing the log's rows (after `EventLog.start`: ids continue the stored
        ones). False, with one line in the log, if the exporter process cannot start."""
        self._floor = event_log.new_id()
        self._worker = self._spawn()
        if self._worker is None:
            return False
        event_log.tap = self
        self._thread.start()
        return True

    def take(self, kind: RowKind, row: EventRow | ActionRow | ToolRow, at_ns: int) -> None:
        """A row just logged; never blocks, never raises."""
        if self._closed or len(self._intake) >= self._intake_rows:
            self.stats.intake_dropped += 1
            return
        self._intake.append((kind, row, at_ns))

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    @property
    def worker_pid(self) -> int | None:
        """The exporter process's pid, while there is one."""
        worker = self._worker
        return None if worker is None or worker.gone.is_set() else worker.pid

    def describe(self) -> str:
        """One line for /debug report."""
        s = self.stats
        line = f"Traces: to {self.destination or 'an exporter'}, {s.exported:,} spans exported"
        if self._off is not None:
            line += f"; tracing is off: {self._off}"
        if not s.dropped:
            return line + ", none dropped"
        line += f", {s.dropped:,} dropped"
        why = []
        if s.intake_dropped:
            why.append(f"{s.intake_dropped:,} while the queue was full")
        if s.lost:
            why.append(f"{s.lost:,} not taken by the exporter process")
        if why:
            line += f" ({', '.join(why)})"
        if s.failing_since is not None:
            since = time.strftime("%H:%M:%S UTC", time.gmtime(s.failing_since))
            line += f"; the collector has not taken spans since {since}: {s.last_error}"
        return line

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ship what is left, let the exporter process export it (rows still waiting for a
        parent become roots) and end; within `timeout_s`, then it is stopped."""
        if self._closed:
            return
        self._deadline = time.monotonic() + timeout_s
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 1.0)
        elif self._worker is not None:  # never attached: nothing to ship
            self._worker.kill()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every row taken so far is exported or dropped (rows waiting for a
        parent excepted); for tests. False if that took longer."""
        if self._closed and not self._thread.is_alive():
            return not self._intake  # shut down: nothing will move any more
        with self._flushes:
            self._flush_asked += 1
            token = self._flush_asked
        self._wake.set()
        with self._flushes:
            return self._flushes.wait_for(lambda: self._flushed >= token, timeout_s)

    # ---- the shipping thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._poll_s)
            self._wake.clear()
            closing = self._closed
            try:
                self._tick(closing)
            except Exception:  # a bug here must never end tracing, let alone the service
                log.exception("traces: shipping rows failed")
            if closing:
                return

    def _tick(self, closing: bool) -> None:
        worker = self._worker
        if worker is not None and worker.gone.is_set():  # it ended on its own
            self._bury(worker)
            self._worker = None
            if not closing:
                self._after_end(*worker.ending)
            worker = None
        restart = worker is None and self._off is None and not closing
        if restart and time.monotonic() >= self._restart_at:
            worker = self._worker = self._spawn()
        pop = self._intake.popleft
        rows = [pop() for _ in range(len(self._intake))]
        if rows:
            self._ship(worker, rows)
        if self._flush_asked > self._flush_sent:
            self._flush_sent = self._flush_asked
            if worker is None or not worker.send(frame("flush", self._flush_sent), self._limit()):
                self._answer_flushes()  # nobody to export them: they were counted as lost
        if closing:
            self._finish()

    def _limit(self) -> float:
        limit = time.monotonic() + SEND_TIMEOUT_S
        return min(limit, self._deadline) if self._closed else limit

    def _ship(
        self, worker: _Worker | None, rows: list[tuple[RowKind, tuple[Any, ...], int]]
    ) -> None:
        if worker is None:
            self.stats.lost += len(rows)
            return
        for first in range(0, len(rows), FRAME_ROWS):
            chunk = rows[first : first + FRAME_ROWS]
            # Behind (its queue full, the pipe too): drop these before any work on them.
            if not worker.has_room(len(chunk) * self._row_bytes):
                self.stats.lost += len(chunk)
                continue
            part = _slim(chunk, self._clean)
            data = frame("rows", part)
            self._row_bytes = len(data) // len(part) + 1
            if not worker.has_room(len(data)):
                self.stats.lost += len(part)
                continue
            if not worker.send(data, self._limit()):
                # dead, or stuck for SEND_TIMEOUT_S: a torn frame cannot be resumed
                self.stats.lost += len(rows) - first
                worker.kill()
                return
            worker.sent += len(part)
            self._last_id = part[-1][1]

    def _spawn(self) -> _Worker | None:
        config = dict(self._config, floor=max(self._floor, self._last_id))
        try:
            return _Worker(config, self._on_message)
        except OSError as exc:
            self._switch_off(f"the exporter process could not start ({exc})")
            return None

    def _bury(self, worker: _Worker) -> None:
        """Fold an ended process's counts into the totals; what it had not accounted for
        (rows waiting for a parent, in its queue, in the pipe) is lost."""
        worker.wait(1.0)
        if worker.alive():  # its reports stopped making sense: end it
            worker.kill()
            worker.wait(1.0)
        s = worker.stats
        self._done.add(s)
        self.stats.lost += max(0, worker.sent - s.exported - s.export_dropped)
        self._answer_flushes()

    def _after_end(self, fatal: str | None, code: int | None, lived_s: float) -> None:
        """Start it again after a pause, a few times; or switch tracing off."""
        if fatal is not None or code == FATAL_EXIT:
            self._switch_off(f"the exporter process cannot trace: {fatal or 'it says so'}")
            return
        if lived_s >= HEALTHY_S:
            self.stats.restarts = 0
        if self.stats.restarts >= self._restarts:
            self._switch_off(
                f"the exporter process ended {self.stats.restarts + 1} times (last exit code"
                f" {code})"
            )
            return
        pause = RESTART_PAUSE_S * 2**self.stats.restarts
        self.stats.restarts += 1
        self._restart_at = time.monotonic() + pause
        log.warning(
            "traces: the exporter process ended (exit code %s); its spans are dropped and"
            " counted, and it starts again in %.0f s",
            code,
            pause,
        )

    def _switch_off(self, why: str) -> None:
        self._off = why
        log.warning("traces: %s; tracing is off, spans are dropped and counted", why)

    def _finish(self) -> None:
        """Closing: the exporter process exports what it has and ends, within the limit."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.send(frame("stop", None), self._limit()):
            worker.wait(max(0.0, self._deadline - time.monotonic()))
        if worker.alive():
            log.warning(
                "traces: the exporter process did not finish in time; what it held is dropped"
            )
            worker.kill()
        self._bury(worker)

    def _answer_flushes(self) -> None:
        with self._flushes:
            self._flushed = self._flush_sent
            self._flushes.notify_all()

    # ---- the reading thread (one per exporter process) ---------------------------------

    def _on_message(self, worker: _Worker, tag: str, value: Any) -> None:
        if tag == "stats":
            worker.stats = Stats(*value)
            self._publish(worker.stats)
        elif tag == "log":
            level, text = value
            log.log(int(level), "%s", self._clean(str(text)))
        elif tag == "flushed":
            with self._flushes:
                self._flushed = max(self._flushed, int(value))
                self._flushes.notify_all()
        elif tag == "fatal":
            worker.fatal = self._clean(str(value))
        elif tag == "gone":
            self._wake.set()

    def _publish(self, current: Stats) -> None:
        done, st = self._done, self.stats
        st.exported = done.exported + current.exported
        st.export_dropped = done.export_dropped + current.export_dropped
        st.failed_exports = done.failed_exports + current.failed_exports
        if current.last_error is not None:
            st.last_error = self._clean(current.last_error)
        st.failing_since = current.failing_since


@dataclass
class _Done:
    """The summed counts of exporter processes that ended, and how the last one ended."""

    exported: int = 0
    export_dropped: int = 0
    failed_exports: int = 0

    def add(self, s: Stats) -> None:
        self.exported += s.exported
        self.export_dropped += s.export_dropped
        self.failed_exports += s.failed_exports


class _Worker:
    """One exporter process: its pipes, and the thread that reads what it reports."""

    def __init__(self, config: dict[str, Any], on_message: Any) -> None:
        self.sent = 0  # rows written to it
        self.stats = Stats()
        self.fatal: str | None = None
        self.gone = threading.Event()
        self._on_message = on_message
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.tracing_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=worker_env(),
            cwd=_ROOT,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        self._pipe_bytes = 0  # the pipe's size, when known (Linux)
        with contextlib.suppress(OSError, AttributeError):
            self._pipe_bytes = fcntl.fcntl(self._in, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        with contextlib.suppress(OSError, AttributeError):
            self._pipe_bytes = self._pipe_bytes or fcntl.fcntl(self._in, fcntl.F_GETPIPE_SZ)
        os.set_blocking(self._in, False)
        self._reader = threading.Thread(target=self._read, name="trace-reports", daemon=True)
        self._reader.start()
        self.send(frame("config", config), time.monotonic() + SEND_TIMEOUT_S)

    def has_room(self, size: int) -> bool:
        """Whether the pipe takes `size` bytes now (True when that cannot be known)."""
        if not self._pipe_bytes:
            return True
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(self._in, termios.FIONREAD, unread)
        except OSError:
            return True
        return self._pipe_bytes - unread[0] >= size

    def send(self, data: bytes, deadline: float) -> bool:
        """Write one whole frame by `deadline`; False if the process is gone or stuck
        (then a part may have been written: the caller must end the process)."""
        view = memoryview(data)
        while view:
            if self.gone.is_set():
                return False
            try:
                view = view[os.write(self._in, view) :]
            except BlockingIOError:
                pass
            except OSError:  # BrokenPipeError: it ended
                return False
            if view:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                select.select([], [self._in], [], min(left, 0.1))
        return True

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = read_frame(self._out)
                except Exception:  # a torn report: it is ending
                    message = None
                if message is None:
                    return
                try:
                    self._on_message(self, *message)
                except Exception:
                    log.exception("traces: a report of the exporter process was not understood")
        finally:
            self.gone.set()
            self._on_message(self, "gone", None)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout_s)
        if self._proc.poll() is not None:
            self._reader.join(1.0)
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()

    @property
    def ending(self) -> tuple[str | None, int | None, float]:
        return self.fatal, self._proc.returncode, time.monotonic() - self._started


def _slim(
    rows: list[tuple[RowKind, tuple[Any, ...], int]], clean: Redactor
) -> list[tuple[Any, ...]]:
    """What a span shows of each row (see `assistant.tracing_worker`), texts redacted.

    The per-row work of tracing that stays in the service: kept to tuple building and one
    dict look-up per text (a value seen earlier in the batch is not redacted again; the
    memo lives one batch, so a secret the redactor learns applies from the next).
    """
    out: list[tuple[Any, ...]] = []
    add = out.append
    seen: dict[str, str] = {}
    for kind, row, at in rows:
        if kind == "event":
            # A source id (a chat, a run, a platform message id) is stored as it is in
            # event_log too: an id, never free text, so it is not redacted here either.
            add((EVENT, row[0], row[1], row[2], row[3], at))
        elif kind == "action":
            target, content, error = row[3], None, row[6]
            if target is not None:
                masked = seen.get(target)
                if masked is None:
                    masked = seen[target] = clean(str(target))
                target = masked
            if row[2] == MODEL_CALL and row[4] is not None:
                content = clean(str(row[4]))  # its usage; one per model turn
            if error is not None:
                error = clean(str(error))[:_ERROR_CHARS]
            add((ACTION, row[0], row[1], row[2], target, content, row[5], error, at))
        else:
            error = row[7]
            if error is not None:
                error = clean(str(error))[:_ERROR_CHARS]
            add((TOOL, row[0], row[1], row[2], row[5], row[6], error, at))
    return out
