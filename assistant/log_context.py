"""Which event and action the code now running works for, for the service's log lines.

The event log sets it when an action or a tool call starts (`EventLog.action`,
`EventLog.tool_call`) and puts the previous value back when it ends. It lives in a context
variable, so each asyncio task sees its own: two commands handled at once never mix ids.
The JSON log format (`ASSISTANT_LOG_FORMAT=json`) reads it to tie each line to the chain
that `/debug why` shows. This module imports nothing of the project, so any layer may use it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(frozen=True)
class LogContext:
    """The chain a log line belongs to: the event that caused the work, and the action."""

    event_id: int | None = None
    action_id: int | None = None


_current: ContextVar[LogContext | None] = ContextVar("log_context", default=None)


def current() -> LogContext | None:
    """The context of the code running now; None outside any action or tool call."""
    return _current.get()


def enter(event_id: int | None, action_id: int | None) -> Token[LogContext | None]:
    """Work for this event and action from now on; give the token to `leave` at the end.

    A missing event id is taken from the enclosing context when it is the same action
    (a tool call inside an action knows only the action).
    """
    outer = _current.get()
    if event_id is None and outer is not None and outer.action_id == action_id:
        event_id = outer.event_id
    return _current.set(LogContext(event_id, action_id))


def leave(token: Token[LogContext | None]) -> None:
    """Back to the context before the matching `enter`."""
    _current.reset(token)
