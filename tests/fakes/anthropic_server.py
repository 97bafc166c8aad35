"""A Messages API server on 127.0.0.1 that speaks the real wire format, driven by a script.

`POST /v1/messages` answers with the next step of the script: a `Reply` (text and tool_use
blocks, as JSON or, for `"stream": true`, as the SSE events the real API sends:
message_start, content_block_start / ping / content_block_delta / content_block_stop,
message_delta, message_stop) or a `Failure` (an HTTP status with the real error body, or an
`error` event in the middle of a stream). Every request is recorded, body and headers, so a
test can assert what was sent. Auth is not checked (the SDK sends `Authorization: Bearer`).

    async with FakeAnthropic([Reply([ToolUse("tu_1", "status", {})]), Reply("done")]) as fake:
        settings = ...(anthropic_base_url=fake.url)
        ...
        fake.requests[1].body["messages"][-1]   # the tool results
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "authentication_error": "invalid x-api-key",
}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass(frozen=True)
class Reply:
    """One model answer. A str is one text block; stop_reason defaults from the blocks."""

    content: str | Sequence[Text | ToolUse]
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    delay_s: float = 0.0  # before answering (a slow model)

    @property
    def blocks(self) -> list[Text | ToolUse]:
        return [Text(self.content)] if isinstance(self.content, str) else list(self.content)

    @property
    def stop(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if any(isinstance(b, ToolUse) for b in self.blocks) else "end_turn"


@dataclass(frozen=True)
class Failure:
    """An error as the API sends it; `in_stream` sends it as an SSE `error` event instead."""

    status: int
    error_type: str | None = None
    message: str | None = None
    retry_after_ms: int | None = None  # the real API sends retry-after on 429s
    in_stream: bool = False

    @property
    def kind(self) -> str:
        return self.error_type or ERROR_TYPES.get(self.status, "api_error")

    def body(self, request_id: str) -> dict[str, Any]:
        message = self.message or ERROR_MESSAGES.get(self.kind, "error")
        return {
            "type": "error",
            "error": {"type": self.kind, "message": message},
            "request_id": request_id,
        }


Step = Reply | Failure


@dataclass
class Recorded:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def streamed(self) -> bool:
        return bool(self.body.get("stream"))


class FakeAnthropic:
    """The fake server; `script` is consumed one step per request, in order."""

    def __init__(self, script: Iterable[Step] = ()) -> None:
        self.script: list[Step] = list(script)
        self.requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, *steps: Step) -> None:
        self.script.extend(steps)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = self._runner.addresses[0]
        self.url = f"http://127.0.0.1:{server[1]}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- the endpoint ------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        n = next(self._ids)
        request_id = f"req_fake_{n:04d}"
        headers = {"request-id": request_id}
        if not self.script:
            error = Failure(500, "api_error", "fake script exhausted").body(request_id)
            # x-should-retry: a test that ran out of script fails at once, not after retries
            return web.json_response(
                error, status=500, headers={**headers, "x-should-retry": "false"}
            )
        step = self.script.pop(0)
        if isinstance(step, Failure) and not step.in_stream:
            if step.retry_after_ms is not None:
                headers["retry-after-ms"] = str(step.retry_after_ms)
                headers["retry-after"] = str(max(1, step.retry_after_ms // 1000))
            return web.json_response(step.body(request_id), status=step.status, headers=headers)
        if isinstance(step, Reply) and step.delay_s:
            await asyncio.sleep(step.delay_s)
        message = _message(f"msg_fake_{n:04d}", str(body.get("model", "")), step)
        if not body.get("stream"):
            assert isinstance(step, Reply)
            return web.json_response(message, headers=headers)
        return await self._stream(request, message, step, headers, request_id)

    async def _stream(
        self,
        request: web.Request,
        message: dict[str, Any],
        step: Step,
        headers: dict[str, str],
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        for event, data in _events(message, step, request_id):
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response


def _message(message_id: str, model: str, step: Step) -> dict[str, Any]:
    blocks = step.blocks if isinstance(step, Reply) else []
    content: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        else:
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    usage = step.usage if isinstance(step, Reply) else Usage()
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": step.stop if isinstance(step, Reply) else None,
        "stop_sequence": None,
        "usage": usage.as_json(),
    }


def _events(
    message: dict[str, Any], step: Step, request_id: str
) -> Iterable[tuple[str, dict[str, Any]]]:
    """The SSE events of one answer, in the order and shape the real API sends them."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    if isinstance(step, Failure):
        yield "error", step.body(request_id)
        return
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "text": ""},
                },
            )
            for piece in _pieces(block["text"]):
                delta = {"type": "text_delta", "text": piece}
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                },
            )
            for piece in _pieces(json.dumps(block["input"])):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": usage,  # cumulative totals, as the API now sends them
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _pieces(text: str, size: int = 7) -> list[str]:
    """Split like a real stream: several deltas per block (at least one)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
