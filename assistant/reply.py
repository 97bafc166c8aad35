"""What the assistant answers in a chat: the one type every layer that talks back shares.

It lives below runs and commands because both produce replies: a command handler returns
one, and the run monitor sends one when a run ends (a report, a benchmark chart). Keeping
it here lets the runs layer answer without importing the command layer above it.

A reply may offer actions (buttons where the platform draws them, numbered choices in the
local console, the commands spelt out elsewhere) and may belong to a thread: a run's
messages gather under the message that launched it, so a busy channel keeps each run's
story in one place. Both are keys and commands here; the orchestrator turns them into
stored button tokens and platform message ids, so nothing below it knows a platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ActionStyle = Literal["", "primary", "danger"]


@dataclass(frozen=True)
class Action:
    """An action a reply offers: pressing it runs `command` as if it had been typed.

    It is checked for rights when pressed, not when drawn, and acts at most once.
    """

    label: str
    command: str  # e.g. "/run stop 3r6wfv"
    style: ActionStyle = ""


@dataclass(frozen=True)
class Reply:
    """What a command answers: text, and images where the channel can show them."""

    text: str
    images: tuple[Path, ...] = ()
    actions: tuple[Action, ...] = ()
    # the actions are alternatives (yes / no): pressing one voids the others
    choice: bool = False
    # the thread this message belongs in ("run:<id>"), where it was opened in this chat
    thread: str | None = None
    # the thread this message opens: later replies with `thread` equal to it go under it
    opens: str | None = None


def run_thread(run_id: str) -> str:
    """The thread key of a run's messages: opened by its launch reply."""
    return f"run:{run_id}"


PLATFORM_THREAD = "at:"


def platform_thread(root: str) -> str:
    """The thread key of a thread the chat platform already has: the one a message was
    typed in (`IncomingMessage.thread`, its root as the channel names it). Its answer, and
    a press of a button under that answer, go back there; nothing needs storing."""
    return f"{PLATFORM_THREAD}{root}"
