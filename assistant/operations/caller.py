"""Who asks for an operation, and under which event of the chain."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """A person's command, a scheduled task or the model's tool call, all alike.

    `event_id` is the event the request hangs off in the chain (`triggered_by` of the rows
    the operation writes); None where nothing is traced (a read-only command).
    Rights are not checked here: they were, by whoever let the request through (an admin
    chat, a task's rights when it fires, the model's tools only in an admin chat).
    """

    chat_id: str
    event_id: int | None = None
    # a button press: the same request twice acts once (a typed second stop kills a run
    # already stopping; a second press of a stop button says it is stopping)
    pressed: bool = False
