r"""The shape of ASSISTANT_HOME/recipes.toml, as pydantic models: what an admin may declare.

An admin declares training jobs the assistant may launch; chat can then only pick one by
name and set its declared, typed, bounded parameters. Everything that could go wrong is
found when the file is loaded (`loader.py`) and reported with its line; a recipe with any
problem is left out, the others load. A missing file means no declared recipes. The same
models give the file's JSON Schema (`assistant recipes schema`, docs/recipes.schema.json),
so an editor checks the file as it is typed.

A full example:

```toml
[recipes.nanogpt]
summary = "nanoGPT on Shakespeare characters"
image = "nanogpt:latest"          # optional; default: the assistant's run image
workdir = "/srv/ml/nanoGPT"       # read-only at /workspace/code (docker); the cwd (process)
workdir_writable = false
command = ["torchrun", "--standalone", "--nproc_per_node={nproc}", "train.py",
           "config/train_shakespeare_char.py", "--max_iters={steps}", "--learning_rate={lr}",
           "--dataset={dataset}", "--out_dir={run_dir}/out", "--compile={compile}"]
gpus = 1
memory_mb = 32000
cpus = 8
time_limit = "12h"
network = false
key_metric = "val_loss"
key_metric_mode = "min"
env = { WANDB_MODE = "disabled" }
secrets = { HF_TOKEN = "hf_token" }

[recipes.nanogpt.params]
steps = { type = "int", default = 5000, min = 1, max = 600000, help = "training iterations" }
lr = { type = "float", default = 1e-3, min = 1e-6, max = 1.0 }
compile = { type = "bool", default = false }

[recipes.nanogpt.params.dataset]
type = "str"
default = "shakespeare_char"
choices = ["shakespeare_char", "openwebtext"]

[recipes.nanogpt.progress]
json_prefix = "@assistant "
progress = ['iter (?P<step>\d+): loss (?P<loss>[\d.]+), time (?P<time_ms>[\d.]+)ms']
metrics = ['step (?P<step>\d+): train loss (?P<train_loss>[\d.]+), val loss (?P<val_loss>[\d.]+)']
total = "steps"

[recipes.nanogpt.resume]
checkpoints = "out/ckpt*.pt"
location = "run_dir"
args = ["--init_from=resume", "--resume_from={checkpoint}"]
```

The keys of a recipe:

- `command` (required): the argv as a list of templates, never a shell string. `{name}`
  is replaced inside one argument by a parameter's value, or by a built-in: `{gpus}`,
  `{nproc}`, `{run_dir}`, `{workdir}` (only when a workdir is declared); `{{` and `}}`
  are literal braces. Bools are written `true` / `false`.
- `summary` (""), `image` (the run image), `gpus` (1; 0 to 64), `memory_mb` (at least
  64), `cpus` (above 0), `time_limit` (seconds, or "90m", "12h", "2d", "1h30m"),
  `network` (false), `key_metric` ("loss") and `key_metric_mode` ("min" or "max").
- `workdir`: an absolute directory inside one of the allowed roots (symlinks resolved),
  not under or holding credentials (`.ssh`, `.aws`, `.gnupg`, `.kube`, `.docker`,
  `.config/gcloud`, `.env`, `.netrc`, private keys like `id_rsa` or `*.pem` / `*.key`)
  anywhere in its tree; the check walks at most 12 levels and 50,000 entries, and a
  larger tree is refused.
  `workdir_writable` (false) lets the command write there.
- `env`: literal environment values. `secrets`: ENV_VAR = name of a file in
  ASSISTANT_HOME/secrets, read at launch and never logged.
- `[params.<name>]`: `type` (int, float, str or bool), `default`, `min` / `max` (numbers),
  `choices` (required for str: chat may only pick one of these plain tokens), `help`.
  Lowercase names; not `gpus`, `procs`, `mem_mb`, `cpus` (every run has those) nor a
  built-in placeholder.
- `[progress]`: `json_prefix` (lines "<prefix>{json}" are protocol events), `progress`
  (regexes with a `step` group; other groups become progress fields), `metrics` (regexes;
  each named group but `step` becomes a metric), `total` (an int parameter's name, or a
  number of steps).
- `[resume]`: `checkpoints` (a glob relative to `location`), `location` (`run_dir`, or
  `workdir` with `workdir_writable = true`), `args` (templates appended on resume; only
  these may name `{checkpoint}`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from assistant.durations import parse_duration
from assistant.errors import CommandError
from assistant.jobs.declared import (
    BUILTIN_FIELDS,
    RESUME_ONLY_FIELDS,
    DeclaredRecipe,
    ProgressRules,
    ResumeRule,
    template_fields,
)
from assistant.jobs.recipes import JOBS, Param, ParamError, ParamType
from assistant.recipes.run_params import RUN_PARAMS
from assistant.recipes.workdir import check_workdir

RESERVED_NAMES = tuple(JOBS)  # the built-in recipes and the benchmark job
RUN_PARAM_NAMES = tuple(RUN_PARAMS)  # every run has these
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
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:/+=@,][A-Za-z0-9_.:/+=@,-]*")
# Progress events carry these themselves; a regex group may not overwrite them.
_PROGRESS_RESERVED = ("ts", "type", "total")
_PARAM_TYPES: dict[str, ParamType] = {"int": int, "float": float, "str": str, "bool": bool}

# In a message, the loader puts the checked value's name and place here ("command[2] in
# recipe 'r'"): a validator of one list item does not know its index, the loader does.
LABEL = "\x00label\x00"
WHERE = "\x00where\x00"
PARAM = "\x00param\x00"  # and here the name of the parameter (a table does not know its key)


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


def _host(info: ValidationInfo) -> Host:
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
        host = _host(info)
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


def _regex(kind: Literal["progress", "metrics"]) -> Callable[[str], str]:
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


def _mark_repeats(value: object) -> object:
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


def _param_name(name: str, info: ValidationInfo) -> str:
    where = _host(info).where
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


def _env_name(what: str) -> Callable[[str, ValidationInfo], str]:
    def check(name: str, info: ValidationInfo) -> str:
        host = _host(info)
        if not _ENV_NAME.fullmatch(name):
            problem(
                f"{what} name {name!r} {host.where} must be uppercase letters, digits and _, "
                "not starting with a digit"
            )
        if what == "secret variable" and name in host.env_names:
            problem(f"{name} {host.where} is set both in env and in secrets")
        return name

    return check


def _secret(secret: str, info: ValidationInfo) -> str:
    host = _host(info)
    if not _SECRET_NAME.fullmatch(secret) or ".." in secret:
        problem(
            f"secret name {secret!r} {host.where} must be letters, digits, _ . - "
            "(a file name in the secrets directory, no '..')"
        )
    if not (host.secrets_dir / secret).is_file():
        problem(f"secret {secret!r} not found in {host.secrets_dir} (for {WHERE})")
    return secret


def _workdir(value: str, info: ValidationInfo) -> str:
    host = _host(info)
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


def _time_limit(value: float | str) -> float:
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


class _Table(BaseModel):
    """A TOML table: exact types (no "2" for 2), no keys but the declared ones."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---- parameters -----------------------------------------------------------------------------


class _NumberParam(_Table):
    @model_validator(mode="after")
    def _bounds(self) -> _NumberParam:
        assert isinstance(self, IntParam | FloatParam)
        low, high = self.min, self.max
        if low is not None and high is not None and low > high:
            problem(f"min {low:g} is above max {high:g} {WHERE}", "min")
        _default_allowed(self)
        return self


class IntParam(_NumberParam):
    type: Literal["int"]
    default: Annotated[int, expect("an int")]
    min: Whole | None = None
    max: Whole | None = None
    help: Help = ""


class FloatParam(_NumberParam):
    type: Literal["float"]
    default: Annotated[float, Field(allow_inf_nan=False), expect("a float")]
    min: Finite | None = None
    max: Finite | None = None
    help: Help = ""


class StrParam(_Table):
    """Text typed in chat must never reach a command line unchecked: only a listed choice."""

    type: Literal["str"]
    default: Annotated[str, expect("a str")]
    choices: Annotated[
        list[Choice],
        Field(min_length=1),
        expect("a non-empty array of strings"),
        BeforeValidator(_mark_repeats),
    ]
    help: Help = ""

    @model_validator(mode="after")
    def _default_is_a_choice(self) -> StrParam:
        _default_allowed(self)
        return self


class BoolParam(_Table):
    type: Literal["bool"]
    default: Annotated[bool, expect("a bool")]
    help: Help = ""


ParamDecl = Annotated[IntParam | FloatParam | StrParam | BoolParam, Field(discriminator="type")]


def _default_allowed(decl: IntParam | FloatParam | StrParam) -> None:
    try:
        to_param(PARAM, decl)
    except ParamError as exc:
        problem(f"default {WHERE} is not allowed: {exc}", "default")


def to_param(name: str, decl: IntParam | FloatParam | StrParam | BoolParam) -> Param:
    """The registry's `Param`, its default converted to the parameter's type.

    :raises ParamError: the default is outside the bounds or choices.
    """
    low = high = None
    choices = None
    if isinstance(decl, IntParam | FloatParam):
        low, high = decl.min, decl.max
    if isinstance(decl, StrParam):
        choices = tuple(decl.choices)
    param = Param(name, _PARAM_TYPES[decl.type], decl.default, decl.help, low, high, choices)
    return Param(name, param.type, param.coerce(decl.default), decl.help, low, high, choices)


# ---- progress and resume ---------------------------------------------------------------------


class Progress(_Table):
    """How a command that knows nothing of the assistant reports progress: by its output."""

    json_prefix: (
        Annotated[
            str,
            Field(pattern=r"\S"),
            expect("a non-empty string"),
            Field(description='lines "<prefix>{json}" are protocol events'),
        ]
        | None
    ) = None
    progress: Annotated[
        list[Annotated[str, expect("a string"), AfterValidator(_regex("progress"))]],
        expect("an array of regexes"),
        Field(description="regexes with a `step` group; other groups become progress fields"),
    ] = []
    metrics: Annotated[
        list[Annotated[str, expect("a string"), AfterValidator(_regex("metrics"))]],
        expect("an array of regexes"),
        Field(description="regexes; each named group but `step` becomes a metric"),
    ] = []
    total: (
        Annotated[
            str | Annotated[int, Field(gt=0)],
            expect("an int parameter's name or a positive number of steps"),
            Field(description="an int parameter's name, or a fixed number of steps"),
        ]
        | None
    ) = None

    @field_validator("total")
    @classmethod
    def _total_names_an_int(cls, value: str | int | None, info: ValidationInfo) -> str | int | None:
        declared = _host(info).declared
        if isinstance(value, str):
            if value not in declared:
                problem(
                    f"total {value!r} {WHERE} is not a declared parameter{suggest(value, declared)}"
                )
            if declared[value] not in ("int", "?"):
                problem(
                    f"total {value!r} {WHERE} must name an int parameter, not a {declared[value]}"
                )
        return value


class Resume(_Table):
    """Where the command leaves checkpoints and how to hand one back to it."""

    checkpoints: Annotated[
        str,
        Field(min_length=1),
        expect("a glob"),
        Field(description='a glob relative to `location`, like "out/ckpt-*.pt"'),
    ]
    location: Annotated[
        Literal["run_dir", "workdir"],
        expect('"run_dir" or "workdir"'),
    ] = "run_dir"
    args: Annotated[
        list[ResumeTemplate],
        expect("an array of strings (one per argument)"),
        Field(description="templates appended on resume; only these may name {checkpoint}"),
    ] = []

    @field_validator("checkpoints")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            problem(f"checkpoints {value!r} {WHERE} must be relative to its location, without '..'")
        return value

    @field_validator("location")
    @classmethod
    def _writable_workdir(cls, value: str, info: ValidationInfo) -> str:
        host = _host(info)
        if value == "workdir" and not host.has_workdir:
            problem(f"location 'workdir' {WHERE} needs a workdir")
        if value == "workdir" and not host.writable:
            problem(
                f"location 'workdir' {WHERE} needs workdir_writable = true: the command "
                "writes its checkpoints there"
            )
        return value


# ---- a recipe and the file -------------------------------------------------------------------


class Recipe(_Table):
    """One `[recipes.<name>]` table."""

    summary: Annotated[str, expect("a string")] = ""
    image: (
        Annotated[
            str,
            Field(pattern=f"^(?:{IMAGE_REF.pattern})$"),
            expect('an image name like "nanogpt:latest"'),
            Field(description="default: the assistant's run image"),
        ]
        | None
    ) = None
    workdir: (
        Annotated[
            str,
            Field(min_length=1),
            expect("an absolute path"),
            AfterValidator(_workdir),
            Field(description="read-only at /workspace/code (docker); the cwd (process)"),
        ]
        | None
    ) = None
    workdir_writable: Annotated[bool, expect("true or false")] = False
    command: Annotated[
        list[Template],
        expect("an array of strings (one per argument)"),
        Field(description="the argv as templates: {param}, {gpus}, {nproc}, {run_dir}, {workdir}"),
    ]
    params: dict[Annotated[str, AfterValidator(_param_name)], ParamDecl] = {}
    gpus: Annotated[int, Field(ge=0, le=MAX_GPUS), expect(f"an integer from 0 to {MAX_GPUS}")] = 1
    memory_mb: (
        Annotated[int, Field(ge=MIN_MEMORY_MB), expect(f"an integer of at least {MIN_MEMORY_MB}")]
        | None
    ) = None
    cpus: Annotated[float, Field(gt=0, allow_inf_nan=False), expect("a number above 0")] | None = (
        None
    )
    time_limit: (
        Annotated[
            float | str,
            expect('seconds or a duration like "12h"'),
            AfterValidator(_time_limit),
            Field(description='seconds, or a duration like "90m", "12h", "2d", "1h30m"'),
        ]
        | None
    ) = None
    env: Annotated[
        dict[
            Annotated[str, AfterValidator(_env_name("env"))],
            Annotated[str, expect("a string")],
        ],
        expect('a table of NAME = "value"'),
    ] = {}
    secrets: Annotated[
        dict[
            Annotated[str, AfterValidator(_env_name("secret variable"))],
            Annotated[str, expect("a secret's file name"), AfterValidator(_secret)],
        ],
        expect('a table of ENV_VAR = "secret_name"'),
        Field(description="ENV_VAR = name of a file in ASSISTANT_HOME/secrets, read at launch"),
    ] = {}
    network: Annotated[bool, expect("true or false")] = False
    progress: Annotated[Progress, expect("a table")] = Field(default_factory=Progress)
    key_metric: Annotated[
        str, Field(pattern=f"^{_METRIC_NAME.pattern}$"), expect("a metric name")
    ] = "loss"
    key_metric_mode: Annotated[Literal["min", "max"], expect('"min" or "max"')] = "min"
    resume: Annotated[Resume, expect("a table")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _learn(cls, data: Any, info: ValidationInfo) -> Any:
        """What the checks of single values need to know of the others, from the raw table."""
        host = _host(info)
        if not isinstance(data, dict):
            return data
        params = data.get("params")
        if isinstance(params, dict):
            host.declared = {name: _type_of(decl) for name, decl in params.items()}
        host.has_workdir = "workdir" in data
        host.writable = data.get("workdir_writable") is True
        env = data.get("env")
        host.env_names = set(env) if isinstance(env, dict) else set()
        resume = data.get("resume")
        args = resume.get("args") if isinstance(resume, dict) else None
        host.templates = [
            t for t in (*_strs(data.get("command")), *_strs(args)) if isinstance(t, str)
        ]
        return data

    @field_validator("workdir_writable")
    @classmethod
    def _needs_workdir(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not _host(info).has_workdir:
            problem(f"workdir_writable is set {WHERE}, but no workdir")
        return value

    @field_validator("command")
    @classmethod
    def _a_program(cls, value: list[str]) -> list[str]:
        if not value:
            problem(f"command {WHERE} is empty")
        if not value[0]:
            problem(f"command {WHERE} starts with an empty program name", 0)
        return value

    @field_validator("params")
    @classmethod
    def _each_used(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A parameter no template names does nothing: most likely a typo on one side."""
        host = _host(info)
        used: set[str] = set()
        for template in host.templates:
            try:
                used.update(template_fields(template))
            except ValueError:
                continue
        problems(
            [
                (
                    (name,),
                    f"parameter {name!r} {host.where} is used by no command or resume argument",
                )
                for name in value
                if name not in used
            ]
        )
        return value

    @field_validator("key_metric")
    @classmethod
    def _reported(cls, metric: str, info: ValidationInfo) -> str:
        progress = info.data.get("progress")
        if not isinstance(progress, Progress) or progress.json_prefix is not None:
            return metric
        regexes = progress.progress or progress.metrics
        groups = {
            g for r in (*progress.progress, *progress.metrics) for g in re.compile(r).groupindex
        }
        if regexes and metric not in groups:
            problem(
                f"key_metric {metric!r} {WHERE} is never reported: no progress or "
                f"metrics regex has a group (?P<{metric}>...)"
            )
        return metric

    def declared(self, name: str, line: int) -> DeclaredRecipe:
        """The recipe as the run and the rest of the host see it."""
        resume = self.resume
        return DeclaredRecipe(
            name=name,
            summary=self.summary,
            image=self.image,
            workdir=self.workdir,
            workdir_writable=self.workdir_writable,
            command=tuple(self.command),
            params=tuple(to_param(n, d) for n, d in self.params.items()),
            gpus=self.gpus,
            memory_mb=self.memory_mb,
            cpus=None if self.cpus is None else float(self.cpus),
            time_limit_s=None if self.time_limit is None else float(self.time_limit),
            env=tuple(self.env.items()),
            secrets=tuple(self.secrets.items()),
            network=self.network,
            progress=ProgressRules(
                json_prefix=self.progress.json_prefix,
                progress=tuple(self.progress.progress),
                metrics=tuple(self.progress.metrics),
                total=self.progress.total,
            ),
            resume=None
            if resume is None
            else ResumeRule(resume.checkpoints, resume.location, tuple(resume.args)),
            key_metric=self.key_metric,
            key_metric_mode=self.key_metric_mode,
            line=line,
        )


def _type_of(decl: object) -> str:
    kind = decl.get("type") if isinstance(decl, dict) else None
    return kind if isinstance(kind, str) and kind in _PARAM_TYPES else "?"


def _strs(value: object) -> list[object]:
    return value if isinstance(value, list) else []


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


class RecipesFile(_Table):
    """The whole file: `[recipes.<name>]` tables."""

    recipes: Annotated[dict[RecipeName, Recipe], expect("a table")] = {}


def suggest(word: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _TomlSchema(GenerateJsonSchema):
    """TOML has no null: an optional key is one that may be left out."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default") is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def json_schema() -> dict[str, Any]:
    """recipes.toml's JSON Schema, for editors (docs/recipes.schema.json is this)."""
    schema = RecipesFile.model_json_schema(schema_generator=_TomlSchema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "recipes.toml",
        "description": "Training jobs the assistant may launch (ASSISTANT_HOME/recipes.toml).",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
