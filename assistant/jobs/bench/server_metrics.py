"""The server's own counts from its Prometheus `/metrics`: vLLM's `vllm:` series.

A profile reads `<server root>/metrics` once before its clock starts and once after its
last answer, and every SAMPLE_S in between. Counters (tokens, prefix-cache hits) are
reported as the difference after - before, gauges (KV-cache usage, requests running and
waiting) as their peak over the samples and their value at the end. The client's own
counts stay the benchmark's figures; the server's are there to check them against and to
say why a profile was slow (a full KV cache, a queue, preemptions).

Both the names of vLLM's V0 engine and those of V1 are read (the first found wins):

    generation / prompt tokens   vllm:generation_tokens_total, vllm:prompt_tokens_total
    KV-cache usage (0..1)        vllm:kv_cache_usage_perc, vllm:gpu_cache_usage_perc
    prefix-cache hits, queries   vllm:prefix_cache_hits_total, vllm:prefix_cache_queries_total
                                 (older V1: vllm:gpu_prefix_cache_hits_total / _queries_total)
    prefix-cache hit rate (V0)   vllm:gpu_prefix_cache_hit_rate
    requests running / waiting   vllm:num_requests_running, vllm:num_requests_waiting
    preemptions                  vllm:num_preemptions_total

Series of several engines (the `engine` label, data parallel) are added up; KV-cache
usage takes the fullest engine. The server is not trusted: the read is bounded in size
and time, redirects are never followed, and whatever goes wrong (no route, a 404,
garbage, a body over MAX_BYTES, a server without vLLM's names) becomes a reason and
"no server metrics" for that profile, never a failed profile. Only the lines of the
series above are handed to `prometheus_client`'s parser, so the timed client's event
loop is not held up parsing vLLM's many histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

MAX_BYTES = 4 * 1024 * 1024  # vLLM's exposition is some hundreds of KiB
TIMEOUT_S = 5.0
SAMPLE_S = 1.0
MAX_REASON = 200

# what we report -> the vLLM sample names that carry it, newest engine first
COUNTERS: dict[str, tuple[str, ...]] = {
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "prefix_cache_hits": (
        "vllm:prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits",
    ),
    "prefix_cache_queries": (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries",
    ),
    "preemptions": ("vllm:num_preemptions_total",),
}
GAUGES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "prefix_cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),
}
_MAX_OF_ENGINES = {"kv_cache_usage", "prefix_cache_hit_rate"}  # fractions: the fullest engine
WANTED = frozenset(name for names in (*COUNTERS.values(), *GAUGES.values()) for name in names)
# the live figures the run's progress shows; the monitor reads the server's log when absent
SCRAPES_METRIC = "server_metrics_scrapes"


class MetricsError(Exception):
    """Why there are no server metrics: a short reason, in words."""


@dataclass(frozen=True)
class Snapshot:
    """One read of /metrics: the figures found (by our name) and the vLLM names read."""

    at: float  # time.monotonic()
    values: dict[str, float]
    names: tuple[str, ...]


def metrics_url(server_root: str) -> str:
    return server_root.rstrip("/") + "/metrics"


def _metric_name(line: str) -> str:
    """The sample name a line starts with, or for `# TYPE x` / `# HELP x`, that x."""
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) >= 3 and parts[1] in ("TYPE", "HELP") else ""
    end = len(line)
    for stop in ("{", " ", "\t"):
        at = line.find(stop)
        if at != -1:
            end = min(end, at)
    return line[:end]


def _family_names(name: str) -> set[str]:
    """The sample names a TYPE/HELP line may announce (a counter's family drops _total)."""
    return {name, name + "_total"}


def relevant_lines(text: str) -> str:
    """The exposition's lines for the series read here, comments for them included."""
    keep = []
    for line in text.splitlines():
        name = _metric_name(line.strip())
        if not name:
            continue
        if line.lstrip().startswith("#"):
            if _family_names(name) & WANTED:
                keep.append(line)
        elif name in WANTED:
            keep.append(line)
    return "\n".join(keep) + "\n"


def parse(text: str, at: float | None = None) -> Snapshot:
    """The figures in a Prometheus text exposition.

    :raises MetricsError: the text does not parse, or holds none of vLLM's series.
    """
    samples: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(relevant_lines(text)):
            for sample in family.samples:
                if sample.name in WANTED and math.isfinite(sample.value):
                    samples.setdefault(sample.name, []).append(float(sample.value))
    except Exception as exc:  # the parser's errors are ValueError, IndexError, KeyError...
        raise MetricsError(_short(f"not Prometheus text ({type(exc).__name__}: {exc})")) from None
    values: dict[str, float] = {}
    names: list[str] = []
    for ours, candidates in (*COUNTERS.items(), *GAUGES.items()):
        for candidate in candidates:
            if candidate in samples:
                found = samples[candidate]
                values[ours] = max(found) if ours in _MAX_OF_ENGINES else sum(found)
                names.append(candidate)
                break
    if not values:
        raise MetricsError("no vLLM metrics (vllm:...) in the exposition")
    return Snapshot(time.monotonic() if at is None else at, values, tuple(names))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


async def scrape(
    session: aiohttp.ClientSession, url: str, timeout_s: float = TIMEOUT_S
) -> Snapshot:
    """GET the exposition (bounded, no redirect) and parse it off the event loop.

    :raises MetricsError: with the reason.
    """
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            if response.status != 200:
                raise MetricsError(f"GET {url} -> HTTP {response.status}")
            body = b""
            while len(body) <= MAX_BYTES and (
                piece := await response.content.read(MAX_BYTES + 1 - len(body))
            ):
                body += piece
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise MetricsError(_short(f"GET {url} -> {type(exc).__name__}: {exc}")) from None
    if len(body) > MAX_BYTES:
        raise MetricsError(f"GET {url} -> more than {MAX_BYTES // (1024 * 1024)} MiB")
    text = body.decode("utf-8", "replace")
    return await asyncio.to_thread(parse, text)


# ----------------------------------------------------------------------------- one profile


@dataclass
class Watch:
    """The reads of one profile: before, the samples during it, after."""

    url: str
    before: Snapshot | None = None
    after: Snapshot | None = None
    samples: list[Snapshot] = field(default_factory=list)
    failed_samples: int = 0
    reason: str | None = None  # why before or after is missing

    def block(self) -> dict[str, Any]:
        """The profile result's `server_metrics`: deltas and peaks, or the reason for none."""
        if self.before is None or self.after is None:
            return {"available": False, "url": self.url, "reason": self.reason or "not read"}
        before, after = self.before.values, self.after.values
        seen = [self.before, *self.samples, self.after]
        out: dict[str, Any] = {"available": True, "url": self.url, "source": "/metrics"}
        resets = []
        for name in COUNTERS:
            if name in before and name in after:
                delta = after[name] - before[name]
                if delta < 0:  # the server restarted: its counters began again
                    resets.append(name)
                    out[name] = None
                else:
                    out[name] = int(delta) if float(delta).is_integer() else delta
            else:
                out[name] = None
        hits, queries = out.get("prefix_cache_hits"), out.get("prefix_cache_queries")
        out["prefix_cache_hit_pct"] = (
            100.0 * hits / queries if hits is not None and queries else None
        )
        for name in GAUGES:
            values = [s.values[name] for s in seen if name in s.values]
            scale = 100.0 if name in _MAX_OF_ENGINES else 1.0
            key = f"{name}_pct" if name in _MAX_OF_ENGINES else name
            out[f"{key}_peak"] = max(values) * scale if values else None
            out[f"{key}_end"] = after[name] * scale if name in after else None
        if out["prefix_cache_hit_pct"] is None and out["prefix_cache_hit_rate_pct_end"] is not None:
            out["prefix_cache_hit_pct"] = out["prefix_cache_hit_rate_pct_end"]  # V0: a gauge
        out["seconds"] = round(self.after.at - self.before.at, 3)
        out["samples"] = len(seen)
        out["failed_samples"] = self.failed_samples
        out["names"] = sorted({n for s in seen for n in s.names})
        if resets:
            out["note"] = f"counters went backwards (server restarted?): {', '.join(resets)}"
        return out


LiveFn = Callable[[Mapping[str, float]], None]


class ServerMetrics:
    """Reads one server's /metrics around and during profiles, on a session of its own."""

    def __init__(self, server_root: str, sample_s: float = SAMPLE_S) -> None:
        self.url = metrics_url(server_root)
        self.sample_s = sample_s
        self.scrapes = 0
        self._session: aiohttp.ClientSession | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._watch: Watch | None = None

    async def __aenter__(self) -> ServerMetrics:
        # one connection: the reads never compete with the benchmark's pool
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop_sampler()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _read(self) -> Snapshot:
        if self._session is None:
            raise MetricsError("the metrics reader is not open")
        snapshot = await scrape(self._session, self.url)
        self.scrapes += 1
        return snapshot

    def profile(self, live: LiveFn | None = None) -> ProfileReads:
        """The reads of one profile: `start` before its clock, `finish` after it."""
        return ProfileReads(self, live)

    async def begin(self, live: LiveFn | None = None) -> Watch:
        """The reading before a profile's clock starts; samples follow until `end`."""
        await self._stop_sampler()
        watch = Watch(self.url)
        self._watch = watch
        try:
            watch.before = await self._read()
        except MetricsError as exc:
            watch.reason = str(exc)
            return watch  # no baseline: sampling would be for nothing
        self._sampler = asyncio.create_task(self._sample(watch, live))
        return watch

    async def end(self, watch: Watch, read: bool = True) -> dict[str, Any]:
        """The reading after the profile's last answer, and the profile's block.

        `read=False` (the run is stopping) skips the reading: a stop must not wait on a
        slow server, and a cut-off profile's differences would mean little anyway.
        """
        await self._stop_sampler()
        if not read:
            watch.before, watch.reason = None, "stopped before the profile finished"
        elif watch.before is not None:
            try:
                watch.after = await self._read()
            except MetricsError as exc:
                watch.reason = f"after the profile: {exc}"
        return watch.block()

    async def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample(self, watch: Watch, live: LiveFn | None) -> None:
        last = watch.before
        while True:
            await asyncio.sleep(self.sample_s)
            try:
                snapshot = await self._read()
            except MetricsError:
                watch.failed_samples += 1
                continue
            watch.samples.append(snapshot)
            if live is not None and last is not None:
                live(live_figures(last, snapshot, self.scrapes))
            last = snapshot


def live_figures(last: Snapshot, now: Snapshot, scrapes: int) -> dict[str, float]:
    """What the run's progress line shows, under the names the log reader gives them."""
    out: dict[str, float] = {SCRAPES_METRIC: float(scrapes)}
    seconds = now.at - last.at
    for ours, name in (
        ("generation_tokens", "engine_gen_tok_s"),
        ("prompt_tokens", "engine_prompt_tok_s"),
    ):
        if seconds > 0 and ours in now.values and ours in last.values:
            out[name] = max(0.0, now.values[ours] - last.values[ours]) / seconds
    for ours, name, scale in (
        ("kv_cache_usage", "kv_cache_pct", 100.0),
        ("running", "engine_running", 1.0),
        ("waiting", "engine_waiting", 1.0),
    ):
        if ours in now.values:
            out[name] = now.values[ours] * scale
    return out


class ProfileReads:
    """One profile's reads; `finish` says why there are none when `start` never ran."""

    def __init__(self, server: ServerMetrics, live: LiveFn | None) -> None:
        self.server = server
        self.live = live
        self.watch: Watch | None = None

    async def start(self) -> None:
        self.watch = await self.server.begin(self.live)

    async def finish(self, stopped: bool = False) -> dict[str, Any]:
        if self.watch is None:
            return {
                "available": False,
                "url": self.server.url,
                "reason": "stopped before the profile started",
            }
        return await self.server.end(self.watch, read=not stopped)


# ----------------------------------------------------------------------------- in words


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _tokens(block: Mapping[str, Any], key: str, client: object, what: str) -> str | None:
    server = _number(block.get(key))
    if server is None:
        return None
    text = f"{server:,.0f} {what} tokens (server count)"
    theirs = _number(client)
    return text + (f" vs {theirs:,.0f} client count" if theirs is not None else "")


def server_line(
    block: Mapping[str, Any], client_out: object = None, client_in: object = None
) -> str:
    """`server: 51,200 generated tokens (server count) vs 51,200 client count; ...`.

    A block without figures gives `server: no metrics (<reason>)`.
    """
    if not block.get("available"):
        return f"server: no metrics ({_short(str(block.get('reason') or 'not read'))})"
    parts = [
        p
        for p in (
            _tokens(block, "generation_tokens", client_out, "generated"),
            _tokens(block, "prompt_tokens", client_in, "prompt"),
        )
        if p is not None
    ]
    kv = _number(block.get("kv_cache_usage_pct_peak"))
    if kv is not None:
        parts.append(f"KV cache peak {kv:.1f}%")
    hit = _number(block.get("prefix_cache_hit_pct"))
    if hit is not None:
        parts.append(f"prefix hits {hit:.0f}%")
    running, waiting = _number(block.get("running_peak")), _number(block.get("waiting_peak"))
    if running is not None:
        parts.append(f"max running {running:.0f}")
    if waiting is not None:
        parts.append(f"max waiting {waiting:.0f}")
    preempted = _number(block.get("preemptions"))
    if preempted:
        parts.append(f"{preempted:,.0f} preemptions")
    if block.get("note"):
        parts.append(_short(str(block["note"])))
    return "server: " + ("; ".join(parts) or "no figures")
