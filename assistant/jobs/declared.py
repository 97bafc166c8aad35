"""Recipes an admin declares in ASSISTANT_HOME/recipes.toml, as the host and the run see them.

The host validates the file (assistant/recipes/) into `DeclaredRecipe`s and puts
one, as `to_json`, into the run's spec.json; the in-run agent reads it back with
`from_json`. Standard library only: the agent imports this inside images we did not build.

Commands are argv templates, never shell strings: `render` fills `{name}` placeholders
inside one argument, so a value can never split into two arguments or reach a shell.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from assistant.jobs.recipes import Param, ParamType

# Placeholders the host fills in; a parameter may not take one of these names.
BUILTIN_FIELDS = ("gpus", "nproc", "run_dir", "workdir", "checkpoint")
# Only known when resuming, so only resume args may name it.
RESUME_ONLY_FIELDS = ("checkpoint",)

_TYPES: dict[str, ParamType] = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class ProgressRules:
    """How a command that knows nothing of our protocol reports progress: by its output."""

    json_prefix: str | None  # "<prefix>{json}" lines are protocol events
    progress: tuple[str, ...]  # regexes; group `step` required, other groups -> progress fields
    metrics: tuple[str, ...]  # regexes; group `step` optional, other groups -> metric events
    total: str | int | None  # a declared int parameter's name, or a fixed step count


@dataclass(frozen=True)
class ResumeRule:
    """Where the command leaves checkpoints and how to hand one back to it."""

    checkpoints: str  # glob relative to `location`
    location: Literal["run_dir", "workdir"]
    args: tuple[str, ...]  # templates appended on resume; may name {checkpoint}


@dataclass(frozen=True)
class DeclaredRecipe:
    """One validated `[recipes.<name>]` table."""

    name: str
    summary: str
    image: str | None  # None: the assistant's run image
    workdir: str | None  # absolute, symlinks resolved at load time
    workdir_writable: bool
    command: tuple[str, ...]
    params: tuple[Param, ...]
    gpus: int
    memory_mb: int | None
    cpus: float | None
    time_limit_s: float | None
    env: tuple[tuple[str, str], ...]
    secrets: tuple[tuple[str, str], ...]  # (ENV_VAR, secret file name); values read at launch
    network: bool
    progress: ProgressRules
    resume: ResumeRule | None
    key_metric: str
    key_metric_mode: Literal["min", "max"]
    line: int


def template_fields(template: str) -> list[str]:
    """The placeholder names in a template, in order of first appearance.

    Only bare names are allowed: a conversion, a format spec, attribute or index access
    would let a template do more than paste a value in.

    :raises ValueError: unbalanced braces, an empty or non-identifier placeholder, a
        conversion (`{a!r}`), a format spec (`{a:>3}`), or `{a.b}` / `{a[0]}`.
    """
    names: list[str] = []
    for _literal, name, spec, conversion in _parse(template):
        if name is None:
            continue
        if conversion is not None:
            raise ValueError(f"placeholder {{{name}!{conversion}}} has a conversion; use {{name}}")
        if spec:
            raise ValueError(f"placeholder {{{name}:{spec}}} has a format spec; use {{name}}")
        if not name:
            raise ValueError("empty placeholder {}; name a parameter, like {steps}")
        if not (name.isidentifier() and name.isascii()):
            raise ValueError(f"placeholder {{{name}}} is not a plain name, like {{steps}}")
        if name not in names:
            names.append(name)
    return names


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"unbalanced braces ({exc}); write {{{{ or }}}} for a brace") from None


def render(template: str, values: Mapping[str, str]) -> str:
    """One argument with its placeholders filled in; `{{` and `}}` stand for braces.

    :raises ValueError: the template is malformed (see `template_fields`).
    :raises KeyError: a placeholder has no value.
    """
    template_fields(template)
    parts: list[str] = []
    for literal, name, _spec, _conversion in _parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(values[name])
    return "".join(parts)


def render_args(templates: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """`render` for each template: one argument in, one argument out.

    :raises ValueError, KeyError: as `render`.
    """
    return [render(t, values) for t in templates]


def to_json(recipe: DeclaredRecipe) -> dict[str, Any]:
    """A JSON-ready dict that `from_json` turns back into an equal recipe."""
    resume = recipe.resume
    return {
        "name": recipe.name,
        "summary": recipe.summary,
        "image": recipe.image,
        "workdir": recipe.workdir,
        "workdir_writable": recipe.workdir_writable,
        "command": list(recipe.command),
        "params": [_param_to_json(p) for p in recipe.params],
        "gpus": recipe.gpus,
        "memory_mb": recipe.memory_mb,
        "cpus": recipe.cpus,
        "time_limit_s": recipe.time_limit_s,
        "env": [list(pair) for pair in recipe.env],
        "secrets": [list(pair) for pair in recipe.secrets],
        "network": recipe.network,
        "progress": {
            "json_prefix": recipe.progress.json_prefix,
            "progress": list(recipe.progress.progress),
            "metrics": list(recipe.progress.metrics),
            "total": recipe.progress.total,
        },
        "resume": None
        if resume is None
        else {
            "checkpoints": resume.checkpoints,
            "location": resume.location,
            "args": list(resume.args),
        },
        "key_metric": recipe.key_metric,
        "key_metric_mode": recipe.key_metric_mode,
        "line": recipe.line,
    }


def from_json(data: Mapping[str, Any]) -> DeclaredRecipe:
    """The recipe `to_json` wrote, checked for shape (it crosses into the run's container).

    :raises ValueError: a field is missing or of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ValueError("a declared recipe must be a JSON object")
    try:
        return _from_json(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed declared recipe: {type(exc).__name__} {exc}") from None


def _from_json(data: Mapping[str, Any]) -> DeclaredRecipe:
    progress = data["progress"]
    total = progress["total"]
    if total is not None and (isinstance(total, bool) or not isinstance(total, str | int)):
        raise ValueError(f"progress total must be a name or an integer, got {total!r}")
    resume_raw = data["resume"]
    resume = None
    if resume_raw is not None:
        resume = ResumeRule(
            checkpoints=_str(resume_raw["checkpoints"], "resume checkpoints"),
            location=_location(resume_raw["location"]),
            args=_strs(resume_raw["args"], "resume args"),
        )
    return DeclaredRecipe(
        name=_str(data["name"], "name"),
        summary=_str(data["summary"], "summary"),
        image=_opt_str(data["image"], "image"),
        workdir=_opt_str(data["workdir"], "workdir"),
        workdir_writable=_bool(data["workdir_writable"], "workdir_writable"),
        command=_strs(data["command"], "command"),
        params=tuple(_param_from_json(p) for p in data["params"]),
        gpus=_int(data["gpus"], "gpus"),
        memory_mb=None if data["memory_mb"] is None else _int(data["memory_mb"], "memory_mb"),
        cpus=None if data["cpus"] is None else _float(data["cpus"], "cpus"),
        time_limit_s=None
        if data["time_limit_s"] is None
        else _float(data["time_limit_s"], "time_limit_s"),
        env=_pairs(data["env"], "env"),
        secrets=_pairs(data["secrets"], "secrets"),
        network=_bool(data["network"], "network"),
        progress=ProgressRules(
            json_prefix=_opt_str(progress["json_prefix"], "progress json_prefix"),
            progress=_strs(progress["progress"], "progress regexes"),
            metrics=_strs(progress["metrics"], "metrics regexes"),
            total=total,
        ),
        resume=resume,
        key_metric=_str(data["key_metric"], "key_metric"),
        key_metric_mode=_mode(data["key_metric_mode"]),
        line=_int(data["line"], "line"),
    )


def _param_to_json(p: Param) -> dict[str, Any]:
    return {
        "name": p.name,
        "type": p.type.__name__,
        "default": p.default,
        "help": p.help,
        "min": p.min,
        "max": p.max,
        "choices": None if p.choices is None else list(p.choices),
    }


def _param_from_json(raw: Mapping[str, Any]) -> Param:
    kind = raw["type"]
    if kind not in _TYPES:
        raise ValueError(f"parameter type must be one of {', '.join(_TYPES)}, got {kind!r}")
    choices = raw["choices"]
    param = Param(
        name=_str(raw["name"], "parameter name"),
        type=_TYPES[kind],
        default=raw["default"],
        help=_str(raw["help"], "parameter help"),
        min=None if raw["min"] is None else _float(raw["min"], "parameter min"),
        max=None if raw["max"] is None else _float(raw["max"], "parameter max"),
        choices=None if choices is None else _strs(choices, "parameter choices"),
    )
    # the default must pass its own checks, or every run would start from a bad value
    return replace(param, default=param.coerce(param.default))


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _opt_str(value: object, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _strs(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    return tuple(_str(v, what) for v in value)


def _pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of pairs, got {value!r}")
    out: list[tuple[str, str]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"{what} must be a list of pairs, got {pair!r}")
        out.append((_str(pair[0], what), _str(pair[1], what)))
    return tuple(out)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def _location(value: object) -> Literal["run_dir", "workdir"]:
    if value == "run_dir":
        return "run_dir"
    if value == "workdir":
        return "workdir"
    raise ValueError(f"resume location must be run_dir or workdir, got {value!r}")


def _mode(value: object) -> Literal["min", "max"]:
    if value == "min":
        return "min"
    if value == "max":
        return "max"
    raise ValueError(f"key_metric_mode must be min or max, got {value!r}")
