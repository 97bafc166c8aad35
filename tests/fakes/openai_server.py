"""An OpenAI-compatible streaming server with exact timings: a stand-in for vLLM.

`POST /v1/completions` (`choices[0].text`) and `POST /v1/chat/completions`
(`choices[0].delta.content`, after a role-only first delta, as vLLM sends it) stream one
SSE chunk per token. The first token is due `ttft_ms` after the request arrived and each
next one `itl_ms` later (plus seeded uniform jitter); every due time is an absolute
deadline on the loop's clock, so sleep overshoot never adds up. `ignore_eos` makes the
output exactly `max_tokens` long; `stream_options.include_usage` adds vLLM's final chunk
(`choices: []` and `usage`) before `data: [DONE]`. A prompt may be a token-id list
(prompt_tokens = its length) or text (a whitespace word count). Requests for a model
the server does not serve get vLLM's 404. Failures on demand: every k-th request an
HTTP 500, or a stream cut off half-way. `GET /health` answers 503 until `start_delay_s`
has passed, then 200; `GET /v1/models` lists the served models. Every `stats_interval_s`
it prints a vLLM engine statistic line with real counts, and `GET /metrics` publishes
vLLM's Prometheus series (V1 names, or V0's with `metrics="v0"`) that move with the
requests served: token counters, running/waiting gauges, KV-cache usage. `metrics="off"`
answers 404 there (a server without /metrics), `"garbage"` sends text that is not the
Prometheus format, `"huge"` an endless body.

In tests:

    async with FakeOpenAIServer(ttft_ms=40, itl_ms=4) as fake:
        fake.url            # http://127.0.0.1:PORT/v1
        fake.requests[0].body

As the benchmark's "server image" (standard library and aiohttp only, run from its path):

    python tests/fakes/openai_server.py --host 0.0.0.0 --port 8000 --ttft-ms 50 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

_SPIN_S = 0.001  # the last stretch before a token is due, spent yielding instead of sleeping
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class FakeConfig:
    """The server's behaviour; times in milliseconds unless the name says seconds."""

    ttft_ms: float = 0.0  # arrival to the first token
    itl_ms: float = 0.0  # between tokens
    jitter_ms: float = 0.0  # each delay +- uniform(jitter), never below 0
    seed: int = 0
    fail_every: int = 0  # every k-th request (k, 2k, ...) answers HTTP 500; 0 = never
    break_every: int = 0  # every k-th request's stream stops half-way, connection dropped
    start_delay_s: float = 0.0  # /health says 503 until this long after start
    stats_interval_s: float = 1.0  # engine statistic lines; 0 = none
    models: tuple[str, ...] = ("fake-model",)
    eos_after: int = 0  # without ignore_eos, stop after this many tokens; 0 = max_tokens
    usage: bool = True  # False: never send usage, whatever the request asks
    default_max_tokens: int = 16
    kv_capacity_tokens: int = 1_000_000  # what "GPU KV cache usage" is a share of
    record: bool = True  # keep every request body in `requests`
    # Hostile answers: generation request k (1, 2, ...) gets scripted[(k - 1) % len] as
    # (status, raw body bytes), sent as is in small pieces; () = behave like vLLM.
    scripted: tuple[tuple[int, bytes], ...] = ()
    models_body: bytes | None = None  # a raw /v1/models answer (status 200) instead
    metrics: str = "vllm"  # GET /metrics: vllm | v0 | off (404) | garbage | huge


@dataclass
class Recorded:
    """One generation request as it arrived (loop time)."""

    path: str
    body: dict[str, Any]
    arrived: float
    first_token_at: float | None = None  # when the first token was written (loop time)


@dataclass
class _Counters:
    running: int = 0
    peak_running: int = 0  # the most requests generating at once, ever
    kv_tokens: int = 0
    prompt_tokens: int = 0  # since the last statistic line
    generated: int = 0  # since the last statistic line
    requests: int = 0
    # as /metrics publishes them: since start, never reset
    prompt_total: int = 0
    generation_total: int = 0
    peak_kv_tokens: int = 0


class BadRequest(ValueError):
    """The body is not a request this server can answer (HTTP 400)."""


def _print_line(line: str) -> None:
    print(line, flush=True)


class FakeOpenAIServer:
    """The server; start it with `async with`, or `start()` / `aclose()`."""

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        stats_sink: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        self.config = dataclasses.replace(config or FakeConfig(), **overrides)
        self.stats_sink = stats_sink or _print_line
        self.requests: list[Recorded] = []
        self.counters = _Counters()
        self.url = ""  # http://HOST:PORT/v1
        self.root = ""  # http://HOST:PORT
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        self._stats: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self.started_at = time.time()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.root = f"http://{shown}:{bound}"
        self.url = self.root + "/v1"
        loop = asyncio.get_running_loop()
        self._ready_at = loop.time() + self.config.start_delay_s
        if self.config.stats_interval_s > 0:
            self._stats = asyncio.create_task(self._log_stats())

    async def aclose(self) -> None:
        if self._stats is not None:
            self._stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats
            self._stats = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- simple routes -----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if asyncio.get_running_loop().time() < self._ready_at:
            return web.Response(status=503, text="starting")
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        if self.config.models_body is not None:
            return web.Response(body=self.config.models_body, content_type="application/json")
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": m}
            for m in self.config.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        mode = self.config.metrics
        if mode == "off":
            return web.Response(status=404, text="404: Not Found")
        if mode == "garbage":
            text = '<html>not metrics</html>\nvllm:num_requests_running{engine="0"} many\n'
            return web.Response(text=text, content_type="text/plain")
        if mode == "huge":
            return await _raw_answer(request, 200, b"# " + b"x" * (5 * 1024 * 1024) + b"\n")
        return web.Response(text=self.exposition(), content_type="text/plain", charset="utf-8")

    def exposition(self) -> str:
        """vLLM's series in the Prometheus text format, with this server's counts."""
        c = self.config
        v0 = c.metrics == "v0"
        labels = f'{{engine="0",model_name={json.dumps(c.models[0])}}}'
        kv = self.counters.kv_tokens / max(1, c.kv_capacity_tokens)
        hits = "vllm:gpu_prefix_cache_hits" if v0 else "vllm:prefix_cache_hits"
        queries = "vllm:gpu_prefix_cache_queries" if v0 else "vllm:prefix_cache_queries"
        series = (
            ("vllm:num_requests_running", "gauge", self.counters.running),
            ("vllm:num_requests_waiting", "gauge", 0),
            ("vllm:gpu_cache_usage_perc" if v0 else "vllm:kv_cache_usage_perc", "gauge", kv),
            ("vllm:prompt_tokens", "counter", self.counters.prompt_total),
            ("vllm:generation_tokens", "counter", self.counters.generation_total),
            (hits, "counter", 0),
            (queries, "counter", self.counters.prompt_total),
            ("vllm:num_preemptions", "counter", 0),
            # a histogram, as vLLM has dozens: the reader must pass over it
            ("vllm:e2e_request_latency_seconds", "histogram", self.counters.requests),
        )
        lines = [
            "# HELP python_gc_objects_collected_total Objects collected during gc",
            "# TYPE python_gc_objects_collected_total counter",
            'python_gc_objects_collected_total{generation="0"} 1234.0',
        ]
        for name, kind, value in series:
            lines += [f"# HELP {name} {name} of the fake server.", f"# TYPE {name} {kind}"]
            if kind == "counter":
                lines.append(f"{name}_total{labels} {float(value)}")
                lines.append(f"{name}_created{labels} {self.started_at}")
            elif kind == "histogram":
                inner = labels[1:-1]
                lines.append(f'{name}_bucket{{{inner},le="1.0"}} {float(value)}')
                lines.append(f'{name}_bucket{{{inner},le="+Inf"}} {float(value)}')
                lines.append(f"{name}_count{labels} {float(value)}")
                lines.append(f"{name}_sum{labels} 0.5")
            else:
                lines.append(f"{name}{labels} {float(value)}")
        return "\n".join(lines) + "\n"

    # ---- generation --------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        cfg = self.config
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "BadRequestError")
        self.counters.requests += 1
        number = self.counters.requests
        recorded = Recorded(request.path, body, arrived)
        if cfg.record:
            self.requests.append(recorded)
        if cfg.scripted:
            status, raw = cfg.scripted[(number - 1) % len(cfg.scripted)]
            return await _raw_answer(request, status, raw)
        if cfg.fail_every and number % cfg.fail_every == 0:
            return _error(500, f"injected failure on request {number}", "InternalServerError")
        model = body.get("model")
        if model not in cfg.models:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        try:
            prompt_tokens = _prompt_tokens(body, chat=chat)
            max_tokens = _max_tokens(body, cfg.default_max_tokens)
        except BadRequest as exc:
            return _error(400, str(exc), "BadRequestError")
        tokens = max_tokens
        if cfg.eos_after and not body.get("ignore_eos"):
            tokens = min(tokens, cfg.eos_after)
        deadlines = self._deadlines(arrived, tokens)
        broken = bool(cfg.break_every and number % cfg.break_every == 0)
        options = body.get("stream_options") or {}
        usage = None
        if cfg.usage and (options.get("include_usage") or not body.get("stream")):
            usage = {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + tokens,
                "completion_tokens": tokens,
                "prompt_tokens_details": None,
            }
        chunks = _Chunks(chat, f"{'chatcmpl' if chat else 'cmpl'}-{number}", str(model))
        self.counters.running += 1
        self.counters.peak_running = max(self.counters.peak_running, self.counters.running)
        self.counters.prompt_tokens += prompt_tokens
        self.counters.prompt_total += prompt_tokens
        self.counters.kv_tokens += prompt_tokens
        written = 0
        try:
            if not body.get("stream"):
                await _sleep_until(loop, deadlines[-1] if deadlines else arrived)
                written = tokens
                self.counters.generated += tokens
                self.counters.generation_total += tokens
                self.counters.kv_tokens += tokens
                return web.json_response(chunks.whole(tokens, usage))
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            for i, deadline in enumerate(deadlines):
                if broken and i == tokens // 2:
                    _drop_connection(request)
                    return response
                await _sleep_until(loop, deadline)
                await response.write(chunks.token(i, last=i == tokens - 1))
                if i == 0:
                    recorded.first_token_at = loop.time()
                written += 1
                self.counters.generated += 1
                self.counters.generation_total += 1
                self.counters.kv_tokens += 1
                self.counters.peak_kv_tokens = max(
                    self.counters.peak_kv_tokens, self.counters.kv_tokens
                )
            if usage is not None:
                await response.write(chunks.usage(usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.counters.running -= 1
            self.counters.kv_tokens -= prompt_tokens + written

    def _deadlines(self, arrived: float, tokens: int) -> list[float]:
        """Due times of every token: ttft after arrival, then itl apart, jittered."""
        cfg = self.config
        jitter = cfg.jitter_ms / 1000.0
        rng = self._rng

        def delay(ms: float) -> float:
            base = ms / 1000.0
            return max(0.0, base + rng.uniform(-jitter, jitter)) if jitter else base

        out: list[float] = []
        at = arrived + delay(cfg.ttft_ms)
        for _ in range(tokens):
            out.append(at)
            at += delay(cfg.itl_ms)
        return out

    async def _log_stats(self) -> None:
        """vLLM's engine statistic line, with this server's own counts."""
        loop = asyncio.get_running_loop()
        every = self.config.stats_interval_s
        then = loop.time()
        next_at = then + every
        while True:
            await _sleep_until(loop, next_at)
            next_at += every
            now = loop.time()
            elapsed = max(now - then, 1e-9)
            c = self.counters
            kv = 100.0 * c.kv_tokens / max(1, self.config.kv_capacity_tokens)
            self.stats_sink(
                f"INFO {time.strftime('%m-%d %H:%M:%S')} [loggers.py:123] Engine 000:"
                f" Avg prompt throughput: {c.prompt_tokens / elapsed:.1f} tokens/s,"
                f" Avg generation throughput: {c.generated / elapsed:.1f} tokens/s,"
                f" Running: {c.running} reqs, Waiting: 0 reqs,"
                f" GPU KV cache usage: {kv:.1f}%, Prefix cache hit rate: 0.0%"
            )
            c.prompt_tokens = c.generated = 0
            then = now


class _Chunks:
    """The SSE bytes of one answer, built from fixed pieces (cheap at thousands a second)."""

    def __init__(self, chat: bool, ident: str, model: str) -> None:
        self.chat = chat
        self.created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            f'data: {{"id":"{ident}","object":"{obj}","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":['
        )
        self.ident, self.model = ident, model

    def token(self, i: int, *, last: bool) -> bytes:
        finish = '"length"' if last else "null"
        text = f" t{i % 100}"
        if self.chat:
            choice = (
                f'{{"index":0,"delta":{{"content":"{text}"}},"logprobs":null,'
                f'"finish_reason":{finish}}}'
            )
            out = f"{self._head}{choice}]}}\n\n"
            if i == 0:  # vLLM's first chunk announces the role, with no content
                role = '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
                out = f"{self._head}{role}]}}\n\n" + out
            return out.encode()
        choice = (
            f'{{"index":0,"text":"{text}","logprobs":null,"finish_reason":{finish},'
            f'"stop_reason":null}}'
        )
        return f'{self._head}{choice}],"usage":null}}\n\n'.encode()

    def usage(self, usage: dict[str, Any]) -> bytes:
        return f'{self._head}],"usage":{json.dumps(usage)}}}\n\n'.encode()

    def whole(self, tokens: int, usage: dict[str, Any] | None) -> dict[str, Any]:
        text = "".join(f" t{i % 100}" for i in range(tokens))
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        obj = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.ident,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


def _prompt_tokens(body: dict[str, Any], *, chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        words = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                words += len(content.split())
            elif isinstance(content, list):
                words += sum(
                    len(str(part.get("text", "")).split())
                    for part in content
                    if isinstance(part, dict)
                )
            else:
                raise BadRequest("each message needs a content string or list")
        return words
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.split())
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return len(prompt)
    raise BadRequest("prompt must be a string or a non-empty list of token ids")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {value!r}")
    return value


def _error(status: int, message: str, kind: str) -> web.Response:
    """vLLM's error body."""
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.json_response(body, status=status)


async def _raw_answer(request: web.Request, status: int, raw: bytes) -> web.StreamResponse:
    """`raw` as the body, whatever it holds, written in pieces as a stream would be."""
    response = web.StreamResponse(status=status, headers=_SSE_HEADERS)
    await response.prepare(request)
    for i in range(0, len(raw), 64 * 1024):
        await response.write(raw[i : i + 64 * 1024])
    await response.write_eof()
    return response


def _drop_connection(request: web.Request) -> None:
    """Cut the TCP connection mid-answer, as a crashed server would."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    """Sleep to within microseconds of `deadline`.

    asyncio's timers wake up to a millisecond late (epoll takes whole milliseconds and
    the loop rounds up), which would bias every TTFT by half a millisecond: so sleep to
    a millisecond short, then yield to the loop until the moment comes.
    """
    delay = deadline - loop.time()
    if delay > _SPIN_S:
        await asyncio.sleep(delay - _SPIN_S)
    while loop.time() < deadline:  # noqa: ASYNC110 - a deliberate spin, at most 1 ms long
        await asyncio.sleep(0)


# ----------------------------------------------------------------------------- standalone


def _parse(argv: Sequence[str]) -> tuple[str, int, FakeConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--break-every", type=int, default=0)
    parser.add_argument("--start-delay-s", type=float, default=0.0)
    parser.add_argument("--stats-interval-s", type=float, default=1.0)
    parser.add_argument("--eos-after", type=int, default=0)
    parser.add_argument("--no-usage", action="store_true")
    parser.add_argument(
        "--metrics", default="vllm", choices=("vllm", "v0", "off", "garbage", "huge")
    )
    parser.add_argument(
        "--model", action="append", help="a served model id (repeatable; default fake-model)"
    )
    # vLLM's own options, so the host starts this exactly as it starts vLLM's image
    parser.add_argument("--served-model-name", action="append")
    for ignored in ("--tensor-parallel-size", "--max-model-len", "--dtype"):
        parser.add_argument(ignored)
    a = parser.parse_args(argv)
    config = FakeConfig(
        ttft_ms=a.ttft_ms,
        itl_ms=a.itl_ms,
        jitter_ms=a.jitter_ms,
        seed=a.seed,
        fail_every=a.fail_every,
        break_every=a.break_every,
        start_delay_s=a.start_delay_s,
        stats_interval_s=a.stats_interval_s,
        models=tuple(a.served_model_name or a.model or ("fake-model",)),
        eos_after=a.eos_after,
        usage=not a.no_usage,
        metrics=a.metrics,
        record=False,  # a long-lived server must not keep every body
    )
    return a.host, a.port, config


def main(argv: Sequence[str] | None = None) -> int:
    host, port, config = _parse(sys.argv[1:] if argv is None else argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = FakeOpenAIServer(config)
        await server.start(host, port)
        print(f"fake OpenAI server on {server.url} (bound to {host})", flush=True)
        try:
            await stop.wait()
        finally:
            await server.aclose()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
