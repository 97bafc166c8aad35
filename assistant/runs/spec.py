"""Run specs: `/run train gpt steps=2000 gpus=2` -> a validated, fully resolved `RunSpec`.

Chat can only pick a declared recipe and set its declared parameters. Every value is parsed
to its declared type and checked against its bounds or choices here, before anything
starts; the run gets typed values as separate arguments, never a command line to split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from assistant.durations import format_duration
from assistant.errors import CommandError
from assistant.jobs.declared import to_json
from assistant.jobs.recipes import ParamError, validate_params
from assistant.recipes.catalog import Entry
from assistant.recipes.run_params import HOST_NAME, HOST_PARAM, RUN_PARAMS, RunParam


@dataclass(frozen=True)
class RunSpec:
    kind: str  # "train" or "bench"
    recipe: str
    params: dict[str, Any]  # every recipe parameter, defaults filled in
    gpus: int
    nproc: int
    memory_mb: int
    cpus: float
    image: str
    chat_id: str
    total: int | None = None  # steps in the whole run, for progress and ETA
    overrides: dict[str, Any] = field(default_factory=dict)  # what the user set explicitly
    definition: dict[str, Any] | None = None  # a declared recipe, as it was when asked
    server: dict[str, Any] | None = None  # a benchmark's serving container to start
    host: str | None = None  # host= : a pool's host or label the run must go to


def recipe_help(entry: Entry) -> str:
    """One line per parameter (name, type, default, bounds); for a declared recipe also
    what it runs and with what, so a chat user can tell what a launch will do."""
    info, d = entry.info, entry.declared
    lines = [f"{info.name}: {info.summary}"]
    lines.extend(f"  {p.describe()}" for p in info.params)
    named = [(r.name, r.help) for r in RUN_PARAMS.values()] + [(HOST_PARAM.name, HOST_PARAM.help)]
    run_params = ", ".join(f"{name}= ({text})" for name, text in named)
    lines.append(f"Run parameters: {run_params}")
    if d is None:
        return "\n".join(lines)
    mode = "read-write" if d.workdir_writable else "read-only"
    limits = [f"{d.gpus} GPU(s) by default"]
    if d.memory_mb:
        limits.append(f"memory {d.memory_mb} MB")
    if d.cpus:
        limits.append(f"cpus {d.cpus:g}")
    if d.time_limit_s:
        limits.append(f"time limit {format_duration(timedelta(seconds=d.time_limit_s))}")
    limits.append("network" if d.network else "no network")
    lines += [
        f"Command: {' '.join(d.command)}",
        f"Image: {d.image or 'the run image'} · workdir: "
        + (f"{d.workdir} ({mode})" if d.workdir else "none"),
        "Limits: " + ", ".join(limits),
    ]
    if d.secrets:
        lines.append("Secrets (as env): " + ", ".join(name for name, _ in d.secrets))
    if d.resume is not None:
        where = d.resume.location.replace("_", " ")
        lines.append(
            f"Resume: checkpoints {d.resume.checkpoints} in the {where},"
            f" passed back as {' '.join(d.resume.args)}"
        )
    else:
        lines.append("Resume: not declared, so /run pause is refused (stop and retry instead)")
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


def parse_assignments(
    words: list[str], extra_keys: tuple[str, ...] = ()
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """`key=value` words -> (the recipe's values, run parameters, `extra_keys` values).

    Run parameters are checked here; the recipe's values are left for its registry.

    :raises CommandError: a word that is not key=value, or a key given twice.
    """
    given: dict[str, str] = {}
    run_values: dict[str, float] = {}
    extra: dict[str, str] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise CommandError(f"{word!r} is not key=value, e.g. steps=2000")
        if key in given or key in run_values or key in extra:
            raise CommandError(f"{key} is given twice")
        if key in RUN_PARAMS:
            run_values[key] = _run_value(RUN_PARAMS[key], raw)
        elif key in extra_keys:
            extra[key] = raw
        else:
            given[key] = raw
    return given, run_values, extra


def build_spec(
    entry: Entry,
    assignments: list[str],
    *,
    chat_id: str,
    image: str,
    default_gpus: int,
    memory_mb: int,
    cpus: float,
) -> RunSpec:
    """Validate `key=value` words against a recipe into a resolved spec.

    A declared recipe's own image, GPUs and limits replace the host's defaults.

    :raises CommandError: for an unknown parameter, a malformed assignment, a value of the
        wrong type or out of range; the message lists what is accepted.
    """
    info, declared = entry.info, entry.declared
    given, run_values, placed = parse_assignments(assignments, (HOST_PARAM.name,))
    try:
        overrides: dict[str, Any] = validate_params(info, given)
    except ParamError as exc:
        names = ", ".join([*(p.name for p in info.params), *RUN_PARAMS])
        raise CommandError(f"{exc}. Accepted: {names} (/recipes {info.name})") from None
    params = {**info.defaults(), **overrides}
    if declared is not None:
        image = declared.image or image
        default_gpus = declared.gpus
        memory_mb = declared.memory_mb or memory_mb
        cpus = declared.cpus or cpus
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
        total=run_total(entry, params),
        overrides=overrides,
        definition=None if declared is None else to_json(declared),
        host=host_value(placed.get(HOST_PARAM.name)),
    )


def host_value(raw: str | None) -> str | None:
    """host= checked: a host's name or a label as hosts.toml writes them.

    :raises CommandError: anything else.
    """
    if raw is None:
        return None
    value = raw.strip().lower()
    if not HOST_NAME.match(value):
        raise CommandError(
            f"host={raw!r} is not a host name or label: a lower-case letter, then letters,"
            " digits or -, at most 32 (/status lists the hosts)"
        )
    return value


def run_total(entry: Entry, params: dict[str, Any]) -> int | None:
    """Steps in the whole run: a parameter's value, or a declared recipe's fixed total."""
    if entry.declared is not None and isinstance(entry.declared.progress.total, int):
        return entry.declared.progress.total
    value = params.get(entry.info.total_param) if entry.info.total_param else None
    return int(value) if isinstance(value, int | float) else None
