"""Run specs: `/run train gpt steps=2000 gpus=2` -> a validated, fully resolved `RunSpec`.

Chat can only pick a declared recipe and set its declared parameters. Every value is parsed
to its declared type and checked against its bounds or choices here, before anything
starts; the run gets typed values as separate arguments, never a command line to split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from assistant.errors import CommandError
from assistant.jobs.recipes import RECIPES, ParamError, RecipeInfo, validate_params


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
class RunSpec:
    kind: str  # "train" (benchmarks come later)
    recipe: str
    params: dict[str, Any]  # every recipe parameter, defaults filled in
    gpus: int
    nproc: int
    memory_mb: int
    cpus: float
    image: str
    chat_id: str
    overrides: dict[str, Any] = field(default_factory=dict)  # what the user set explicitly

    @property
    def total(self) -> int | None:
        info = RECIPES[self.recipe]
        value = self.params.get(info.total_param)
        return int(value) if isinstance(value, int | float) else None


def recipe_help(info: RecipeInfo) -> str:
    """One line per parameter: name, type, default, bounds."""
    lines = [f"{info.name}: {info.summary}"]
    lines.extend(f"  {p.describe()}" for p in info.params)
    run_params = ", ".join(f"{r.name}= ({r.help})" for r in RUN_PARAMS.values())
    lines.append(f"Run parameters: {run_params}")
    return "\n".join(lines)


def _run_value(p: RunParam, raw: str) -> float:
    try:
        value = int(raw) if p.integer else float(raw)
    except ValueError:
        kind = "a whole number" if p.integer else "a number"
        raise CommandError(f"{p.name}={raw!r} is not valid: {p.name} takes {kind}") from None
    if not p.low <= value <= p.high or not math.isfinite(value):
        raise CommandError(f"{p.name}={raw} is out of range: {p.low:g}..{p.high:g}")
    return value


def build_spec(
    recipe: str,
    assignments: list[str],
    *,
    chat_id: str,
    image: str,
    default_gpus: int,
    memory_mb: int,
    cpus: float,
) -> RunSpec:
    """Validate a recipe name and `key=value` words into a resolved spec.

    :raises CommandError: for an unknown recipe or parameter, a malformed assignment, a
        value of the wrong type or out of range; the message lists what is accepted.
    """
    info = RECIPES.get(recipe.lower())
    if info is None:
        names = ", ".join(sorted(RECIPES))
        raise CommandError(f"unknown recipe {recipe!r}; recipes: {names}")
    given: dict[str, str] = {}
    run_values: dict[str, float] = {}
    for word in assignments:
        key, sep, raw = word.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise CommandError(f"{word!r} is not key=value, e.g. steps=2000")
        if key in given or key in run_values:
            raise CommandError(f"{key} is given twice")
        if key in RUN_PARAMS:
            run_values[key] = _run_value(RUN_PARAMS[key], raw)
        else:
            given[key] = raw
    try:
        overrides: dict[str, Any] = validate_params(info, given)
    except ParamError as exc:
        names = ", ".join([*(p.name for p in info.params), *RUN_PARAMS])
        raise CommandError(f"{exc}. Accepted: {names} (/run recipes {info.name})") from None
    params = {**info.defaults(), **overrides}
    gpus = int(run_values.get("gpus", default_gpus))
    nproc = int(run_values.get("procs", max(gpus, 1)))
    return RunSpec(
        kind="train",
        recipe=info.name,
        params=params,
        gpus=gpus,
        nproc=nproc,
        memory_mb=int(run_values.get("mem_mb", memory_mb)),
        cpus=float(run_values.get("cpus", cpus)),
        image=image,
        chat_id=chat_id,
        overrides=overrides,
    )
