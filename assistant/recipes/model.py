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

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from assistant.jobs.declared import DeclaredRecipe, ProgressRules, ResumeRule, template_fields
from assistant.jobs.recipes import Param, ParamError
from assistant.recipes.rules import (
    IMAGE_REF,
    MAX_GPUS,
    METRIC_NAME,
    MIN_MEMORY_MB,
    PARAM,
    PARAM_TYPES,
    WHERE,
    Choice,
    Finite,
    Help,
    RecipeName,
    ResumeTemplate,
    Template,
    Whole,
    env_name_check,
    expect,
    host_of,
    mark_repeats,
    param_name_check,
    problem,
    problems,
    regex_check,
    secret_check,
    suggest,
    time_limit_check,
    workdir_check,
)


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
        BeforeValidator(mark_repeats),
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
    param = Param(name, PARAM_TYPES[decl.type], decl.default, decl.help, low, high, choices)
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
        list[Annotated[str, expect("a string"), AfterValidator(regex_check("progress"))]],
        expect("an array of regexes"),
        Field(description="regexes with a `step` group; other groups become progress fields"),
    ] = []
    metrics: Annotated[
        list[Annotated[str, expect("a string"), AfterValidator(regex_check("metrics"))]],
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
        declared = host_of(info).declared
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
        host = host_of(info)
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
            AfterValidator(workdir_check),
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
    params: dict[Annotated[str, AfterValidator(param_name_check)], ParamDecl] = {}
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
            AfterValidator(time_limit_check),
            Field(description='seconds, or a duration like "90m", "12h", "2d", "1h30m"'),
        ]
        | None
    ) = None
    env: Annotated[
        dict[
            Annotated[str, AfterValidator(env_name_check("env"))],
            Annotated[str, expect("a string")],
        ],
        expect('a table of NAME = "value"'),
    ] = {}
    secrets: Annotated[
        dict[
            Annotated[str, AfterValidator(env_name_check("secret variable"))],
            Annotated[str, expect("a secret's file name"), AfterValidator(secret_check)],
        ],
        expect('a table of ENV_VAR = "secret_name"'),
        Field(description="ENV_VAR = name of a file in ASSISTANT_HOME/secrets, read at launch"),
    ] = {}
    network: Annotated[bool, expect("true or false")] = False
    progress: Annotated[Progress, expect("a table")] = Field(default_factory=Progress)
    key_metric: Annotated[
        str, Field(pattern=f"^{METRIC_NAME.pattern}$"), expect("a metric name")
    ] = "loss"
    key_metric_mode: Annotated[Literal["min", "max"], expect('"min" or "max"')] = "min"
    resume: Annotated[Resume, expect("a table")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _learn(cls, data: Any, info: ValidationInfo) -> Any:
        """What the checks of single values need to know of the others, from the raw table."""
        host = host_of(info)
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
        if value and not host_of(info).has_workdir:
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
        host = host_of(info)
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
    return kind if isinstance(kind, str) and kind in PARAM_TYPES else "?"


def _strs(value: object) -> list[object]:
    return value if isinstance(value, list) else []


class RecipesFile(_Table):
    """The whole file: `[recipes.<name>]` tables."""

    recipes: Annotated[dict[RecipeName, Recipe], expect("a table")] = {}


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
