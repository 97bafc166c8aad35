"""Traces of the event chain, as a real OTLP/HTTP receiver on loopback gets them from the
exporter process: span shapes, parents, GenAI attributes, drops, a collector that is down,
an exporter process that dies."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from assistant.tracing import ChainTracer, traces_url
from commands import build_router
from storage.ids import encode
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse, Usage
from tests.fakes.anthropic_server import Reply as Answer
from tests.fakes.otlp_server import OtlpReceiver, ReceivedSpan
from tests.support.model_service import MODEL, model_settings
from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"


Traced = tuple[Orchestrator, RecordingChannel, OtlpReceiver, ChainTracer]


@asynccontextmanager
async def traced_service(settings: Settings, **kwargs: object) -> AsyncIterator[Traced]:
    """A running service whose event log is traced, through an exporter process, to a
    loopback OTLP/HTTP receiver."""
    channel = RecordingChannel()
    async with (
        OtlpReceiver() as receiver,
        Orchestrator(settings, channels=[channel], router=build_router()) as orch,
    ):
        tracer = ChainTracer(receiver.url + "/v1/traces", orch.redact, poll_s=0.02)
        assert tracer.attach(orch.services.log)
        try:
            yield orch, channel, receiver, tracer
        finally:
            await asyncio.to_thread(tracer.shutdown)


@pytest.fixture
async def traced(settings: Settings) -> AsyncIterator[Traced]:
    async with traced_service(settings) as running:
        yield running


async def spans_of(tracer: ChainTracer, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    assert await asyncio.to_thread(tracer.flush)
    return list(receiver.spans)


def parent_of(span: ReceivedSpan, spans: Sequence[ReceivedSpan]) -> ReceivedSpan | None:
    if not span.parent_span_id:
        return None
    (parent,) = [s for s in spans if s.span_id == span.parent_span_id]
    return parent


def one(spans: Sequence[ReceivedSpan], name: str, **attributes: object) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [s.name for s in spans])
    return found[0]


async def test_a_command_is_one_trace_event_command_tool_call_and_reply(traced: Traced) -> None:
    orch, channel, receiver, tracer = traced
    (reply,) = await channel.say(ADMIN, "/task add every 1h /status")
    assert "every 1h" in reply
    spans = await spans_of(tracer, receiver)

    root = one(spans, "event telegram")
    command = one(spans, "command", **{"assistant.action.target": "/task"})
    add = one(spans, "task.add")
    sent = one(spans, "message_sent")
    send = one(spans, "telegram.send")
    assert root.parent_span_id == ""
    assert parent_of(command, spans) is root and parent_of(sent, spans) is root
    assert parent_of(add, spans) is command and parent_of(send, spans) is sent
    assert {s.trace_id for s in (root, command, add, sent, send)} == {root.trace_id}
    assert command.status == "OK" and add.status == "OK"
    assert root.status == "UNSET"  # an event is neither ok nor failed
    # the ids are the event log's, as /debug prints them; times nest
    assert command.attributes["assistant.triggered_by"] == root.attributes["assistant.id"]
    await orch.services.log.flush()
    (stored,) = await orch.services.db.fetchall(
        "SELECT id FROM action_log WHERE action_type = 'command'"
    )
    assert command.attributes["assistant.id"] == encode(stored["id"])
    assert command.start_ns <= add.start_ns <= add.end_ns <= command.end_ns
    assert root.resource["service.name"] == "gpu-chatops-assistant"
    assert tracer.stats.exported == len(spans) and tracer.stats.dropped == 0


async def test_a_failed_tool_call_is_an_error_span_with_the_redacted_error(
    traced: Traced,
) -> None:
    orch, channel, receiver, tracer = traced
    # a secret where an id belongs: refused by the argument check, before any operation
    (reply,) = await channel.say(ADMIN, "/task pause hunter2-secret-value")
    assert "hunter2-secret-value" not in reply and "is not an id" in reply
    spans = await spans_of(tracer, receiver)
    command = one(spans, "command")
    assert command.status == "ERROR"
    assert "hunter2" not in str(command.attributes) + command.status_message
    assert not [s for s in spans if s.name == "task.pause"]  # nothing ran

    # an id of the right shape that names no task: the operation itself fails
    receiver.spans.clear()
    (reply,) = await channel.say(ADMIN, "/task pause zz99zz99")
    assert "zz99zz99" in reply
    spans = await spans_of(tracer, receiver)
    pause = one(spans, "task.pause")
    command = one(spans, "command")
    assert pause.status == "ERROR" and command.status == "ERROR"
    assert pause.status_message and "zz99zz99" in pause.status_message
    assert parent_of(pause, spans) is command

    # what reaches the tracer unmasked (a tool's own error text) is masked in the span
    log = orch.services.log
    act = log.log_action(None, "probe", target="to hunter2-secret-value")
    log.log_tool_call(act, "probe.call", ok=False, error="refused hunter2-secret-value")
    spans = await spans_of(tracer, receiver)
    probe, call = one(spans, "probe"), one(spans, "probe.call")
    assert call.status == "ERROR" and parent_of(call, spans) is probe
    assert call.status_message.startswith("refused ")
    assert str(probe.attributes["assistant.action.target"]).startswith("to ")
    assert "hunter2" not in str(probe.attributes) + call.status_message


async def test_a_model_call_is_a_genai_chat_span_with_its_token_counts(
    settings: Settings,
) -> None:
    async with FakeAnthropic() as fake:
        fake.add(
            Answer(
                [ToolUse("tu_1", "status", {})],
                usage=Usage(
                    input_tokens=1200,
                    output_tokens=30,
                    cache_read_input_tokens=500,
                    cache_creation_input_tokens=40,
                ),
            ),
            Answer("All quiet.", usage=Usage(input_tokens=7, output_tokens=3)),
        )
        async with traced_service(model_settings(settings, fake)) as (_, channel, receiver, tracer):
            assert await channel.say(ADMIN, "how is the host?") == ["All quiet."]
            spans = await spans_of(tracer, receiver)

    first, second = sorted(
        (s for s in spans if s.name == f"chat {MODEL}"), key=lambda s: s.start_ns
    )
    assert first.kind == Span.SpanKind.SPAN_KIND_CLIENT
    attributes = dict(first.attributes)
    assert {k: v for k, v in attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "anthropic",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        # every input token, cached ones included; the cache's share on its own
        "gen_ai.usage.input_tokens": 1200 + 500 + 40,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 500,
        "gen_ai.usage.cache_creation.input_tokens": 40,
        "gen_ai.response.finish_reasons": ("tool_use",),
    }
    assert attributes["assistant.cost_usd"] > 0
    assert second.attributes["gen_ai.usage.input_tokens"] == 7
    assert second.attributes["gen_ai.usage.output_tokens"] == 3
    # message -> stored -> batch -> the model calls, with the tool call under the first
    status = one(spans, "status")
    assert parent_of(status, spans) is first
    batch = parent_of(first, spans)
    assert batch is not None and batch.name == "event message_batch"
    assert parent_of(second, spans) is batch
    stored = parent_of(batch, spans)
    assert stored is not None and stored.name == "message_stored"
    message = parent_of(stored, spans)
    assert message is not None and message.name == "event telegram"
    assert message.parent_span_id == ""
    assert {s.trace_id for s in (first, second, status, stored)} == {message.trace_id}


def chain(span: ReceivedSpan, spans: Sequence[ReceivedSpan]) -> list[str]:
    """Names from the root down to `span`, following parent ids."""
    by_id = {s.span_id: s for s in spans}
    names = [span.name]
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names[::-1]


async def test_a_run_is_one_trace_at_a_real_otlp_receiver(settings: Settings) -> None:
    async with OtlpReceiver() as receiver:
        run_settings = settings.model_copy(
            update={"otlp_endpoint": receiver.url, "gpus": "0", "monitor_interval_s": 0.1}
        )
        channel = RecordingChannel()
        runner = ProcessRunner(run_settings.runs_dir)
        async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
            (reply,) = await channel.say(ADMIN, "/run train classifier steps=5 gpus=0")
            run_id = reply.split(":", 1)[0].removeprefix("Run ")
            await channel.wait_for(f"Run {run_id} (classifier) succeeded", timeout=120)

            def reported(spans: list[ReceivedSpan]) -> bool:
                return any(
                    s.name == "telegram.send" and s.parent_span_id in report_ids(spans)
                    for s in spans
                )

            def report_ids(spans: list[ReceivedSpan]) -> set[str]:
                finished = {
                    s.span_id
                    for s in spans
                    if s.name == "event run"
                    and s.attributes.get("assistant.event.source_id") == run_id
                }
                return {
                    s.span_id
                    for s in spans
                    if s.name == "message_sent" and s.parent_span_id in finished
                }

            spans = await receiver.wait_for(reported, timeout=30)
            (report,) = [s for s in spans if s.span_id in report_ids(spans)][-1:]
            tracer = orch.services.log.tap
            assert isinstance(tracer, ChainTracer)
            assert tracer.stats.dropped == 0 and tracer.stats.exported > 0

    assert receiver.refused == 0
    (send,) = [s for s in spans if s.parent_span_id == report.span_id]
    # the message, the run it queued, the run starting, launched, finishing, the report
    assert chain(send, spans) == [
        "event telegram",
        "run_queued",
        "event run",
        "run_launched",
        "event run",
        "message_sent",
        "telegram.send",
    ]
    by_id = {s.span_id: s for s in spans}
    hop = send
    while hop.parent_span_id:  # every ancestor in the same trace, up to the message
        hop = by_id[hop.parent_span_id]
        assert hop.trace_id == send.trace_id
    assert hop.name == "event telegram" and hop.attributes["assistant.event.source"] == "telegram"
    # the command's own span, its run.submit tool call and the launch are in that trace too
    same = [s for s in spans if s.trace_id == send.trace_id]
    names = {s.name for s in same}
    assert {"command", "run.submit", "process.launch", "event run"} <= names
    command = next(s for s in same if s.name == "command")
    assert by_id[command.parent_span_id] is hop  # the command hangs off the same message
    submit = next(s for s in same if s.name == "run.submit")
    assert by_id[submit.parent_span_id] is command
    launch = next(s for s in same if s.name == "process.launch")
    assert by_id[launch.parent_span_id].name == "run_launched"
    assert all(s.status != "ERROR" for s in same)
    assert same[0].resource["service.name"] == "gpu-chatops-assistant"


async def test_the_exporter_process_holds_none_of_the_services_secrets(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a service started with its secrets in the environment has there
    token = "123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQrr"
    api_key = "sk-ant-api03-0123456789abcdefghij"
    monkeypatch.setenv("ASSISTANT_TELEGRAM_TOKEN", token)
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "assistant-under-test")  # the exporter's own
    async with OtlpReceiver() as receiver:
        traced = settings.model_copy(update={"otlp_endpoint": receiver.url})
        channel = RecordingChannel()
        async with Orchestrator(traced, channels=[channel], router=build_router()) as orch:
            tracer = orch.services.log.tap
            assert isinstance(tracer, ChainTracer) and tracer.worker_pid is not None
            proc = Path(f"/proc/{tracer.worker_pid}")
            seen = (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes()
            names = {e.split(b"=", 1)[0] for e in (proc / "environ").read_bytes().split(b"\0")}
            (reply,) = await channel.say(ADMIN, "/task add every 1h /status hunter2-secret-value")
            assert "every 1h" in reply
            spans = await receiver.wait_for(lambda got: any(s.name == "task.add" for s in got))
    for secret in (token, api_key, "hunter2-secret-value"):
        assert secret.encode() not in seen
        assert secret not in repr(spans)
    assert not [n for n in names if n.startswith(b"ASSISTANT_") or b"API_KEY" in n]
    assert b"OTEL_SERVICE_NAME" in names and b"PATH" in names
    assert {s.resource["service.name"] for s in spans} == {"assistant-under-test"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_collector_that_is_down_drops_and_counts_spans_and_commands_still_answer(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(update={"otlp_endpoint": f"http://127.0.0.1:{closed_port()}"})
    channel = RecordingChannel()
    with caplog.at_level(logging.WARNING, logger="assistant.tracing"):
        async with Orchestrator(down, channels=[channel], router=build_router()) as orch:
            for n in range(3):
                (reply,) = await channel.say(ADMIN, f"/task add every {n + 1}h /status")
                assert f"every {n + 1}h" in reply
            tracer = orch.services.log.tap
            assert isinstance(tracer, ChainTracer)
            for _ in range(300):
                if tracer.stats.dropped >= 5:
                    break
                await asyncio.sleep(0.05)
            assert tracer.stats.dropped >= 5 and tracer.stats.exported == 0
            assert tracer.stats.failed_exports >= 1
            (report,) = await channel.say(ADMIN, "/debug report")
            (line,) = [x for x in report.splitlines() if x.startswith("Traces:")]
            assert f"{tracer.stats.dropped:,} dropped" in line or "dropped" in line
            assert "has not taken spans since" in line
            (listing,) = await channel.say(ADMIN, "/task list")
            assert "every 3h" in listing
    warned = [r.getMessage() for r in caplog.records if r.name == "assistant.tracing"]
    assert len([w for w in warned if "did not take" in w]) == 1  # said once, not per batch


async def test_a_full_queue_drops_and_counts_instead_of_waiting(traced: Traced) -> None:
    orch, _channel, receiver, tracer = traced
    await asyncio.to_thread(tracer.shutdown)
    small = ChainTracer(receiver.url + "/v1/traces", orch.redact, intake_rows=10, poll_s=60)
    log = orch.services.log
    assert small.attach(log)  # replaces the stopped tracer as the log's tap
    for n in range(25):
        log.log_event("system", None, summary=f"row {n}")
    assert small.stats.intake_dropped == 15 and small.stats.dropped == 15
    assert "15 dropped (15 while the queue was full)" in small.describe()
    before = len(receiver.spans)
    await asyncio.to_thread(small.shutdown)
    assert small.stats.exported == 10  # what was taken is exported at shutdown
    assert len(receiver.spans) - before == 10
    assert small.stats.dropped == 15 and small.worker_pid is None


async def test_an_exporter_process_that_dies_is_started_again_then_tracing_is_off(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    orch, channel, receiver, tracer = traced
    await asyncio.to_thread(tracer.shutdown)
    fragile = ChainTracer(receiver.url + "/v1/traces", orch.redact, poll_s=0.02, restarts=1)
    log = orch.services.log
    assert fragile.attach(log)
    first = fragile.worker_pid
    assert first is not None
    # an action whose tool call reached the exporter process, which dies before the action
    action = log.new_id()
    log.log_tool_call(action, "doomed.call", ok=True)
    assert await asyncio.to_thread(fragile.flush)
    with caplog.at_level(logging.WARNING, logger="assistant.tracing"):
        os.kill(first, signal.SIGKILL)
        for _ in range(200):  # started again after a pause of a second
            if fragile.worker_pid not in (None, first):
                break
            await asyncio.sleep(0.05)
        second = fragile.worker_pid
        assert second not in (None, first)
        assert fragile.stats.lost == 1 and fragile.stats.dropped == 1  # the waiting call
        (reply,) = await channel.say(ADMIN, "/task add every 2h /status")
        assert "every 2h" in reply
        spans = await spans_of(fragile, receiver)
        assert one(spans, "task.add").status == "OK"  # traced by the new process
        assert not [s for s in spans if s.name == "doomed.call"]
        # dies again: no more restarts, tracing is off, rows are counted, commands answer
        assert second is not None
        os.kill(second, signal.SIGKILL)
        for _ in range(200):
            if "tracing is off" in fragile.describe():
                break
            await asyncio.sleep(0.05)
        dropped = fragile.stats.dropped
        (reply,) = await channel.say(ADMIN, "/task add every 3h /status")
        assert "every 3h" in reply
        assert await asyncio.to_thread(fragile.flush)
        assert fragile.stats.dropped > dropped and fragile.worker_pid is None
        (report,) = await channel.say(ADMIN, "/debug report")
        (line,) = [x for x in report.splitlines() if x.startswith("Traces:")]
        assert "tracing is off" in line and "not taken by the exporter process" in line
    warned = [r.getMessage() for r in caplog.records if r.name == "assistant.tracing"]
    assert len([w for w in warned if "starts again in 1 s" in w]) == 1
    assert len([w for w in warned if "tracing is off" in w]) == 1
    await asyncio.to_thread(fragile.shutdown)


async def test_an_endpoint_that_is_not_a_url_is_one_line_and_no_tracing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://otel.example:4318/v1/traces/") == (
        "https://otel.example:4318/v1/traces"
    )
    assert traces_url("127.0.0.1:4318") is None and traces_url("http://") is None
    bad = settings.model_copy(update={"otlp_endpoint": "collector:4318"})
    with caplog.at_level(logging.WARNING, logger="assistant.tracing"):
        async with Orchestrator(bad, channels=[RecordingChannel()]) as orch:
            assert orch.services.log.tap is None
    (line,) = [r.getMessage() for r in caplog.records if r.name == "assistant.tracing"]
    assert "not an http(s) URL" in line and "http://127.0.0.1:4318" in line


# Without the otel extra: the import of the exporter fails, as in an install without it.
NO_EXTRA = """
import asyncio, logging, sys
# what imports see where the extra (the SDK, the exporter) is absent; the API stays: the
# anthropic SDK needs it
sys.modules["opentelemetry.sdk"] = sys.modules["opentelemetry.exporter"] = None
from pathlib import Path
from assistant.config import Settings
from assistant.orchestrator import Orchestrator

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
settings = Settings(
    assistant_home=Path(sys.argv[1]),
    runner="process",
    gpus="none",
    http_address="off",
    otlp_endpoint="http://127.0.0.1:4318",
    _env_file=None,
)

async def main() -> None:
    async with Orchestrator(settings) as orch:
        print("tap:", orch.services.log.tap)

asyncio.run(main())
"""

NO_ENDPOINT = """
import sys
import assistant.orchestrator, commands.debug
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exp"))))
"""


async def test_without_the_extra_the_service_runs_and_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", NO_EXTRA, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tap: None" in done.stdout
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("assistant.tracing")]
    assert "OpenTelemetry is not installed" in line and "otel extra" in line
    # and nothing imports OpenTelemetry unless tracing is asked for
    quiet = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", NO_ENDPOINT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "[]"


async def test_a_row_whose_parent_never_comes_becomes_a_root_naming_it(traced: Traced) -> None:
    orch, _channel, receiver, tracer = traced
    await asyncio.to_thread(tracer.shutdown)
    patient = ChainTracer(receiver.url + "/v1/traces", orch.redact, max_wait_s=1.0, poll_s=0.02)
    log = orch.services.log
    assert patient.attach(log)
    log.log_event("run", "r1", summary="from before the restart", caused_by=1)
    ghost = log.new_id()  # an action that is never logged (the process died in it)
    log.log_tool_call(ghost, "orphan.call", ok=True)
    spans = await spans_of(patient, receiver)
    old = one(spans, "event run")  # at once: its cause predates tracing, it never comes
    assert old.parent_span_id == ""
    assert old.attributes["assistant.parent_missing"] == encode(1)
    assert not [s for s in spans if s.name == "orphan.call"]  # still waiting for its action
    for _ in range(100):
        if any(s.name == "orphan.call" for s in receiver.spans):
            break
        await asyncio.sleep(0.05)
    call = one(list(receiver.spans), "orphan.call")
    assert call.parent_span_id == ""
    assert call.attributes["assistant.parent_missing"] == encode(ghost)
    await asyncio.to_thread(patient.shutdown)
