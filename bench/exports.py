"""What the exports cost on the hot path: event-log ingest and /status, exports off and on.

    python bench/exports.py [--rows 300000] [--repeat 300] [--events 50000] [--rounds 3]

Each round starts the real orchestrator twice on a copy of one seeded database (N events,
each with an action and a tool call, as bench/commands_latency.py seeds them):

- off: ASSISTANT_HTTP=off, no ASSISTANT_OTLP_ENDPOINT;
- on: the HTTP listener with `/metrics` scraped every second, and the event chain traced
  over OTLP/HTTP to a local receiver.

The scraper and the receiver live in a side process (as Prometheus and a collector
would), so their own work is not counted as the assistant's. In each run:

- `/status` through `Orchestrator.handle_command` (what a chat's command goes through,
  reply sent to a channel that drops it): p50 and p95 over `--repeat` calls;
- ingest: `--rows` rows as chains of event -> action -> tool call through the public API
  (`log_event`, `action`, `tool_call`), yielding every 333 chains like real coroutines;
  rows/s until the last is committed, and event-loop time per row.

Rounds alternate off and on; the figures are each mode's median over the rounds, and the
ratios on/off (for latency and loop time, above 1 is slower; for rows/s, below 1 is).
The goal is at most 5% slower. Nothing is asserted: the machine's load moves the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.tracing import ChainTracer
from bench.commands_latency import percentile, seed
from bench.harness import NullChannel
from storage.db import Database

SCRAPE_S = 1.0
# off: no exports; metrics: /metrics scraped; traces: the chain traced; on: both
MODES = ("off", "metrics", "traces", "on")

# The side process: an OTLP/HTTP receiver that counts spans, and a scraper of /metrics.
SIDECAR = r"""
import asyncio, sys
from aiohttp import ClientSession, web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

counts = {"spans": 0, "batches": 0, "scrapes": 0, "scrape_errors": 0, "scrape_bytes": 0}
scraping = {}

async def traces(request):
    body = await request.read()
    req = ExportTraceServiceRequest.FromString(body)
    counts["batches"] += 1
    counts["spans"] += sum(len(s.spans) for r in req.resource_spans for s in r.scope_spans)
    return web.Response(body=b"", content_type="application/x-protobuf")

async def scrape_loop(url):
    async with ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    counts["scrapes"] += 1
                    counts["scrape_bytes"] = len(body)
                    if resp.status != 200:
                        counts["scrape_errors"] += 1
            except Exception:
                counts["scrape_errors"] += 1
            await asyncio.sleep(@INTERVAL@)

async def start_scrape(request):
    url = (await request.json())["url"]
    scraping[url] = asyncio.create_task(scrape_loop(url))
    return web.json_response({})

async def stop_scrape(request):
    for task in scraping.values():
        task.cancel()
    scraping.clear()
    return web.json_response({})

async def get_counts(request):
    return web.json_response(counts)

async def main():
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/scrape", start_scrape)
    app.router.add_post("/stop", stop_scrape)
    app.router.add_get("/counts", get_counts)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
""".replace("@INTERVAL@", str(SCRAPE_S))


@dataclass
class Figures:
    status_p50_ms: float
    status_p95_ms: float
    ingest_rows_s: float
    loop_us_per_row: float
    spans_dropped: int = 0


class Sidecar:
    """The receiver and scraper process, talked to over loopback."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SIDECAR], stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self._proc.stdout.readline())}"

    async def call(self, method: str, path: str, body: object = None) -> dict[str, int]:
        from aiohttp import ClientSession

        async with (
            ClientSession() as session,
            session.request(method, self.url + path, json=body) as resp,
        ):
            result: dict[str, int] = await resp.json()
            return result

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


async def status_latency(orch: Orchestrator, repeat: int) -> tuple[float, float]:
    for _ in range(20):  # warm-up: caches, first queries
        await orch.handle_command("tg:1", "bench", "/status", source="telegram")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await orch.handle_command("tg:1", "bench", "/status", source="telegram")
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.95)


async def ingest(orch: Orchestrator, rows: int) -> tuple[float, float]:
    """Chains of 3 rows through the public API; rows/s until committed, loop us per row."""
    log = orch.services.log
    await log.flush()
    written_before = log.stats.written
    loop_ns = 0
    started = time.perf_counter()
    for i in range(rows // 3):
        t0 = time.perf_counter_ns()
        event_id = log.log_event("telegram", str(i), summary="Message from ann: /status")
        async with log.action(event_id, "message_sent", target="tg:1") as act:
            async with log.tool_call("telegram.send", {"chat": "tg:1", "chars": 120}):
                pass
            act.content = "Run 42 is training: step 1200/5000, loss 1.93"
        loop_ns += time.perf_counter_ns() - t0
        if i % 333 == 0:
            await asyncio.sleep(0)
    while log.pending:
        await log.flush()
    total = time.perf_counter() - started
    written = log.stats.written - written_before
    return written / total, loop_ns / 1000 / max(1, written)


async def one_run(
    mode: str, template: Path, work: Path, sidecar: Sidecar, args: argparse.Namespace
) -> Figures:
    home = work / f"home-{mode}-{time.monotonic_ns()}"
    home.mkdir()
    shutil.copy(template, home / "assistant.db")
    metrics, traces = mode in ("metrics", "on"), mode in ("traces", "on")
    settings = Settings(
        assistant_home=home,
        admin_chats=("tg:1",),
        runner="process",
        gpus="none",
        http_address="127.0.0.1:0" if metrics else "off",
        otlp_endpoint=sidecar.url if traces else None,
        _env_file=None,  # type: ignore[call-arg]
    )
    async with Orchestrator(settings, channels=[NullChannel()]) as orch:
        services = orch.services
        assert isinstance(services.log.tap, ChainTracer) == traces
        if metrics:
            assert services.http is not None
            await sidecar.call("POST", "/scrape", {"url": services.http.url + "/metrics"})
        try:
            p50, p95 = await status_latency(orch, args.repeat)
            rows_s, loop_us = await ingest(orch, args.rows)
        finally:
            if metrics:
                await sidecar.call("POST", "/stop")
        tap = services.log.tap
        dropped = tap.stats.dropped if isinstance(tap, ChainTracer) else 0
    shutil.rmtree(home)
    return Figures(p50, p95, rows_s, loop_us, dropped)


def median(runs: list[Figures], name: str) -> float:
    return statistics.median(float(getattr(run, name)) for run in runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=150_000, help="rows ingested per run")
    parser.add_argument("--repeat", type=int, default=300, help="/status calls per run")
    parser.add_argument("--events", type=int, default=50_000, help="events seeded")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="which of " + ", ".join(MODES))
    args = parser.parse_args()
    modes = [m for m in MODES if m in args.modes.split(",")]
    logging.basicConfig(level=logging.ERROR)  # the runner's start-up notice, not the figures
    sidecar = Sidecar()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            template = work / "template.db"
            db = await Database.open(template)  # the real schema
            await db.aclose()
            seed(template, args.events)
            runs: dict[str, list[Figures]] = {mode: [] for mode in modes}
            for round_no in range(args.rounds):
                for mode in modes:
                    figures = await one_run(mode, template, work, sidecar, args)
                    runs[mode].append(figures)
                    print(
                        f"round {round_no + 1} {mode:7s}: /status p50={figures.status_p50_ms:.2f}"
                        f" ms p95={figures.status_p95_ms:.2f} ms; ingest"
                        f" {figures.ingest_rows_s:,.0f} rows/s,"
                        f" {figures.loop_us_per_row:.2f} us loop/row"
                    )
        counts = await sidecar.call("GET", "/counts")
    finally:
        sidecar.close()
    print()
    print(
        f"{args.events:,} events seeded; {args.rows:,} rows ingested and {args.repeat} /status"
        f" per run; medians of {args.rounds} rounds"
    )
    others = [m for m in modes if m != "off"]
    header = f"{'':26s}" + "".join(f"{m:>11s}" for m in modes)
    print(header + "".join(f"{m + '/off':>12s}" for m in others if "off" in runs))
    for label, name, unit in (
        ("/status p50", "status_p50_ms", "ms"),
        ("/status p95", "status_p95_ms", "ms"),
        ("ingest", "ingest_rows_s", "rows/s"),
        ("ingest loop time/row", "loop_us_per_row", "us"),
    ):
        values = {mode: median(runs[mode], name) for mode in modes}
        line = f"{label + ' (' + unit + ')':26s}" + "".join(f"{values[m]:11,.2f}" for m in modes)
        if "off" in values:
            line += "".join(f"{values[m] / values['off']:12.3f}" for m in others)
        print(line)
    dropped = sum(run.spans_dropped for mode in ("traces", "on") for run in runs.get(mode, []))
    print(
        f"exports: {counts['scrapes']} scrapes of /metrics ({counts['scrape_errors']} failed,"
        f" {counts['scrape_bytes']:,} bytes each), {counts['spans']:,} spans received in"
        f" {counts['batches']:,} batches, {dropped:,} spans dropped by the tracer"
    )


if __name__ == "__main__":
    asyncio.run(main())
