"""Whether the engine answers, and when to ask it again after it did not.

An engine that does not answer (down, restarting, hung) is not a failed run: what was
asked of it may still happen. The manager and the monitor share one `EngineWatch`:
every engine call that was not answered counts as a failure of the engine (not of the
run), and calls made in the background wait out a backoff (doubling from `first_s` to
`cap_s`) so a long outage costs one bounded probe a minute, never a loop. A command asks
the engine once whatever the backoff says: a person is waiting for the answer.

An outage has a number, so what is said of it (to a chat, in a run's chain) is said once
per outage, not per pass.

A pool of hosts (runs/pool.py) is several engines: `EngineWatches` keeps one `EngineWatch`
per host, keyed by its name, beside the shared one ("" : one engine, and what is asked of
the pool as a whole). A stop that finds gpu2 silent marks gpu2 alone: runs on other hosts
keep their backoff-free delivery and their chats hear of no outage, and gpu2's pending
stops are delivered as soon as the pool sees it answer (`Signals.host_back`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from assistant.errors import EngineUnavailable

# What "the engine did not answer" looks like from a runner. One place, so it can be
# narrowed or widened as runners change: every runner raises EngineUnavailable for it.
UNANSWERED: tuple[type[Exception], ...] = (EngineUnavailable,)

_ANSWERS_AT = re.compile(r"answers at (\S+) \((.*)\)")


def silence(engine: str, exc: BaseException) -> str:
    """One line for a run that waits: `the Docker engine does not answer (at ..., why)`."""
    text = str(exc).split(";")[0].strip()
    found = _ANSWERS_AT.search(text)
    why = f"at {found.group(1)}: {found.group(2)}" if found else text[:200]
    return f"the {engine} engine does not answer ({why})"


@dataclass
class EngineWatch:
    first_s: float = 1.0
    cap_s: float = 60.0
    down_since: float | None = None  # time.monotonic() of the first unanswered call
    why: str | None = None  # the latest unanswered call's reason
    failures: int = 0  # unanswered calls in a row
    next_at: float = 0.0  # when a background call may try again
    outage: int = 0  # outages since start: the current one's number while down

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def due(self, now: float | None = None) -> bool:
        """Whether a background call may ask the engine now."""
        return not self.down or (time.monotonic() if now is None else now) >= self.next_at

    def failed(self, why: str, now: float | None = None) -> bool:
        """An unanswered call; whether it begins an outage."""
        now = time.monotonic() if now is None else now
        new = not self.down
        if new:
            self.down_since, self.outage, self.failures = now, self.outage + 1, 0
        self.failures += 1
        self.why = why
        self.next_at = now + min(self.cap_s, self.first_s * 2 ** (self.failures - 1))
        return new

    def answered(self) -> bool:
        """An answered call; whether it ends an outage."""
        was = self.down
        self.down_since, self.why, self.failures, self.next_at = None, None, 0, 0.0
        return was


@dataclass
class EngineWatches:
    """One `EngineWatch` per pool host, keyed by host name; `main` for "" (one engine)."""

    main: EngineWatch = field(default_factory=EngineWatch)
    hosts: dict[str, EngineWatch] = field(default_factory=dict)

    def of(self, host: str | None) -> EngineWatch:
        """The watch of `host` (a run's `host` column); the shared one for none."""
        if not host:
            return self.main
        if host not in self.hosts:
            self.hosts[host] = EngineWatch(self.main.first_s, self.main.cap_s)
        return self.hosts[host]

    def any_down(self) -> bool:
        return self.main.down or any(w.down for w in self.hosts.values())
