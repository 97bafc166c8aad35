"""The Claude agent: free text answered by Anthropic's Messages API, with the chat commands
as tools.

Every model call is an action (`model_call`, triggered by the batch's event) carrying its
token counts and cost, and a `model_usage` row; the tool calls it asked for run inside that
action, so /debug event shows message -> model calls -> tool calls -> reply. Transient API
errors (429, 5xx, 529) are retried by the SDK; one that outlasts the retries is raised as a
`ModelError`, which the orchestrator turns into a reply and a failed action.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anthropic
from anthropic.types import (
    Message,
    MessageParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
)

from assistant.agent_tools import AgentTools, Invoke, Offer, ToolError, tool_params
from assistant.config import Settings
from assistant.errors import ConfigError, OpsError
from assistant.observability import ActionScope, EventLog
from assistant.pricing import cost_usd
from assistant.redaction import Redactor
from assistant.services import shared_redactor
from storage.db import Database
from storage.messages import MessageRepo, StoredMessage
from storage.timestamps import utc_now
from storage.usage import ModelCall, UsageRepo

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the history budget's estimate; real tokenisers vary around it
HISTORY_MESSAGES = 200  # read at most this many stored messages before trimming
_JOIN = "\n\n"  # between merged messages of one turn; counted in the budget
_CUT = "…[cut to fit the history budget]"
COMMANDS_WITHOUT_MODEL = "/status, /runs, /run …, /task …, /debug …, /usage (/help lists all)"
_RETRIED = (408, 409, 429)
_STOP_NOTES = {
    "max_tokens": "(Cut off at the reply length limit, ASSISTANT_MODEL_MAX_TOKENS.)",
    "refusal": "(The model declined to go on with this.)",
    "model_context_window_exceeded": "(Cut off: the conversation outgrew the model's context.)",
}


class ModelError(OpsError):
    """The model API failed after the SDK's retries; the message says how, for the chat."""


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


def is_isolated(messages: Sequence[StoredMessage]) -> bool:
    """A scheduled prompt (seq 0, never a stored seq) runs without the chat's history."""
    return all(m.seq == 0 for m in messages)


def conversation(
    history: Sequence[StoredMessage], batch: Sequence[StoredMessage], budget_chars: int
) -> list[Turn]:
    """The turns to send: history then the batch, roles alternating, within the budget.

    Replies stored after a batch message arrived still come before the batch; messages
    newer than the batch are left for the next one. Trimming drops the oldest messages;
    the newest is always sent, cut if it alone is over the budget. The text sent, joins
    included, never exceeds `budget_chars`.
    """
    in_batch = {m.seq for m in batch}
    last = max(in_batch, default=0)
    earlier = sorted(
        (m for m in history if m.seq not in in_batch and (m.from_me or m.seq < last)),
        key=lambda m: m.seq,
    )
    ordered = [m for m in (*earlier, *batch) if m.text.strip()]
    several = len({m.sender for m in ordered if not m.from_me}) > 1
    items: list[Turn] = [
        Turn(
            "assistant" if m.from_me else "user",
            m.text.strip() if m.from_me or not several else f"{m.sender}: {m.text.strip()}",
        )
        for m in ordered
    ]
    kept: list[Turn] = []
    used = 0
    for item in reversed(items):
        cost = len(item.text) + len(_JOIN)
        if used + cost > budget_chars:
            if not kept:
                room = max(budget_chars - len(_JOIN) - len(_CUT), 0)
                kept.append(Turn(item.role, item.text[:room] + _CUT))
            break
        kept.append(item)
        used += cost
    turns: list[Turn] = []
    for item in reversed(kept):
        if turns and turns[-1].role == item.role:
            turns[-1] = Turn(item.role, turns[-1].text + _JOIN + item.text)
        else:
            turns.append(item)
    while turns and turns[0].role == "assistant":
        turns.pop(0)
    return turns


def system_prompt(settings: Settings, *, admin: bool) -> str:
    today = utc_now().astimezone(settings.zone).strftime("%A %Y-%m-%d")
    lines = [
        f"You are {settings.assistant_name}, a chat-ops assistant for ML engineers who train"
        " and benchmark models on a GPU host; they reach you from chat apps.",
        "Your tools run the same operations as the chat commands (/status, /runs, /run,"
        " /task, /debug): same checks, same effects, same replies. Use them rather than"
        " guessing, and report ids and numbers exactly as they come back.",
        "Ask before anything destructive or costly (stopping a run, deleting a task,"
        " launching or retrying training) unless the user explicitly asked for exactly that;"
        " stop_run and delete_task, and add_task for such a command, do nothing without"
        " confirmed=true. Who may use you (/chat) is for people in admin chats, never you.",
        "Be brief: replies are read on a phone. Plain text, short lines, no tables or headings.",
        f"Today is {today}; times are shown in {settings.tz}.",
    ]
    if not admin:
        lines.append(
            "This chat may talk to you but has no command rights, so you have no tools"
            " here: for runs and tasks, point people to an admin chat."
        )
    return "\n".join(lines)


def final_reply(message: Message) -> str:
    """The final text blocks as one reply, with a note when the model was cut off."""
    text = _JOIN.join(
        b.text.strip() for b in message.content if b.type == "text" and b.text.strip()
    )
    note = _STOP_NOTES.get(message.stop_reason or "")
    if note:
        text = f"{text}\n{note}" if text else note
    return text or "(The model answered with no text.)"


def describe_api_error(exc: anthropic.APIError, retries: int) -> str:
    """One readable line for the chat and the action: what failed, and whether it was retried."""
    if isinstance(exc, anthropic.APIStatusError):
        kind = exc.type or "error"
        detail = str(exc.api_message or exc.message)[:200]
        status = exc.status_code
        if status == 200:  # an error event in the middle of a streamed answer
            return f"the Anthropic API failed mid-answer ({kind}: {detail})"
        what = f"{status} {kind}: {detail}"
        if status in (401, 403):
            return f"the Anthropic API refused the key ({what}); check ANTHROPIC_API_KEY"
        if status in _RETRIED or status >= 500:
            return f"the Anthropic API failed ({what}), still after {retries} retries"
        return f"the Anthropic API refused the request ({what})"
    if isinstance(exc, anthropic.APITimeoutError):
        return f"the Anthropic API did not answer in time, still after {retries} retries"
    if isinstance(exc, anthropic.APIConnectionError):
        return f"could not reach the Anthropic API ({exc}), still after {retries} retries"
    return f"the Anthropic API failed: {exc}"


@dataclass
class _Request:
    """One respond() call: whose it is, and what its tools have done so far."""

    chat_id: str
    sender: str
    event_id: int | None
    admin: bool
    # a scheduled prompt: nobody is there to say yes, so nothing that needs a yes is done
    unattended: bool = False
    done: list[str] = field(default_factory=list)  # tools run, for a reply that stops early


class ClaudeAgent:
    """The `Agent` that talks to Claude; close it with `aclose()`."""

    def __init__(
        self,
        *,
        settings: Settings,
        event_log: EventLog,
        usage: UsageRepo,
        messages: MessageRepo,
        invoke: Invoke,
        redactor: Redactor,
        is_admin: Callable[[str], bool],
        max_retries: int = 2,
        offer: Offer | None = None,
    ) -> None:
        key = settings.anthropic_api_key
        if key is None or not key.get_secret_value():
            raise ConfigError("ANTHROPIC_API_KEY: needed for the Claude agent")
        self._settings = settings
        self._log = event_log
        self._usage = usage
        self._messages = messages
        self._tools = AgentTools(invoke, redactor, offer=offer)
        self._redact = redactor
        self._is_admin = is_admin
        self._retries = max_retries
        self._client = anthropic.AsyncAnthropic(
            api_key=key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=max_retries,
        )

    @property
    def description(self) -> str:
        return f"{self._settings.model} (Anthropic)"

    async def aclose(self) -> None:
        await self._client.close()

    async def respond(
        self, chat_id: str, messages: Sequence[StoredMessage], event_id: int | None
    ) -> list[str]:
        if not messages:
            return []
        spent = await self._spent_today()
        if spent is not None:
            budget = self._settings.daily_budget_usd
            return [
                f"Today's model budget is spent: ${spent:.2f} of ${budget:.2f}"
                " (ASSISTANT_DAILY_BUDGET_USD); it resets at 00:00 UTC. Commands work"
                f" without the model: {COMMANDS_WITHOUT_MODEL}."
            ]
        budget_chars = self._settings.history_tokens * CHARS_PER_TOKEN
        unattended = is_isolated(messages)
        if unattended:
            turns = conversation((), messages, budget_chars)
        else:
            history = await self._messages.recent(chat_id, HISTORY_MESSAGES)
            turns = conversation(history, messages, budget_chars)
        request = _Request(
            chat_id, messages[-1].sender, event_id, self._is_admin(chat_id), unattended
        )
        return [await self._exchange(request, turns)]

    async def _spent_today(self) -> float | None:
        """Today's cost if a budget is set and it is used up, else None."""
        budget = self._settings.daily_budget_usd
        if budget <= 0:
            return None
        spent = await self._usage.cost_today()
        return spent if spent >= budget else None

    async def _exchange(self, request: _Request, turns: Sequence[Turn]) -> str:
        """The tool-use loop, bounded by ASSISTANT_AGENT_MAX_TURNS and _TIMEOUT."""
        settings = self._settings
        system: list[TextBlockParam] = [
            {
                "type": "text",
                "text": system_prompt(settings, admin=request.admin),
                "cache_control": {"type": "ephemeral"},  # tools + system: one cached prefix
            }
        ]
        tools = tool_params() if request.admin else None
        transcript: list[MessageParam] = [_param(t) for t in turns]
        clock = asyncio.get_running_loop()
        deadline = clock.time() + settings.agent_timeout_s
        for turn in range(1, settings.agent_max_turns + 1):
            if turn > 1 and await self._spent_today() is not None:
                return _stopped(
                    request, "today's model budget ran out (ASSISTANT_DAILY_BUDGET_USD)"
                )
            remaining = deadline - clock.time()
            if remaining <= 0:
                return self._stopped_by_time(request)
            async with self._log.action(
                request.event_id, "model_call", target=settings.model
            ) as act:
                try:
                    message = await self._call(system, transcript, tools, remaining)
                except TimeoutError:
                    act.fail(f"no answer within the {settings.agent_timeout_s:g} s limit")
                    return self._stopped_by_time(request)
                except anthropic.APIError as exc:
                    error = self._redact(describe_api_error(exc, self._retries))
                    act.fail(error)
                    raise ModelError(error) from exc
                await self._account(act, request, turn, message)
                uses = [b for b in message.content if isinstance(b, ToolUseBlock)]
                if not (
                    message.stop_reason == "pause_turn"
                    or (message.stop_reason == "tool_use" and uses)
                ):
                    return final_reply(message)
                transcript.append({"role": "assistant", "content": message.content})
                if message.stop_reason == "pause_turn":
                    continue
                if turn == settings.agent_max_turns:
                    break  # its tool calls would never be read back: not run
                results = [await self._tool(request, block) for block in uses]
                transcript.append({"role": "user", "content": results})  # all in one message
            if clock.time() >= deadline:
                return self._stopped_by_time(request)
        return _stopped(
            request,
            f"I used the {settings.agent_max_turns} model calls one request may make"
            " (ASSISTANT_AGENT_MAX_TURNS)",
        )

    async def _call(
        self,
        system: list[TextBlockParam],
        transcript: list[MessageParam],
        tools: list[ToolParam] | None,
        remaining: float,
    ) -> Message:
        """One streamed model call (no 10-minute cap on long answers), within `remaining` s."""
        settings = self._settings
        async with (
            asyncio.timeout(remaining),
            self._client.messages.stream(
                model=settings.model,
                max_tokens=settings.model_max_tokens,
                system=system,
                messages=transcript,
                tools=tools if tools is not None else anthropic.omit,
            ) as stream,
        ):
            return await stream.get_final_message()

    async def _account(
        self, act: ActionScope, request: _Request, turn: int, message: Message
    ) -> None:
        """The call's tokens and cost, on its action and as a model_usage row."""
        usage = message.usage
        model = str(message.model or self._settings.model)
        tokens = {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cache_read": usage.cache_read_input_tokens or 0,
            "cache_write": usage.cache_creation_input_tokens or 0,
        }
        cost = cost_usd(model, **tokens)
        act.content = {
            "turn": turn,
            **tokens,
            "cost_usd": round(cost, 6),
            "stop_reason": message.stop_reason,
            "model": model,  # as answered: the trace's gen_ai.response.model
        }
        call = ModelCall(model, **tokens, cost_usd=cost, chat_id=request.chat_id, action_id=act.id)
        try:
            await self._usage.record(call)
        except Exception:  # the answer matters more than its bookkeeping
            log.exception("could not record model usage for %s", request.chat_id)

    async def _tool(self, request: _Request, block: ToolUseBlock) -> ToolResultBlockParam:
        """Run one tool call, traced under the current model_call action."""
        # Offered no tools, or the chat lost its rights since the request began: a call
        # anyway runs nothing (the same check as for a live command, made as it acts).
        if not (request.admin and self._is_admin(request.chat_id)):
            request.done.append(block.name)
            return _result(block.id, "this chat has no command rights: no tools", error=True)
        try:
            async with self._log.tool_call(block.name, block.input) as call:
                try:
                    result = await self._tools.run(
                        block.name,
                        block.input,
                        chat_id=request.chat_id,
                        sender=request.sender,
                        event_id=request.event_id,
                        unattended=request.unattended,
                    )
                except ToolError as exc:
                    call.output = {"command": exc.command}
                    raise
                call.output = {"command": result.command, "result": result.text}
        except ToolError as exc:
            return _result(block.id, str(exc) or "it failed", error=True)
        except Exception as exc:
            log.exception("tool %s failed inside the assistant", block.name)
            text = f"it failed inside the assistant: {type(exc).__name__}: {exc}"
            return _result(block.id, self._tools.clean(text), error=True)
        finally:
            request.done.append(block.name)
        return _result(block.id, result.text or "(no output)")

    def _stopped_by_time(self, request: _Request) -> str:
        limit = self._settings.agent_timeout_s
        return _stopped(request, f"this took longer than {limit:g} s (ASSISTANT_AGENT_TIMEOUT)")


def _param(turn: Turn) -> MessageParam:
    if turn.role == "assistant":
        return {"role": "assistant", "content": turn.text}
    return {"role": "user", "content": turn.text}


def _stopped(request: _Request, why: str) -> str:
    done = f" Done so far: {', '.join(request.done)}." if request.done else " Nothing was run."
    return f"I stopped before finishing: {why}.{done} Ask again to continue."


def _result(tool_use_id: str, text: str, *, error: bool = False) -> ToolResultBlockParam:
    block: ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": text,
    }
    if error:
        block["is_error"] = True
    return block


def build_claude_agent(
    settings: Settings,
    *,
    db: Database,
    event_log: EventLog,
    messages: MessageRepo,
    invoke: Invoke,
    is_admin: Callable[[str], bool],
    offer: Offer | None = None,
) -> ClaudeAgent | None:
    """The Claude agent when an API key is configured, else None (the offline reply)."""
    key = settings.anthropic_api_key
    if key is None or not key.get_secret_value():
        return None
    return ClaudeAgent(
        settings=settings,
        event_log=event_log,
        usage=UsageRepo(db),
        messages=messages,
        invoke=invoke,
        redactor=shared_redactor(settings),
        is_admin=is_admin,
        offer=offer,
    )
