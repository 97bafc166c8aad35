"""What answers free text. Until a model is configured, an honest offline reply."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage.messages import StoredMessage


class Agent(Protocol):
    @property
    def description(self) -> str:
        """One line for /status: which model, or none."""
        ...

    async def respond(
        self, chat_id: str, messages: Sequence[StoredMessage], event_id: int | None
    ) -> list[str]:
        """Replies to send for a batch of new messages (may raise; the caller reports it)."""
        ...


class OfflineAgent:
    """Says no model is configured and points at the commands that work without one."""

    def __init__(self, command_lines: Sequence[str]) -> None:
        self._commands = list(command_lines)

    @property
    def description(self) -> str:
        return "none (set ANTHROPIC_API_KEY to enable)"

    async def respond(
        self, chat_id: str, messages: Sequence[StoredMessage], event_id: int | None
    ) -> list[str]:
        lines = [
            "No model is configured, so I can't answer free text yet "
            "(set ANTHROPIC_API_KEY and restart). These commands work now:",
            *self._commands,
        ]
        return ["\n".join(lines)]
