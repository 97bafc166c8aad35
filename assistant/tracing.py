"""OpenTelemetry traces of the event chain, exported over OTLP/HTTP (ASSISTANT_OTLP_ENDPOINT).

Optional: the `otel` extra. Nothing here imports OpenTelemetry until tracing is started,
so the service runs without the extra; asked to trace without it, it says so in one line.

The event log hands every row to `ChainTracer.take` as it is logged (the EventLog's
`tap`), which only appends to a bounded queue: the event loop never builds, waits for or
exports a span. One thread turns the rows into spans and exports them:

- an event is a trace root, or a span under the action that caused it;
- an action is a span under the event that triggered it; a `model_call` action is a GenAI
  "chat <model>" span with the `gen_ai.*` attributes;
- a tool call is a span under its action;
- ok/failed is the span status (ERROR with the redacted error text).

Rows come before their parents (an action's row is logged when it ends, after its tool
calls and the events it caused), so a row whose parent is not known yet waits for it, at
most `max_wait_s`; one whose parent never comes (logged before tracing started, pruned,
too old to remember) becomes a root carrying the parent's id. Spans get the rows' times:
an action starts when its id was issued and ends when its row was logged; a tool call
ends when logged and lasted its duration.

Exporting never blocks or fails the service: a full queue, or a batch the collector did
not take (down, slow, refusing), drops those spans and counts them (`stats`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from assistant.observability import ActionRow, EventLog, EventRow, RowKind, ToolRow
from assistant.redaction import Redactor
from storage.ids import encode, time_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanContext

    from assistant.config import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "gpu-chatops-assistant"
TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_S = 2.0  # per batch, retries included: a dead collector costs this, no more
INTAKE_ROWS = 20_000  # rows waiting to become spans; beyond, a row's span is dropped
KNOWN_IDS = 50_000  # events and actions remembered as parents of rows still to come
WAITING_ROWS = 10_000  # rows waiting for their parent
MAX_WAIT_S = 1800.0  # the longest an action is waited for (the longest an action lasts)
BATCH_SPANS = 512
MODEL_CALL = "model_call"  # the Claude agent's action: see assistant/claude_agent.py
_ERROR_CHARS = 500


@dataclass
class TraceStats:
    """What the exporter has done; /debug report shows it, metrics may export it."""

    exported: int = 0
    intake_dropped: int = 0  # the queue was full (written on the event loop only)
    export_dropped: int = 0  # the collector did not take them (written on the thread only)
    failed_exports: int = 0
    last_error: str | None = None
    failing_since: float | None = None  # time.time() of the first failure of a bad stretch

    @property
    def dropped(self) -> int:
        """Spans lost, for whatever reason: the figure to watch."""
        return self.intake_dropped + self.export_dropped


@dataclass(slots=True)
class _Row:
    kind: RowKind
    id: int
    parent: int | None
    row: tuple[Any, ...]
    at_ns: int
    arrived: float


def traces_url(endpoint: str) -> str | None:
    """The OTLP/HTTP traces URL of a base endpoint (…:4318) or a full one (…/v1/traces);
    None if it is not an http(s) URL."""
    endpoint = endpoint.strip()
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


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
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        log.warning(
            "ASSISTANT_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s; install"
            " the otel extra: pip install 'gpu-chatops-assistant[otel]'): no traces",
            exc.name or exc,
        )
        return
    # The exporter logs every failed batch; the tracer counts them and says it once.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    exporter = OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT_S)
    tracer = ChainTracer(exporter, redactor, destination=url)
    tracer.attach(event_log)
    log.info("tracing the event chain to %s", url)


def stop_tracing(event_log: EventLog, timeout_s: float = 5.0) -> None:
    """Detach and shut down the tracer (blocking up to `timeout_s`: run it in a thread)."""
    tracer = event_log.tap
    if isinstance(tracer, ChainTracer):
        event_log.tap = None
        tracer.shutdown(timeout_s)


class ChainTracer:
    """Rows of the event log in, spans out; see the module's docstring."""

    def __init__(
        self,
        exporter: SpanExporter,
        redactor: Redactor,
        *,
        destination: str = "",
        intake_rows: int = INTAKE_ROWS,
        known_ids: int = KNOWN_IDS,
        waiting_rows: int = WAITING_ROWS,
        max_wait_s: float = MAX_WAIT_S,
        poll_s: float = 0.2,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.stats = TraceStats()
        self.destination = destination
        self._exporter = exporter
        self._clean = redactor
        self._intake: deque[tuple[RowKind, tuple[Any, ...], int]] = deque()
        self._intake_rows = intake_rows
        self._known: OrderedDict[int, tuple[SpanContext, int]] = OrderedDict()
        self._known_ids = known_ids
        self._forgotten = 0  # the largest id evicted from _known
        self._floor = 0  # ids below were logged before tracing started: never seen
        self._waiting: dict[int, _Row] = {}  # insertion-ordered: the oldest first
        self._children: dict[int, list[int]] = {}
        self._waiting_rows = waiting_rows
        self._max_wait_s = max_wait_s
        self._poll_s = poll_s
        self._ended: list[ReadableSpan] = []
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        self._provider = TracerProvider(
            resource=Resource.create(attributes), shutdown_on_exit=False
        )
        self._provider.add_span_processor(_collector(self._ended))
        self._tracer = self._provider.get_tracer("assistant.event_chain")
        self._closed = False
        self._busy = threading.Lock()  # held while a pass runs: flush() waits for it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trace-exporter", daemon=True)

    # ---- the event loop's side ---------------------------------------------------------

    def attach(self, event_log: EventLog) -> None:
        """Start seeing the log's rows (after `EventLog.start`: ids continue the stored ones)."""
        self._floor = event_log.new_id()
        event_log.tap = self
        self._thread.start()

    def take(self, kind: RowKind, row: EventRow | ActionRow | ToolRow, at_ns: int) -> None:
        """A row just logged; never blocks, never raises."""
        if self._closed or len(self._intake) >= self._intake_rows:
            self.stats.intake_dropped += 1
            return
        self._intake.append((kind, row, at_ns))

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def describe(self) -> str:
        """One line for /debug report."""
        s = self.stats
        line = f"Traces: to {self.destination or 'an exporter'}, {s.exported:,} spans exported"
        if not s.dropped:
            return line + ", none dropped"
        line += f", {s.dropped:,} dropped"
        if s.intake_dropped:
            line += f" ({s.intake_dropped:,} while the queue was full)"
        if s.failing_since is not None:
            since = time.strftime("%H:%M:%S UTC", time.gmtime(s.failing_since))
            line += f"; the collector has not taken spans since {since}: {s.last_error}"
        return line

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Trace what is left (rows still waiting for a parent become roots), export, stop."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():  # stuck exporting: drop the rest, the process goes on
            log.warning("traces: the exporter did not finish within %.0f s", timeout_s)
            return
        self._provider.shutdown()  # also shuts the exporter down

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every row taken so far is exported or dropped (rows waiting for a
        parent excepted); for tests and shutdown. False if that took longer."""
        deadline = time.monotonic() + timeout_s
        while self._intake or self._ended:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        with self._busy:
            return True

    # ---- the thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._pass()
        self._pass(final=True)

    def _pass(self, final: bool = False) -> None:
        try:
            with self._busy:
                while self._intake:
                    kind, row, at_ns = self._intake.popleft()
                    self._place(_row(kind, row, at_ns))
                self._expire(final)
                self._export()
        except Exception:  # a bug here must never end tracing, let alone the service
            log.exception("traces: a pass failed")

    def _place(self, row: _Row) -> None:
        parent = row.parent
        if parent is None:
            self._emit(row, None)
            return
        known = self._known.get(parent)
        if known is not None:
            self._emit(row, known)
        elif parent < self._floor or (parent <= self._forgotten and parent not in self._waiting):
            self._emit(row, None)  # before tracing started, or forgotten: it never comes
        else:
            self._waiting[row.id] = row
            self._children.setdefault(parent, []).append(row.id)

    def _expire(self, final: bool) -> None:
        """Rows that waited too long (or too many) become roots, with their siblings."""
        now = time.monotonic()
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            too_many = len(self._waiting) > self._waiting_rows
            if not (final or too_many or now - oldest.arrived > self._max_wait_s):
                return
            assert oldest.parent is not None
            siblings = self._children.pop(oldest.parent, [])
            for child_id in (oldest.id, *siblings):
                child = self._waiting.pop(child_id, None)
                if child is not None:
                    self._emit(child, None)

    def _emit(self, row: _Row, parent: tuple[SpanContext, int] | None) -> None:
        """The row's span, then every row that waited for it (an explicit stack: chains
        can be long)."""
        stack: list[tuple[_Row, tuple[SpanContext, int] | None]] = [(row, parent)]
        while stack:
            current, above = stack.pop()
            made = self._span(current, above)
            if current.kind == "tool":
                continue  # never a parent
            self._known[current.id] = made
            if len(self._known) > self._known_ids:
                gone, _ = self._known.popitem(last=False)
                self._forgotten = max(self._forgotten, gone)
            for child_id in self._children.pop(current.id, ()):
                child = self._waiting.pop(child_id, None)
                if child is not None:
                    stack.append((child, made))

    def _span(self, row: _Row, parent: tuple[SpanContext, int] | None) -> tuple[SpanContext, int]:
        from opentelemetry.context import Context
        from opentelemetry.trace import NonRecordingSpan, SpanKind, set_span_in_context

        shape = _shape(row, self._clean)
        start = shape.start_ns
        if parent is not None:
            context = set_span_in_context(NonRecordingSpan(parent[0]))
            start = max(start, parent[1])  # ids have millisecond times: never before the parent
        else:
            context = Context()
            if row.parent is not None:  # its parent is not in the trace: say which it was
                shape.attributes["assistant.parent_missing"] = encode(row.parent)
        span = self._tracer.start_span(
            shape.name,
            context=context,
            kind=SpanKind.CLIENT if shape.client else SpanKind.INTERNAL,
            attributes=shape.attributes,
            start_time=start,
        )
        if shape.ok is not None:
            span.set_status(_status(shape.ok, shape.error))
        span.end(end_time=max(shape.end_ns, start))
        return span.get_span_context(), start

    def _export(self) -> None:
        """Export what ended, in batches; once one fails, the rest of this pass is dropped
        too (the collector is down: trying each batch would only hold up the queue)."""
        ended, self._ended[:] = list(self._ended), []
        for first in range(0, len(ended), BATCH_SPANS):
            batch = ended[first : first + BATCH_SPANS]
            if self.stats.failing_since is not None and first > 0:
                self.stats.export_dropped += len(ended) - first
                return
            self._export_batch(batch)

    def _export_batch(self, batch: Sequence[ReadableSpan]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        stats = self.stats
        try:
            result = self._exporter.export(batch)
            error = None if result is SpanExportResult.SUCCESS else "the export failed"
        except Exception as exc:  # an exporter must not raise; this one did
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            stats.exported += len(batch)
            if stats.failing_since is not None:
                log.info("traces: the collector at %s takes spans again", self.destination)
                stats.failing_since = None
            return
        stats.export_dropped += len(batch)
        stats.failed_exports += 1
        stats.last_error = self._clean(error)
        if stats.failing_since is None:
            stats.failing_since = time.time()
            log.warning(
                "traces: the collector at %s did not take %d spans (%s); spans are dropped"
                " and counted until it does (/debug report)",
                self.destination,
                len(batch),
                stats.last_error,
            )


def _collector(ended: list[ReadableSpan]) -> SpanProcessor:
    """The span processor: ended spans go to the tracer's own export list (one thread
    makes and exports them, so nothing is shared)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Collect(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            ended.append(span)

    return Collect()


@dataclass
class _Shape:
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    ok: bool | None = None  # None: no status (events)
    error: str | None = None
    client: bool = False


def _row(kind: RowKind, row: tuple[Any, ...], at_ns: int) -> _Row:
    parent = row[3] if kind == "event" else row[1]  # caused_by / triggered_by / action_id
    return _Row(kind, row[0], parent, row, at_ns, time.monotonic())


def _shape(row: _Row, clean: Redactor) -> _Shape:
    """Name, times, attributes and status of a row's span; text passes the redactor."""
    if row.kind == "event":
        _, source, source_id, caused_by, _summary, _raw = row.row
        attributes: dict[str, Any] = {
            "assistant.id": encode(row.id),
            "assistant.event.source": source,
        }
        if source_id is not None:
            attributes["assistant.event.source_id"] = clean(str(source_id))
        if caused_by is not None:
            attributes["assistant.caused_by"] = encode(caused_by)
        return _Shape(f"event {source}", row.at_ns, row.at_ns, attributes)
    if row.kind == "action":
        _, triggered_by, action_type, target, content, ok, error = row.row
        attributes = {"assistant.id": encode(row.id), "assistant.action.type": action_type}
        if target is not None:
            attributes["assistant.action.target"] = clean(str(target))
        if triggered_by is not None:
            attributes["assistant.triggered_by"] = encode(triggered_by)
        start = time_of(row.id) * 1_000_000  # issued as the action began
        shape = _Shape(action_type, start, row.at_ns, attributes, bool(ok), _text(error, clean))
        if action_type == MODEL_CALL:
            _model_call(shape, target, content)
        return shape
    _, action_id, tool_name, _input, _output, duration_ms, ok, error = row.row
    attributes = {
        "assistant.id": encode(row.id),
        "assistant.tool.name": tool_name,
        "assistant.tool.duration_ms": float(duration_ms),
    }
    if action_id is not None:
        attributes["assistant.action_id"] = encode(action_id)
    start = row.at_ns - int(float(duration_ms) * 1_000_000)
    return _Shape(tool_name, start, row.at_ns, attributes, bool(ok), _text(error, clean))


def _model_call(shape: _Shape, model: str | None, content: str | None) -> None:
    """The OpenTelemetry GenAI conventions for a chat call to Anthropic's Messages API.

    `gen_ai.usage.input_tokens` counts every input token, cached ones included (the
    conventions' rule for Anthropic, whose own `input_tokens` leaves them out); the cache
    reads and writes are also given on their own.
    """
    try:
        usage = json.loads(content) if content else {}
    except ValueError:
        usage = {}
    usage = usage if isinstance(usage, dict) else {}
    shape.name = f"chat {model}" if model else "chat"
    shape.client = True
    a = shape.attributes
    a["gen_ai.operation.name"] = "chat"
    a["gen_ai.system"] = "anthropic"
    a["gen_ai.provider.name"] = "anthropic"
    if model:
        a["gen_ai.request.model"] = model
    if isinstance(usage.get("model"), str):
        a["gen_ai.response.model"] = usage["model"]
    counts = [usage.get(k) for k in ("input", "output", "cache_read", "cache_write")]
    match counts:
        case [int(fresh), int(output), int(cache_read), int(cache_write)]:
            a["gen_ai.usage.input_tokens"] = fresh + cache_read + cache_write
            a["gen_ai.usage.output_tokens"] = output
            a["gen_ai.usage.cache_read.input_tokens"] = cache_read
            a["gen_ai.usage.cache_creation.input_tokens"] = cache_write
    if isinstance(usage.get("stop_reason"), str):
        a["gen_ai.response.finish_reasons"] = (usage["stop_reason"],)
    if isinstance(usage.get("cost_usd"), int | float):
        a["assistant.cost_usd"] = float(usage["cost_usd"])
    if isinstance(usage.get("turn"), int):
        a["assistant.model.turn"] = usage["turn"]


def _text(value: object, clean: Redactor) -> str | None:
    return None if value is None else clean(str(value))[:_ERROR_CHARS]


def _status(ok: bool, error: str | None) -> Any:
    from opentelemetry.trace import Status, StatusCode

    if ok:
        return Status(StatusCode.OK)
    return Status(StatusCode.ERROR, error or "failed")
