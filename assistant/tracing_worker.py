"""The trace exporter process: rows of the event chain in, OpenTelemetry spans out.

`assistant.tracing.ChainTracer` starts `python -m assistant.tracing_worker` and writes it
the rows the event log hands over, already slimmed and redacted: building spans in the
OpenTelemetry SDK (pure Python) and sending them over OTLP/HTTP happens here, in another
interpreter, so it never takes the service's GIL from the event loop or the database
writer. This process gets only the endpoint and its own settings (the environment it is
given holds no secret of the service's, `assistant.tracing.worker_env`).

It runs at the lowest CPU priority: where CPUs are short, the service goes first, and
tracing falls behind (then the service drops rows, counted) rather than the service.

Both ways the pipe carries frames: a 4-byte length, then a pickled `(tag, value)` of
plain data only (tuples, lists, dicts, str, int, float, bool, None).

- service -> here (stdin): `("config", dict)` first, then `("rows", [row, ...])`,
  `("flush", n)` (export everything received so far, answer `("flushed", n)`) and
  `("stop", None)` (rows still waiting for a parent become roots, export, exit);
- here -> service (stdout): `("stats", tuple(Stats))` after each pass that changed them,
  `("log", (level, text))` for the service log, `("flushed", n)`, `("fatal", text)`
  (cannot trace at all: do not start again).

Rows, the three kinds (ids as the event log's; texts redacted by the service):

- `(EVENT, id, source, source_id, caused_by, at_ns)`
- `(ACTION, id, triggered_by, action_type, target, content, ok, error, at_ns)`, content
  only for a model call (its usage, as JSON)
- `(TOOL, id, action_id, tool_name, duration_ms, ok, error, at_ns)`

What becomes of them:

- an event is a trace root, or a span under the action that caused it;
- an action is a span under the event that triggered it; a `model_call` action is a GenAI
  "chat <model>" span with the `gen_ai.*` attributes;
- a tool call is a span under its action;
- ok/failed is the span status (ERROR with the error text).

Rows come before their parents (an action's row is logged when it ends, after its tool
calls and the events it caused), so a row whose parent is not known yet waits for it, at
most `max_wait_s`; one whose parent never comes (logged before tracing started, pruned,
too old to remember) becomes a root carrying the parent's id. Spans get the rows' times:
an action starts when its id was issued and ends when its row was logged; a tool call
ends when logged and lasted its duration. A collector that does not take a batch (down,
slow, refusing) costs those spans, counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from storage.ids import encode, time_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanContext

EVENT, ACTION, TOOL = 0, 1, 2
SERVICE_NAME = "gpu-chatops-assistant"
BATCH_SPANS = 512
MODEL_CALL = "model_call"  # the Claude agent's action: see assistant/claude_agent.py
NICE = 19  # this process's CPU priority: the lowest, below the service's
FATAL_EXIT = 3  # this process cannot trace (the extra is missing): starting it again is no use
_HEADER = struct.Struct("!I")


class Stats(NamedTuple):
    """What this process has done since it started (sent to the service after each pass)."""

    exported: int = 0
    export_dropped: int = 0  # the collector did not take them
    failed_exports: int = 0
    last_error: str | None = None
    failing_since: float | None = None  # time.time() of the first failure of a bad stretch


# ---- frames (both sides use these; nothing here imports OpenTelemetry) -------------------


def frame(tag: str, value: object) -> bytes:
    body = pickle.dumps((tag, value), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from `fd`, or None at end of file."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[str, Any] | None:
    """The next `(tag, value)` from `fd`, or None at end of file."""
    header = read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    body = read_exactly(fd, _HEADER.unpack(header)[0])
    if body is None:
        return None
    tag, value = pickle.loads(body)
    return str(tag), value


# ---- rows to spans -------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    kind: int
    id: int
    parent: int | None
    row: tuple[Any, ...]
    at_ns: int
    arrived: float


@dataclass
class _Shape:
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    ok: bool | None = None  # None: no status (events)
    error: str | None = None
    client: bool = False


class SpanBuilder:
    """Rows in, spans exported; one thread uses it (this process's main thread)."""

    def __init__(
        self,
        exporter: SpanExporter,
        say: Callable[[int, str], None],
        *,
        destination: str,
        floor: int,
        known_ids: int,
        waiting_rows: int,
        max_wait_s: float,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.exported = self.export_dropped = self.failed_exports = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self._exporter = exporter
        self._say = say
        self._destination = destination
        self._known: OrderedDict[int, tuple[SpanContext, int]] = OrderedDict()
        self._known_ids = known_ids
        self._forgotten = 0  # the largest id evicted from _known
        self._floor = floor  # ids below were logged before this process started: never seen
        self._waiting: dict[int, _Row] = {}  # insertion-ordered: the oldest first
        self._children: dict[int, list[int]] = {}
        self._waiting_rows = waiting_rows
        self._max_wait_s = max_wait_s
        self._ended: list[ReadableSpan] = []
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        self._provider = TracerProvider(
            resource=Resource.create(attributes), shutdown_on_exit=False
        )
        self._provider.add_span_processor(_collector(self._ended))
        self._tracer = self._provider.get_tracer("assistant.event_chain")

    def take(self, rows: Sequence[tuple[Any, ...]]) -> None:
        now = time.monotonic()
        for row in rows:
            kind = row[0]
            parent = row[4] if kind == EVENT else row[2]  # caused_by / triggered_by / action
            self._place(_Row(kind, row[1], parent, row, row[-1], now))

    def finish_pass(self, final: bool = False) -> None:
        """Rows that waited too long become roots (all of them when `final`); export."""
        self._expire(final)
        self._export()

    def shutdown(self) -> None:
        self._provider.shutdown()  # also shuts the exporter down

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
            if current.kind == TOOL:
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

        shape = _shape(row)
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
            if self.failing_since is not None and first > 0:
                self.export_dropped += len(ended) - first
                return
            self._export_batch(batch)

    def _export_batch(self, batch: Sequence[ReadableSpan]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._exporter.export(batch)
            error = None if result is SpanExportResult.SUCCESS else "the export failed"
        except Exception as exc:  # an exporter must not raise; this one did
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.exported += len(batch)
            if self.failing_since is not None:
                self._say(
                    logging.INFO, f"traces: the collector at {self._destination} takes spans again"
                )
                self.failing_since = None
            return
        self.export_dropped += len(batch)
        self.failed_exports += 1
        self.last_error = error[:500]
        if self.failing_since is None:
            self.failing_since = time.time()
            self._say(
                logging.WARNING,
                f"traces: the collector at {self._destination} did not take {len(batch)} spans"
                f" ({self.last_error}); spans are dropped and counted until it does"
                " (/debug report)",
            )


def _collector(ended: list[ReadableSpan]) -> SpanProcessor:
    """The span processor: ended spans go to the builder's own export list (one thread
    makes and exports them, so nothing is shared)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Collect(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            ended.append(span)

    return Collect()


def _shape(row: _Row) -> _Shape:
    """Name, times, attributes and status of a row's span."""
    if row.kind == EVENT:
        _, _, source, source_id, caused_by, _at = row.row
        attributes: dict[str, Any] = {
            "assistant.id": encode(row.id),
            "assistant.event.source": source,
        }
        if source_id is not None:
            attributes["assistant.event.source_id"] = source_id
        if caused_by is not None:
            attributes["assistant.caused_by"] = encode(caused_by)
        return _Shape(f"event {source}", row.at_ns, row.at_ns, attributes)
    if row.kind == ACTION:
        _, _, triggered_by, action_type, target, content, ok, error, _at = row.row
        attributes = {"assistant.id": encode(row.id), "assistant.action.type": action_type}
        if target is not None:
            attributes["assistant.action.target"] = target
        if triggered_by is not None:
            attributes["assistant.triggered_by"] = encode(triggered_by)
        start = time_of(row.id) * 1_000_000  # issued as the action began
        shape = _Shape(action_type, start, row.at_ns, attributes, bool(ok), error)
        if action_type == MODEL_CALL:
            _model_call(shape, target, content)
        return shape
    _, _, action_id, tool_name, duration_ms, ok, error, _at = row.row
    attributes = {
        "assistant.id": encode(row.id),
        "assistant.tool.name": tool_name,
        "assistant.tool.duration_ms": float(duration_ms),
    }
    if action_id is not None:
        attributes["assistant.action_id"] = encode(action_id)
    start = row.at_ns - int(float(duration_ms) * 1_000_000)
    return _Shape(tool_name, start, row.at_ns, attributes, bool(ok), error)


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


def _status(ok: bool, error: str | None) -> Any:
    from opentelemetry.trace import Status, StatusCode

    if ok:
        return Status(StatusCode.OK)
    return Status(StatusCode.ERROR, error or "failed")


# ---- the process -------------------------------------------------------------------------


class _Inbox:
    """What the service sent, read off the pipe by a thread of its own, so the pipe drains
    while spans are built or exported. Holds about `limit` rows: beyond, it stops reading,
    the pipe fills, and the service drops rows before doing any work on them."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        self._rows = 0
        self._items: deque[tuple[str, Any]] = deque()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="trace-inbox", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                item = read_frame(self._fd)
            except Exception:  # a torn frame: the service is gone or broken
                item = None
            with self._changed:
                if item is not None and item[0] == "rows":
                    self._changed.wait_for(lambda: self._rows < self._limit)
                    self._rows += len(item[1])
                self._items.append(("eof", None) if item is None else item)
                self._changed.notify_all()
            if item is None:
                return

    def wait(self, timeout: float) -> list[tuple[str, Any]]:
        with self._changed:
            if not self._items:
                self._changed.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._rows = 0
            self._changed.notify_all()
        return items


class _Sender:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def __call__(self, tag: str, value: object) -> None:
        data = frame(tag, value)
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]


def main() -> int:
    # The protocol owns stdout: anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stdout = sys.stderr
    # The service decides when this ends (stop, or its end of the pipe closing): a Ctrl-C
    # in a terminal or a signal to the whole group must not lose what is still queued.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Tracing is best effort: where CPUs are short, the service's threads go first.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    send = _Sender(out_fd)
    first = read_frame(0)
    if first is None or first[0] != "config":
        return 2
    config: dict[str, Any] = first[1]
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        send("fatal", f"OpenTelemetry is not installed ({exc.name or exc})")
        return FATAL_EXIT
    # The exporter logs every failed batch; the builder counts them and says it once.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    exporter = OTLPSpanExporter(endpoint=config["url"], timeout=config["export_timeout_s"])

    def say(level: int, text: str) -> None:
        send("log", (level, text))

    builder = SpanBuilder(
        exporter,
        say,
        destination=config["destination"],
        floor=config["floor"],
        known_ids=config["known_ids"],
        waiting_rows=config["waiting_rows"],
        max_wait_s=config["max_wait_s"],
    )
    inbox = _Inbox(0, config["queue_rows"])
    poll_s: float = config["poll_s"]
    last: Stats | None = None
    while True:
        done = False
        flushed: list[int] = []
        for tag, value in inbox.wait(poll_s):
            if tag == "rows":
                try:
                    builder.take(value)
                except Exception as exc:  # a bug must not end tracing: those rows are lost
                    say(logging.ERROR, f"traces: rows could not become spans: {exc!r}")
            elif tag == "flush":
                flushed.append(value)
            elif tag in ("stop", "eof"):
                done = True
        try:
            builder.finish_pass(final=done)
        except Exception as exc:
            say(logging.ERROR, f"traces: a pass failed: {exc!r}")
        stats = Stats(
            builder.exported,
            builder.export_dropped,
            builder.failed_exports,
            builder.last_error,
            builder.failing_since,
        )
        if stats != last:
            send("stats", tuple(stats))  # plain data: the service need not import this
            last = stats
        for token in flushed:
            send("flushed", token)
        if done:
            builder.shutdown()
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the service is gone: nobody to report to
        sys.exit(1)
