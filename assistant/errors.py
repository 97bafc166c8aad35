"""The project's exceptions, one root. The whole tree (tests/test_errors.py keeps it true):

OpsError
 ├── ConfigError            settings missing or malformed (the variable, the expected form)
 ├── HomeError              home.py: the home folder cannot be used (which, why, the fix)
 ├── DatabaseOpenError      storage/db.py: the database file cannot be used
 ├── CommandError           input that does not parse or validate: problem, then the usage
 ├── Refused                understood, and what exists says no: one line, no usage
 │    ├── NotFoundError          an id names nothing
 │    ├── AmbiguousIdError       an id prefix matches several rows (carries the candidates)
 │    ├── StateError             the thing is in the wrong state ("already paused")
 │    └── CapacityError          more than this host has ("asks for 3 GPU(s) but ... has 1")
 ├── ChannelError           a chat channel could not connect or send
 │    ├── RetryAfter             channels/delivery.py: the platform said to wait (429)
 │    ├── TransientError         channels/delivery.py: worth sending again (5xx, dropped)
 │    ├── SlackRefused           channels/slack.py: an error retrying will not fix
 │    ├── _Unparsable            channels/telegram.py: our HTML did not parse; sent plain
 │    ├── _NotModified           channels/telegram.py: an edit to the same text
 │    └── _CannotEdit            channels/telegram.py: too old to edit; sent anew
 ├── ModelError             claude_agent.py: the model API failed after the SDK's retries
 ├── RunStartError          the engine refused to start a run (its reason)
 │    └── SlurmRefused           runs/slurm_cli.py: a Slurm command said no (its message)
 └── EngineUnavailable      the engine did not answer; what was asked may still happen

A command handler raises `CommandError` for input it cannot read (the command's usage
follows the problem) and lets a `Refused` through as it is: a wrong id or a wrong state
is one line, and the usage would only bury it. Both are what the user is told.
"""

from __future__ import annotations


class OpsError(Exception):
    """Root of everything this project raises on purpose."""


class ConfigError(OpsError):
    """Bad configuration; the message names the variable and what would be right."""


class CommandError(OpsError):
    """Input that does not parse or validate; the message is what the user is told."""


class Refused(OpsError):
    """A well-formed request that what exists says no to; the message is the whole reply."""


class NotFoundError(Refused):
    """An id that matches nothing."""


class StateError(Refused):
    """A request the current state does not allow."""


class CapacityError(Refused):
    """A request for more than this host has (GPUs)."""


class AmbiguousIdError(Refused):
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
