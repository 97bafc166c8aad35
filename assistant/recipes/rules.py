"""The rules of recipes.toml's values, one value each, and how they say what is wrong.

The models in `model.py` attach these to their fields. A check refuses a value with
`problem(...)`: the text an admin reads, where `LABEL`/`WHERE`/`PARAM` stand for what only
the loader knows (an item's index, the parameter's name). What a check needs of the rest of
the recipe comes in `Host`, the validation context.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from assistant.durations import parse_duration
from assistant.errors import CommandError
from assistant.jobs.declared import BUILTIN_FIELDS, RESUME_ONLY_FIELDS, template_fields
from assistant.jobs.recipes import JOBS, ParamType
from assistant.recipes.run_params import HOST_PARAM, RUN_PARAMS
from assistant.recipes.workdir import check_workdir

RESERVED_NAMES = tuple(JOBS)  # the built-in recipes and the benchmark job
RUN_PARAM_NAMES = (*RUN_PARAMS, HOST_PARAM.name)  # every run has these
MAX_GPUS = 64
MIN_MEMORY_MB = 64
MAX_TIME_LIMIT = timedelta(days=3650)

RECIPE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")  # also what the model may name
# An image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest]
IMAGE_REF = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::\d{1,5})?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:/+=@,][A-Za-z0-9_.:/+=@,-]*")
# Progress events carry these themselves; a regex group may not overwrite them.
_PROGRESS_RESERVED = ("ts", "type", "total")
PARAM_TYPES: dict[str, ParamType] = {"int": int, "float": float, "str": str, "bool": bool}

# In a message, the loader puts the checked value's name and place here ("command[2] in
# recipe 'r'"): a validator of one list item does not know its index, the loader does.
LABEL = "\x00label\x00"
WHERE = "\x00where\x00"
PARAM = "\x00param\x00"  # and the key of a parameter or secret (a value does not know it)


@dataclass
class Host:
    """What checking a recipe needs from the host, and what the loader learnt of its table.

    Passed to pydantic as the validation context. `declared` and the fields after it are
    read from the raw table before validation, so a check of one value can see the rest
    even where another value is wrong (every problem is reported at once).
    """

    allowed_roots: list[Path]
    secrets_dir: Path
    protected: list[Path]
    recipe: str = ""
    declared: dict[str, str] = field(default_factory=dict)  # parameter -> type, "?" unknown
    has_workdir: bool = False
    writable: bool = False
    env_names: set[str] = field(default_factory=set)
    templates: list[str] = field(default_factory=list)  # command and resume args, raw

    @property
    def where(self) -> str:
        return f"in recipe {self.recipe!r}"


def problem(text: str, *at: str | int) -> NoReturn:
    """Refuse a value with `text`; `at` places it below the value being checked."""
    raise PydanticCustomError("recipe", "{text}", {"text": text, "at": at})


def problems(found: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Refuse a value for each (place below it, text) found, if any."""
    if found:
        raise PydanticCustomError("recipe", "{text}", {"text": found[0][1], "all": found})


def host_of(info: ValidationInfo) -> Host:
    host = info.context
    assert isinstance(host, Host), "validate recipes with a Host as the context"
    return host


def expect(text: str) -> WrapValidator:
    """On a wrong value, say what was expected ("an integer from 0 to 64")."""

    def wrap(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError as exc:
            errors = exc.errors()
            if any(err["type"] == "recipe" for err in errors):
                raise  # our own checks say it better
            if isinstance(value, list | dict) and all(err["loc"] for err in errors):
                raise  # the items of an array or table have their own messages
            raise PydanticCustomError(
                "expected", "must be {expected}", {"expected": text}
            ) from None

    return WrapValidator(wrap)


def parse_time_limit(value: object) -> float:
    """Seconds from a number of seconds or a duration like "90m", "12h", "2d", "1h30m".

    :raises ValueError: not positive, too long, or not a duration.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'must be seconds or a duration like "12h", got {kind_of(value)}')
    if isinstance(value, str):
        try:
            return parse_duration(value, minimum=timedelta(seconds=1)).total_seconds()
        except CommandError as exc:
            raise ValueError(str(exc)) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    if value > MAX_TIME_LIMIT.total_seconds():
        raise ValueError(f"{value:g} s is too long; the longest is 3650d")
    return float(value)


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


# ---- values checked one at a time ----------------------------------------------------------


def _template(resume: bool) -> Callable[[str, ValidationInfo], str]:
    def check(template: str, info: ValidationInfo) -> str:
        host = host_of(info)
        try:
            names = template_fields(template)
        except ValueError as exc:
            problem(f"bad template {LABEL}: {exc}")
        found: list[tuple[tuple[str | int, ...], str]] = []
        for name in names:
            if name in host.declared:
                continue
            if name in RESUME_ONLY_FIELDS and not resume:
                text = (
                    f"{LABEL} names {{{name}}}, which is only known when resuming: "
                    f"use it in [recipes.{host.recipe}.resume] args"
                )
            elif name == "workdir" and not host.has_workdir:
                text = f"{LABEL} names {{workdir}}, but no workdir is declared"
            elif name not in BUILTIN_FIELDS:
                known = [
                    *host.declared,
                    *(f for f in BUILTIN_FIELDS if resume or f != "checkpoint"),
                ]
                text = (
                    f"{LABEL} names {{{name}}}, which is not a declared parameter or a "
                    f"built-in{suggest(name, known)}"
                )
            else:
                continue
            found.append(((), text))
        problems(found)
        return template

    return check


def regex_check(kind: Literal["progress", "metrics"]) -> Callable[[str], str]:
    def check(pattern: str) -> str:
        try:
            groups = list(re.compile(pattern).groupindex)
        except re.error as exc:
            position = "" if exc.pos is None else f" at position {exc.pos}"
            problem(f"bad regex {LABEL}: {exc.msg}{position}")
        found: list[tuple[tuple[str | int, ...], str]] = [
            ((), f"group name {group!r} in {LABEL} must be ASCII letters, digits, _")
            for group in groups
            if not _GROUP_NAME.fullmatch(group)
        ]
        if kind == "progress":
            if "step" not in groups:
                found.append(((), f"{LABEL} has no (?P<step>...) group: progress needs the step"))
            found.extend(
                ((), f"group {group!r} in {LABEL} is set by the assistant; rename it")
                for group in groups
                if group in _PROGRESS_RESERVED
            )
        elif not set(groups) - {"step"}:
            found.append(((), f"{LABEL} names no metric: add a group like (?P<val_loss>[\\d.]+)"))
        problems(found)
        return pattern

    return check


@dataclass(frozen=True)
class _Again:
    """A choice already listed: marked on the array, refused by the check of that item."""

    value: str


def mark_repeats(value: object) -> object:
    if not isinstance(value, list):
        return value
    seen: set[str] = set()
    marked: list[object] = []
    for item in value:
        marked.append(_Again(item) if isinstance(item, str) and item in seen else item)
        if isinstance(item, str):
            seen.add(item)
    return marked


def _not_again(value: object) -> object:
    if isinstance(value, _Again):
        problem(f"choice {value.value!r} {WHERE} is listed twice")
    return value


def _choice(choice: str) -> str:
    if not _TOKEN.fullmatch(choice):
        problem(
            f"choice {choice!r} {WHERE} is not a plain token: use letters, digits and "
            "_ . : / + = @ , - (no spaces or shell characters, no leading -)"
        )
    return choice


def param_name_check(name: str, info: ValidationInfo) -> str:
    where = host_of(info).where
    if not _PARAM_NAME.fullmatch(name):
        problem(
            f"parameter name {name!r} {where} must be 1 to 40 lowercase letters, "
            "digits or _, starting with a letter (chat lowercases what it is given)"
        )
    if name in RUN_PARAM_NAMES:
        problem(f"parameter {name!r} {where} clashes with the run parameter {name}=")
    if name in BUILTIN_FIELDS:
        problem(f"parameter {name!r} {where} clashes with the built-in {{{name}}}")
    return name


def env_name_check(what: str) -> Callable[[str, ValidationInfo], str]:
    def check(name: str, info: ValidationInfo) -> str:
        host = host_of(info)
        if not _ENV_NAME.fullmatch(name):
            problem(
                f"{what} name {name!r} {host.where} must be uppercase letters, digits and _, "
                "not starting with a digit"
            )
        if what == "secret variable" and name in host.env_names:
            problem(f"{name} {host.where} is set both in env and in secrets")
        return name

    return check


def secret_check(secret: str, info: ValidationInfo) -> str:
    host = host_of(info)
    if not _SECRET_NAME.fullmatch(secret) or ".." in secret:
        problem(
            f"secret name {secret!r} {host.where} must be letters, digits, _ . - "
            "(a file name in the secrets directory, no '..')"
        )
    if not (host.secrets_dir / secret).is_file():
        problem(f"secret {secret!r} not found in {host.secrets_dir} (for {PARAM} {WHERE})")
    return secret


def workdir_check(value: str, info: ValidationInfo) -> str:
    host = host_of(info)
    resolved, found = check_workdir(
        Path(value), allowed_roots=host.allowed_roots, protected=host.protected
    )
    problems([((), f"workdir {value} {host.where} {text}") for text in found])
    assert resolved is not None  # check_workdir says why whenever it cannot resolve
    return str(resolved)


def _whole(value: float) -> float:
    if not value.is_integer():
        raise ValueError("not whole")
    return value


def time_limit_check(value: float | str) -> float:
    try:
        return parse_time_limit(value)
    except ValueError as exc:
        problem(f"time_limit {WHERE}: {exc}")


Template = Annotated[str, expect("a string"), AfterValidator(_template(resume=False))]
ResumeTemplate = Annotated[str, expect("a string"), AfterValidator(_template(resume=True))]
Finite = Annotated[float, Field(allow_inf_nan=False), expect("a finite number")]
Whole = Annotated[
    float,
    Field(allow_inf_nan=False),
    AfterValidator(_whole),
    expect("a whole number (the parameter is an int)"),
]
Choice = Annotated[str, expect("a string"), AfterValidator(_choice), BeforeValidator(_not_again)]
Help = Annotated[str, expect("a string"), Field(description="shown by /recipes <name>")]


def _recipe_name(name: str) -> str:
    if not RECIPE_NAME.fullmatch(name):
        problem(
            f"recipe name {name!r} must be 1 to 40 lowercase letters, digits, _ or -, "
            "starting with a letter"
        )
    if name in RESERVED_NAMES:
        problem(f"recipe name {name!r} is taken by a built-in ({', '.join(RESERVED_NAMES)})")
    return name


RecipeName = Annotated[
    str,
    AfterValidator(_recipe_name),
    WithJsonSchema({"type": "string", "pattern": f"^{RECIPE_NAME.pattern}$"}),
]


def suggest(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
