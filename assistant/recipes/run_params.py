"""The parameters every run has besides its recipe's own: where and with what it runs.

A recipe's parameter may not take one of these names; `/run train <recipe> gpus=2` sets
them for a built-in and a declared recipe alike (assistant/runs/spec.py reads them).
"""

from __future__ import annotations

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
