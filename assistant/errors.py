"""The project's exceptions, one root.

OpsError
 ├── ConfigError        settings are missing or malformed (named variable, expected form)
 ├── CommandError       a chat command's input is wrong; the message is the reply
 │    ├── NotFoundError      an id names nothing
 │    ├── StateError         the thing is in the wrong state ("already paused")
 │    └── AmbiguousIdError   an id prefix matches several rows (carries the candidates)
 ├── ChannelError       a chat channel could not connect or send
 ├── RunStartError      the engine refused to start a run (its reason)
 └── EngineUnavailable  the engine did not answer; what was asked may still happen
"""

from __future__ import annotations


class OpsError(Exception):
    """Root of everything this project raises on purpose."""


class ConfigError(OpsError):
    """Bad configuration; the message names the variable and what would be right."""


class CommandError(OpsError):
    """Bad command input; the message is what the user is told."""


class NotFoundError(CommandError):
    """An id that matches nothing."""


class StateError(CommandError):
    """A request the current state does not allow."""


class AmbiguousIdError(CommandError):
    """An id prefix that matches several rows."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix = prefix
        self.candidates = candidates
        shown = ", ".join(candidates[:10])
        more = f" (and {len(candidates) - 10} more)" if len(candidates) > 10 else ""
        super().__init__(f"id prefix {prefix!r} is ambiguous: {shown}{more}. Give more characters.")


class ChannelError(OpsError):
    """A channel failed to connect or to deliver."""


class RunStartError(OpsError):
    """A runner could not start a run; the message says why and what would fix it."""


class EngineUnavailable(OpsError):
    """The engine did not answer (refused, reset, timed out): the call may yet succeed later.

    Unlike `RunStartError` (the engine answered "no"), nothing is known to have failed: a
    launch may be retried once the engine answers, and a stop stays wanted until then.
    """
