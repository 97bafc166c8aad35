"""The parameters every run has besides its recipe's own: where and with what it runs.

A recipe's parameter may not take one of these names; `/run train <recipe> gpus=2` sets
them for a built-in and a declared recipe alike (assistant/runs/spec.py reads them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RunParam:
    """A parameter of every run (where and with what it runs), beside the recipe's own."""

    name: str
    help: str
    low: float
    high: float
    integer: bool = True


RUN_PARAMS = {
    p.name: p
    for p in (
        RunParam("gpus", "GPUs the run gets (waits in the queue until they are free)", 0, 64),
        RunParam("procs", "processes (torchrun); default: one per GPU, else 1", 1, 64),
        RunParam("mem_mb", "memory limit in MB", 64, 4_194_304),
        RunParam("cpus", "CPU limit (cores)", 0.1, 512, integer=False),
    )
}


@dataclass(frozen=True)
class TextParam:
    """A run parameter whose value is a name, not a number."""

    name: str
    help: str


# host=: a pool's host (or a label of hosts) the run must go to (assistant/runs/pool.py)
HOST_PARAM = TextParam("host", "the pool host or label it must run on (/status lists them)")
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")  # as hosts.toml names hosts and labels
