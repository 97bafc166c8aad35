"""The timed client: streams OpenAI-compatible completions and records what vLLM's would.

Per request it keeps TTFT (send to the first streamed token chunk), the gaps between
token chunks (ITL), E2EL (send to the last token chunk) and the server's own token
counts from `usage` (asked for with `stream_options.include_usage`; never re-tokenized).
Prompts for `/v1/completions` are lists of token ids, so their lengths are exact; chat
takes text, whose length in tokens only the server knows.

Overhead is kept off the clock: every request body is built and serialized before the
profile starts, one session is reused, and a stream is split into SSE lines in place.
Redirects are never followed: the url was checked (no link-local or metadata address),
and a 302 must not lead the client to one after all.
At most `concurrency` requests are in flight: a fixed pool of that many workers takes
prompts in order (vLLM's semaphore, without a pending task per prompt); with a request
rate, a dispatcher releases prompts at Poisson arrival times and a prompt that arrives
while every worker is busy waits, as it would on the semaphore.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import aiohttp
from yarl import URL

from assistant.jobs.bench.profiles import Profile
from assistant.jobs.bench.results import ProfileRun, RequestRecord
from assistant.jobs.text import decoded, valid_text

Endpoint = Literal["completions", "chat"]
ENDPOINT_PATHS: dict[str, str] = {"completions": "/completions", "chat": "/chat/completions"}
# (requests done, requests in the profile, output tokens/s lately); ~every 0.5 s and at the end
ProgressFn = Callable[[int, int, float], None]

_JSON = {"Content-Type": "application/json"}
_ERROR_TEXT = 300  # characters of an error body kept in the record
_ERROR_BYTES = 64 * 1024  # of an error response's body read at most
_MAX_LINE = 1024 * 1024  # an SSE line longer than this fails the request
_MAX_LISTING = 1024 * 1024  # of /v1/models read at most
# Chat prompts: common short words, about one token each in the usual BPE vocabularies.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his it an were are which "
    "this be or had not but first one their its new after who they have her she two "
    "been other when there all during into school time may years more most only over "
    "city some world would where later up such used many can state about national "
    "out known university united then made"
)
_WORDS = tuple(_WORD_TEXT.split())


def api_base(url: str) -> str:
    """The `/v1` base for requests: the URL as given when it ends in /v1, else with /v1."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def server_root(url: str) -> str:
    """Where the server's own routes (`/health`) live: the URL without its /v1."""
    return api_base(url)[: -len("/v1")]


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the server and shape the requests; the profile says how many and when."""

    url: str  # e.g. http://10.0.0.5:8000/v1 (a missing /v1 is added)
    model: str  # the name the server serves the model under
    endpoint: Endpoint = "completions"
    warmup: int = 1  # requests before the clock starts, not counted
    seed: int = 0  # prompts and arrival times
    token_ids: tuple[int, int] = (1000, 30000)  # random prompt ids from this range, inclusive
    read_timeout_s: float = 600.0  # the longest silence tolerated inside one response
    progress_interval_s: float = 0.5
    connections: int = 1024  # session connection limit: at least any profile's concurrency


@dataclass
class _Live:
    done: int = 0
    chunks: int = 0  # streamed token chunks (about one token each): the live rate only


@dataclass(frozen=True)
class _Prepared:
    body: bytes
    prompt_len: int


class BenchClient:
    """One aiohttp session for a whole benchmark; `run` times one profile."""

    def __init__(self, config: ClientConfig) -> None:
        if config.endpoint not in ENDPOINT_PATHS:
            raise ValueError(f"endpoint must be completions or chat, got {config.endpoint!r}")
        self.config = config
        self.url = api_base(config.url) + ENDPOINT_PATHS[config.endpoint]
        self._url = URL(self.url)  # parsed once, not on every request
        self._models_url = URL(api_base(config.url) + "/models")
        self._chat = config.endpoint == "chat"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BenchClient:
        connector = aiohttp.TCPConnector(limit=self.config.connections, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self.config.read_timeout_s
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def input_lengths_exact(self) -> bool:
        return not self._chat

    # ---- one profile -------------------------------------------------------------------

    async def run(
        self,
        profile: Profile,
        progress: ProgressFn | None = None,
        stop: asyncio.Event | None = None,
        before_clock: Callable[[], Awaitable[None]] | None = None,
    ) -> ProfileRun:
        """Warm up, then send every prompt of `profile` and time it.

        A set `stop` ends the profile early: requests in flight are cancelled and recorded
        as failed, prompts not yet sent are left out, and the run says `stopped`.
        `before_clock` is awaited after the warm-up, just before the clock starts (the
        server's counters are read there, so the warm-up is not in their difference).
        """
        if profile.concurrency > self.config.connections:
            raise ValueError(
                f"concurrency {profile.concurrency} exceeds the client's"
                f" {self.config.connections} connections"
            )
        seed = self.config.seed
        prompts = self._prepare(profile, random.Random(f"{seed}/{profile.name}/prompts"))
        warm_rng = random.Random(f"{seed}/{profile.name}/warmup")
        warmup_errors: list[str] = []
        for i in range(self.config.warmup):
            if stop is not None and stop.is_set():
                break
            warm = self._prepare_one(profile, warm_rng)
            record = RequestRecord(index=-1 - i, prompt_len=warm.prompt_len)
            await self._request(warm.body, record, time.perf_counter(), _Live())
            if not record.ok:
                warmup_errors.append(record.error or "unknown error")

        await self._connect(min(profile.concurrency, profile.num_prompts))
        live = _Live()
        records: list[RequestRecord] = []
        if stop is not None and stop.is_set():
            return ProfileRun(profile, records, 0.0, self.input_lengths_exact, True)
        if before_clock is not None:
            await before_clock()
        started = time.perf_counter()
        ticker = None
        if progress is not None:
            ticker = asyncio.create_task(self._tick(progress, live, profile.num_prompts))
        take, dispatcher = self._arrivals(profile, random.Random(f"{seed}/{profile.name}/arrivals"))
        workers = [
            asyncio.create_task(self._work(take, prompts, records, started, live))
            for _ in range(min(profile.concurrency, profile.num_prompts))
        ]
        stopped = await self._wait(workers, dispatcher, stop)
        duration = time.perf_counter() - started
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        run = ProfileRun(
            profile,
            sorted(records, key=lambda r: r.start),
            duration,
            self.input_lengths_exact,
            stopped,
            tuple(warmup_errors),
        )
        if progress is not None:
            tokens = sum(r.output_tokens for r in records if r.ok)
            progress(live.done, profile.num_prompts, tokens / duration if duration > 0 else 0.0)
        return run

    async def _connect(self, count: int) -> None:
        """Open `count` pooled connections before the clock starts.

        Otherwise the first wave of requests pays for TCP (and TLS) set-up inside its
        TTFT, which a benchmark of the server must not count. Any answer will do.
        """
        session = self._session
        if session is None:
            raise RuntimeError("BenchClient is not open: use `async with BenchClient(...)`")

        async def touch() -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self._models_url, allow_redirects=False) as response:
                    await response.read()

        await asyncio.gather(*(touch() for _ in range(count)))

    async def _wait(
        self,
        workers: list[asyncio.Task[None]],
        dispatcher: asyncio.Task[None] | None,
        stop: asyncio.Event | None,
    ) -> bool:
        """Until every worker is done, or `stop` is set; True when stopped early.

        However it ends (stop, a worker's exception, this coroutine cancelled), no task
        of the profile is left running behind it.
        """
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        pending: set[asyncio.Future[Any]] = set(workers)
        try:
            while pending:
                watch = pending if stopper is None else {*pending, stopper}
                done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                failed = any(t.exception() for t in done - {stopper} if not t.cancelled())
                if stopper in done or failed:
                    break
        finally:
            stopped = bool(pending)
            helpers = [t for t in (dispatcher, stopper) if t is not None]
            for task in (*workers, *helpers):
                task.cancel()  # a no-op for those already done
            outcomes = await asyncio.gather(*workers, *helpers, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                raise outcome
        return stopped

    def _arrivals(
        self, profile: Profile, rng: random.Random
    ) -> tuple[Callable[[], Awaitable[int | None]], asyncio.Task[None] | None]:
        """How workers get the next prompt index: at once, or at Poisson arrival times."""
        n = profile.num_prompts
        if profile.request_rate is None:
            indices: Iterator[int] = iter(range(n))

            async def take_now() -> int | None:
                return next(indices, None)

            return take_now, None

        queue: asyncio.Queue[int | None] = asyncio.Queue()
        rate = profile.request_rate
        workers = min(profile.concurrency, n)

        async def dispatch() -> None:
            loop = asyncio.get_running_loop()
            at = loop.time()
            for i in range(n):
                if i:
                    at += rng.expovariate(rate)
                delay = at - loop.time()  # absolute times: sleep overshoot does not add up
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait(i)
            for _ in range(workers):
                queue.put_nowait(None)

        return queue.get, asyncio.create_task(dispatch())

    async def _work(
        self,
        take: Callable[[], Awaitable[int | None]],
        prompts: list[_Prepared],
        records: list[RequestRecord],
        started: float,
        live: _Live,
    ) -> None:
        while (index := await take()) is not None:
            prompt = prompts[index]
            record = RequestRecord(index=index, prompt_len=prompt.prompt_len)
            records.append(record)  # before sending: a cancelled request still counts
            await self._request(prompt.body, record, started, live)
            live.done += 1

    async def _tick(self, progress: ProgressFn, live: _Live, total: int) -> None:
        loop = asyncio.get_running_loop()
        then, chunks = loop.time(), 0
        while True:
            await asyncio.sleep(self.config.progress_interval_s)
            now = loop.time()
            rate = (live.chunks - chunks) / (now - then) if now > then else 0.0
            then, chunks = now, live.chunks
            progress(live.done, total, rate)

    # ---- one request -------------------------------------------------------------------

    async def _request(
        self, body: bytes, record: RequestRecord, started: float, live: _Live
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("BenchClient is not open: use `async with BenchClient(...)`")
        sent = time.perf_counter()
        record.start = sent - started
        try:
            async with session.post(
                self._url, data=body, headers=_JSON, allow_redirects=False
            ) as response:
                if response.status != 200:
                    detail = _error_body(decoded(await _read_some(response, _ERROR_BYTES)))
                    reason = valid_text(response.reason or "")
                    record.error = f"HTTP {response.status} {reason}: {detail}"[:_ERROR_TEXT]
                    return
                await self._read_stream(response, record, sent, live)
        except asyncio.CancelledError:
            record.error = "stopped before the answer ended"
            raise
        except BadStream as exc:
            record.error = f"bad stream: {exc}"[:_ERROR_TEXT]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            record.error = valid_text(f"{type(exc).__name__}: {exc}")[:_ERROR_TEXT]

    async def _read_stream(
        self, response: aiohttp.ClientResponse, record: RequestRecord, sent: float, live: _Live
    ) -> None:
        chat = self._chat
        itl = record.itl
        pending = b""
        last = sent
        first = True
        done = False
        usage: dict[str, Any] | None = None
        problem: str | None = None
        async for data in response.content.iter_any():
            now = time.perf_counter()
            pending += data
            if b"\n" not in data:
                if len(pending) > _MAX_LINE:
                    raise BadStream(f"a line over {_MAX_LINE // 1024} KiB")
                continue
            *lines, pending = pending.split(b"\n")
            if len(pending) > _MAX_LINE:
                raise BadStream(f"a line over {_MAX_LINE // 1024} KiB")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": ping" comments, event: lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                if not _plain_token(payload):  # most chunks are: no need to parse them
                    message = _chunk(payload)
                    if message.get("usage"):
                        usage = message["usage"]
                    choices = message.get("choices")
                    if not choices:
                        if message.get("error") or message.get("object") == "error":
                            problem = _error_text(message)
                        continue
                    if chat and _role_only(choices[0]):
                        continue  # the role announcement is not a token
                if first:
                    record.ttft = now - sent
                    first = False
                else:
                    itl.append(now - last)
                last = now
                live.chunks += 1
        if problem is not None:
            record.error = f"error in the stream: {problem}"[:_ERROR_TEXT]
        elif first:
            record.error = "the stream ended without a token"
        elif not done:
            record.error = "the stream ended before data: [DONE]"
        elif usage is None:
            record.error = "no usage in the stream (the server ignored include_usage)"
        elif not _count(usage.get("completion_tokens") or 0):
            record.error = "bad stream: usage.completion_tokens is not a whole number"
        else:
            record.output_tokens = int(usage.get("completion_tokens") or 0)
            prompt_tokens = usage.get("prompt_tokens")
            if _count(prompt_tokens):
                record.prompt_len = prompt_tokens
            record.e2el = last - sent
            record.ok = True

    # ---- prompts -----------------------------------------------------------------------

    def _prepare(self, profile: Profile, rng: random.Random) -> list[_Prepared]:
        return [self._prepare_one(profile, rng) for _ in range(profile.num_prompts)]

    def _prepare_one(self, profile: Profile, rng: random.Random) -> _Prepared:
        body: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": profile.output_len,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._chat:
            text = " ".join(rng.choices(_WORDS, k=profile.input_len))
            body["messages"] = [{"role": "user", "content": text}]
            body["max_completion_tokens"] = profile.output_len  # the current name for it
        else:
            low, high = self.config.token_ids
            body["prompt"] = rng.choices(range(low, high + 1), k=profile.input_len)
        return _Prepared(json.dumps(body, separators=(",", ":")).encode(), profile.input_len)


def _plain_token(payload: bytes) -> bool:
    """A chunk that surely carries a token and nothing else we need (vLLM's compact JSON).

    Anything in doubt (usage, an error, a role announcement, other spacing) returns
    False and is parsed in full; these markers cannot occur inside generated text,
    where JSON escapes every quote.
    """
    return (
        payload.startswith(b"{")
        and payload.endswith(b"}")
        and b'"choices":[{' in payload
        and b'"usage":{' not in payload
        and b'"role"' not in payload
        and b'"error"' not in payload
    )


class BadStream(ValueError):
    """A streamed answer that is not what an OpenAI-compatible server sends."""


def _chunk(payload: bytes) -> dict[str, Any]:
    """One SSE data payload as a chunk, checked for the shape the stream loop relies on.

    :raises BadStream: saying what was wrong (the request is then recorded as failed).
    """
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadStream(f"a data line is not JSON: {decoded(payload[:40])!r}") from None
    if not isinstance(message, dict):
        raise BadStream(f"a chunk is a JSON {type(message).__name__}, not an object")
    choices = message.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise BadStream("choices is not a list")
    if choices and not isinstance(choices[0], dict):
        raise BadStream("choices[0] is not an object")
    if message.get("usage") and not isinstance(message["usage"], dict):
        raise BadStream("usage is not an object")
    return message


def _count(value: object) -> TypeGuard[int]:
    """A token count as a server should send it: a whole number, not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _read_some(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of a body: a hostile server's endless body is not read whole."""
    body = b""
    while len(body) < limit and (piece := await response.content.read(limit - len(body))):
        body += piece
    return body


def _role_only(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return "role" in delta and not delta.get("content") and not delta.get("reasoning_content")


def _error_body(text: str) -> str:
    """The message of an OpenAI-style error body, else the body on one line."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and (body.get("message") or body.get("error")):
        return _error_text(body)
    return " ".join(text.split())


def _error_text(message: dict[str, Any]) -> str:
    """The server's own words, made valid text (JSON escapes can carry lone surrogates)."""
    error = message.get("error")
    if isinstance(error, dict):
        text = str(error.get("message") or error)
    elif error:
        text = str(error)
    else:
        text = str(message.get("message") or message)
    return valid_text(text[: _ERROR_TEXT * 2])


# ----------------------------------------------------------------------------- server checks


@dataclass(frozen=True)
class Health:
    """Whether the server answered 200, where, and what the last attempt saw."""

    ok: bool
    detail: str  # "GET http://h:8000/health -> 200" or the last failure
    waited_s: float


async def wait_healthy(
    url: str,
    timeout_s: float,
    stop: asyncio.Event | None = None,
    interval_s: float = 1.0,
) -> Health:
    """Poll `<root>/health` (or `<base>/models` where there is no /health) until 200."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout_s
    probes = (server_root(url) + "/health", api_base(url) + "/models")
    last = "no attempt"
    async with aiohttp.ClientSession() as session:
        while True:
            for probe in probes:
                left = max(0.1, min(5.0, deadline - loop.time()))
                try:
                    async with session.get(
                        probe, timeout=aiohttp.ClientTimeout(total=left), allow_redirects=False
                    ) as response:
                        await response.read()
                        last = f"GET {probe} -> {response.status}"
                        if response.status == 200:
                            return Health(True, last, loop.time() - started)
                        if response.status not in (404, 405):
                            break  # /health exists and says not yet: no need for /models
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = f"GET {probe} -> {type(exc).__name__}: {exc}"
                    break  # nothing listens yet; the other probe would say the same
            now = loop.time()
            if now >= deadline or (stop is not None and stop.is_set()):
                return Health(False, last, now - started)
            pause = min(interval_s, deadline - now)
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await stop.wait()


async def served_models(url: str, timeout_s: float = 10.0) -> list[str] | None:
    """The model ids `<base>/models` lists, or None when it does not answer with a list."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                api_base(url) + "/models",
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response,
        ):
            if response.status != 200:
                return None
            listing = json.loads(await _read_some(response, _MAX_LISTING))
    except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError):
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return [valid_text(str(item.get("id")))[:200] for item in data if isinstance(item, dict)]
