"""The recipe registry: names, typed parameters with bounds, and what each recipe reports.

Standard library only, because the host imports it to validate parameters from chat
before anything starts, and the host never imports torch. The recipes themselves
(`gpt`, `classifier`) parse their command line against the same entries, so a value
the host accepted is a value the recipe accepts.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from assistant.jobs.bench.profiles import MAX_RATE

Value = int | float | str | bool
ParamType = type[int] | type[float] | type[str] | type[bool]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ParamError(ValueError):
    """A parameter is unknown, of the wrong type, out of bounds, or inconsistent."""


@dataclass(frozen=True)
class Param:
    """One typed recipe parameter; `min`/`max` bound numbers, `choices` bound strings."""

    name: str
    type: ParamType
    default: Value
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def coerce(self, value: object) -> Value:
        """Convert a JSON value or a command-line string to this parameter's type.

        :raises ParamError: the value does not convert, or is outside the bounds.
        """
        converted = self._convert(value)
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            if self.min is not None and converted < self.min:
                raise ParamError(f"{self.name}={converted} is below the minimum {_num(self.min)}")
            if self.max is not None and converted > self.max:
                raise ParamError(f"{self.name}={converted} is above the maximum {_num(self.max)}")
        if self.choices is not None and converted not in self.choices:
            raise ParamError(f"{self.name}={converted!r} is not one of {', '.join(self.choices)}")
        return converted

    def _convert(self, value: object) -> Value:
        kind = self.type.__name__
        bad = ParamError(f"{self.name} must be {_ARTICLE[kind]} {kind}, got {value!r}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise bad
        if self.type is str:
            if isinstance(value, str):
                return value
            raise bad
        if isinstance(value, bool):
            raise bad  # True is an int in Python, never a number here
        number: float | int
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    raise bad from None
        else:
            raise bad
        if not math.isfinite(number):
            raise bad
        if self.type is int:
            # 1e6 steps is how people write a million; accept floats that are whole
            if isinstance(number, float):
                if not number.is_integer():
                    raise bad
                return int(number)
            return number
        return float(number)

    def format(self, value: Value) -> str:
        """The command-line spelling of a value, which `coerce` reads back unchanged."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value)
        return str(value)

    def describe(self) -> str:
        """One line for chat help: name, type, default, bounds, help."""
        bounds = ""
        if self.choices is not None:
            bounds = f" one of {'|'.join(self.choices)}"
        elif self.min is not None or self.max is not None:
            low = "" if self.min is None else _num(self.min)
            high = "" if self.max is None else _num(self.max)
            bounds = f" in [{low}, {high}]"
        default = self.format(self.default)
        return f"{self.name} ({self.type.__name__}, default {default}{bounds}): {self.help}"


_ARTICLE = {"int": "an", "float": "a", "str": "a", "bool": "a"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class RecipeInfo:
    """What the host needs to know about a recipe without importing it."""

    name: str
    summary: str
    module: str  # run as `python -m <module> --run-dir DIR --key=value ...`
    params: tuple[Param, ...]
    total_param: str  # the param that says how long the run is (progress = step / total)
    key_metric: str  # the metric event that decides the best checkpoint
    key_metric_mode: Literal["min", "max"]
    supports_resume: bool

    def param(self, name: str) -> Param:
        """The parameter called `name`.

        :raises ParamError: no such parameter; the message suggests a close name.
        """
        for p in self.params:
            if p.name == name:
                return p
        # The accepted names are the caller's to list (the host's adds the run parameters).
        close = difflib.get_close_matches(name, [p.name for p in self.params], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParamError(f"unknown parameter {name!r} for recipe {self.name!r}{hint}")

    def defaults(self) -> dict[str, Value]:
        return {p.name: p.default for p in self.params}


def lower_is_better(name: str, key_metric: str, mode: str) -> bool:
    """Whether a smaller value of metric `name` is the better one: the recipe's mode for its
    key metric, lower for any loss, higher for anything else (accuracy, F1, tok/s)."""
    return mode == "min" if name == key_metric else "loss" in name


def validate_params(info: RecipeInfo, params: Mapping[str, object]) -> dict[str, Value]:
    """Check and convert the given params (JSON values or strings); defaults are not added.

    Cross-parameter rules (e.g. heads dividing the width) are checked against the
    given values merged over the defaults.

    :raises ParamError: an unknown name, a bad value, or an inconsistent combination.
    """
    given = {name: info.param(name).coerce(value) for name, value in params.items()}
    check = _CROSS_CHECKS.get(info.name)
    if check is not None:
        check({**info.defaults(), **given})
    return given


def resolve_params(info: RecipeInfo, params: Mapping[str, object]) -> dict[str, Value]:
    """The full config a run will use: validated params over the defaults.

    :raises ParamError: as `validate_params`.
    """
    return {**info.defaults(), **validate_params(info, params)}


def to_cli_args(info: RecipeInfo, params: Mapping[str, object]) -> list[str]:
    """`--key=value` arguments for a recipe's command line, validated first.

    :raises ParamError: as `validate_params`.
    """
    checked = validate_params(info, params)
    return [f"--{name}={info.param(name).format(value)}" for name, value in checked.items()]


def _check_gpt(cfg: Mapping[str, Value]) -> None:
    n_embd, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
    if n_embd % n_head:
        raise ParamError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
    if float(cfg["min_lr"]) > float(cfg["lr"]):
        raise ParamError(f"min_lr={cfg['min_lr']} must not exceed lr={cfg['lr']}")


_CROSS_CHECKS: dict[str, Callable[[Mapping[str, Value]], None]] = {"gpt": _check_gpt}

_MAX_STEPS = 10_000_000


def _common_params(
    *, steps: int, eval_every: int, checkpoint_every: int, seed: int
) -> tuple[Param, ...]:
    """Parameters every training recipe shares: length, cadence, device, test knobs."""
    return (
        Param("steps", int, steps, "optimizer steps in the whole run", 1, _MAX_STEPS),
        Param("seed", int, seed, "seeds init, data order and dropout", 0, 2**31 - 1),
        Param(
            "device",
            str,
            "auto",
            "where to train; auto = cuda if present",
            choices=("auto", "cpu", "cuda"),
        ),
        Param(
            "eval_every",
            int,
            eval_every,
            "evaluate (and maybe checkpoint) every N steps",
            1,
            _MAX_STEPS,
        ),
        Param("log_every", int, 10, "emit a progress event every N steps", 1, 100_000),
        Param(
            "checkpoint_every",
            int,
            checkpoint_every,
            "also checkpoint every N steps; 0 = only best and last",
            0,
            _MAX_STEPS,
        ),
        Param("keep_last", int, 2, "checkpoints kept besides the best one", 1, 100),
        Param(
            "sleep_per_step", float, 0.0, "test knob: sleep this long after every step", 0.0, 10.0
        ),
        Param(
            "fail_at_step",
            int,
            0,
            "test knob: raise RuntimeError at this step; 0 = never",
            0,
            _MAX_STEPS,
        ),
        Param(
            "alloc_mb", int, 0, "test knob: allocate and touch this many MB at start", 0, 1_048_576
        ),
    )


GPT = RecipeInfo(
    name="gpt",
    summary="character-level GPT (nanoGPT-style) on Python's bundled pydoc topics text",
    module="assistant.jobs.recipes.gpt",
    params=(
        *_common_params(steps=200, eval_every=50, checkpoint_every=0, seed=1337),
        Param("batch_size", int, 16, "sequences per micro-batch per process", 1, 4096),
        Param("grad_accum", int, 1, "micro-batches per optimizer step", 1, 1024),
        Param("block_size", int, 64, "context length in characters", 8, 8192),
        Param("n_layer", int, 2, "transformer blocks", 1, 48),
        Param("n_head", int, 2, "attention heads; must divide n_embd", 1, 64),
        Param("n_embd", int, 64, "model width", 8, 4096),
        Param("dropout", float, 0.0, "dropout probability", 0.0, 0.9),
        Param("lr", float, 1e-3, "peak learning rate", 1e-8, 1.0),
        Param("min_lr", float, 1e-4, "learning rate at the end of the cosine decay", 0.0, 1.0),
        Param("warmup_steps", int, 20, "linear warmup steps", 0, _MAX_STEPS),
        Param("lr_decay_steps", int, 0, "cosine decay length; 0 = steps", 0, _MAX_STEPS),
        Param("weight_decay", float, 0.1, "AdamW weight decay on 2-D weights", 0.0, 1.0),
        Param("beta1", float, 0.9, "AdamW beta1", 0.0, 0.9999),
        Param("beta2", float, 0.99, "AdamW beta2", 0.0, 0.9999),
        Param("grad_clip", float, 1.0, "clip the gradient norm; 0 = off", 0.0, 100.0),
        Param("eval_iters", int, 10, "batches per split in each evaluation", 1, 10_000),
        Param(
            "dtype",
            str,
            "auto",
            "autocast dtype; auto = bfloat16 on cuda if supported, else float16; float32 on cpu",
            choices=("auto", "float32", "bfloat16", "float16"),
        ),
        Param("compile", bool, False, "torch.compile the model"),
    ),
    total_param="steps",
    key_metric="val_loss",
    key_metric_mode="min",
    supports_resume=True,
)

CLASSIFIER = RecipeInfo(
    name="classifier",
    summary="MLP on scikit-learn's bundled digits (8x8 images, 10 classes)",
    module="assistant.jobs.recipes.classifier",
    params=(
        *_common_params(steps=300, eval_every=50, checkpoint_every=0, seed=0),
        Param("batch_size", int, 64, "images per minibatch per process", 1, 4096),
        Param("hidden", int, 128, "width of each hidden layer", 8, 8192),
        Param("layers", int, 2, "hidden layers", 1, 16),
        Param("dropout", float, 0.1, "dropout probability", 0.0, 0.9),
        Param("lr", float, 3e-3, "learning rate", 1e-8, 1.0),
        Param("weight_decay", float, 0.01, "AdamW weight decay", 0.0, 1.0),
        Param("val_fraction", float, 0.2, "share of the data held out, stratified", 0.05, 0.5),
    ),
    total_param="steps",
    key_metric="accuracy",
    key_metric_mode="max",
    supports_resume=True,
)

RECIPES: dict[str, RecipeInfo] = {info.name: info for info in (GPT, CLASSIFIER)}

# The serving benchmark: a job beside the recipes, started by /run bench serve, never by
# /run train. total_param "": its progress is requests over all profiles, known only once
# the profiles are (assistant/jobs/bench/serve.py).
BENCH_SERVE = RecipeInfo(
    name="serve",
    summary="serving benchmark (vLLM bench serve's metrics) against an OpenAI-compatible URL",
    module="assistant.jobs.bench.serve",
    params=(
        Param("model", str, "", "model id, e.g. Qwen/Qwen3-0.6B (recorded; sent unless renamed)"),
        Param("url", str, "", "the server's base URL, e.g. http://10.0.0.5:8000/v1"),
        Param("served_model_name", str, "", "the name the server serves it under; '' = model"),
        Param(
            "profiles",
            str,
            "standard",
            "standard, none, or a comma list of latency-1024x256-c1, serve-1024x256-c16,"
            " longctx-8192x256-c4",
        ),
        Param("in", int, 0, "custom profile: input tokens per prompt; 0 = no custom", 0, 131_072),
        Param("out", int, 0, "custom profile: output tokens per request", 0, 32_768),
        Param("c", int, 0, "custom profile: requests in flight", 0, 1024),
        Param("n", int, 0, "custom profile: prompts", 0, 100_000),
        Param(
            "rate", float, 0.0, "custom profile: requests/s (Poisson); 0 = no limit", 0, MAX_RATE
        ),
        Param(
            "endpoint",
            str,
            "completions",
            "completions (exact token-id prompts) or chat (text, approximate lengths)",
            choices=("completions", "chat"),
        ),
        Param("hardware", str, "", "hardware label for run_metadata, e.g. 8x H200"),
        Param("engine", str, "vLLM", "engine label for run_metadata"),
        Param("engine_version", str, "", "engine version for run_metadata, e.g. v0.19.1"),
        Param("cluster_label", str, "", "cluster label for run_metadata"),
        Param("warmup", int, 1, "untimed requests before each profile", 0, 100),
        Param(
            "health_timeout_s", float, 600.0, "how long to wait for the server to be up", 0, 86_400
        ),
        Param("seed", int, 0, "seeds prompts and arrival times", 0, 2**31 - 1),
    ),
    total_param="",
    key_metric="output_throughput",
    key_metric_mode="max",
    supports_resume=False,
)

# Everything the in-run agent may be asked to start.
JOBS: dict[str, RecipeInfo] = {**RECIPES, BENCH_SERVE.name: BENCH_SERVE}


def get_recipe(name: str) -> RecipeInfo:
    """The recipe (or the benchmark job) called `name`.

    :raises ParamError: no such recipe.
    """
    try:
        return JOBS[name]
    except KeyError:
        raise ParamError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})") from None
