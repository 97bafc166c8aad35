"""What a pool of hosts (assistant/runs/pool.py) adds to a run's lines in /status, /runs
and /run show: the host it is on, why it waits, or that its host does not answer."""

from __future__ import annotations

from assistant.runs.placement import Hosts
from storage.runs import RunRecord


def pool_note(hosts: Hosts | None, run: RunRecord, active: list[RunRecord]) -> str | None:
    """The host's word: "unknown: host gpu2 not answering since 14:03", "waiting for 2
    GPU(s): ...", or "on gpu2"; None without a pool (or for a run on no host)."""
    if hosts is None:
        return None
    note = hosts.unknown(run) or hosts.waiting(run, active)
    return note or (f"on {run.host}" if run.host else None)
