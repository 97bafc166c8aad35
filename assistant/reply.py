"""What the assistant answers in a chat: the one type every layer that talks back shares.

It lives below runs and commands because both produce replies: a command handler returns
one, and the run monitor sends one when a run ends (a report, a benchmark chart). Keeping
it here lets the runs layer answer without importing the command layer above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reply:
    """What a command answers: text, and images where the channel can show them."""

    text: str
    images: tuple[Path, ...] = ()
