"""The recipe registry: typed params with bounds, validated without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.jobs.recipes import (
    RECIPES,
    ParamError,
    get_recipe,
    resolve_params,
    to_cli_args,
    validate_params,
)
from tests.support.agent_process import REPO

GPT = RECIPES["gpt"]
CLASSIFIER = RECIPES["classifier"]


@pytest.mark.parametrize("info", RECIPES.values(), ids=list(RECIPES))
def test_defaults_are_valid_and_knobs_present(info: object) -> None:
    from assistant.jobs.recipes import RecipeInfo

    assert isinstance(info, RecipeInfo)
    assert resolve_params(info, {}) == info.defaults()
    for p in info.params:
        assert p.coerce(p.default) == p.default
        assert isinstance(p.default, p.type) and p.help
    names = {p.name for p in info.params}
    assert {
        "steps",
        "seed",
        "device",
        "eval_every",
        "checkpoint_every",
        "keep_last",
        "sleep_per_step",
        "fail_at_step",
        "alloc_mb",
        "lr",
    } <= names
    assert info.total_param in names
    assert info.supports_resume


def test_gpt_defaults_are_small_and_bounds_allow_gpu_sizes() -> None:
    d = GPT.defaults()
    assert (d["steps"], d["n_layer"], d["n_embd"], d["block_size"]) == (200, 2, 64, 64)
    big = {
        "n_layer": 48,
        "n_head": 32,
        "n_embd": 4096,
        "steps": 10_000_000,
        "block_size": 2048,
        "dtype": "bfloat16",
        "compile": True,
        "device": "cuda",
    }
    assert validate_params(GPT, big) == big
    assert (GPT.key_metric, GPT.key_metric_mode) == ("val_loss", "min")
    assert (CLASSIFIER.key_metric, CLASSIFIER.key_metric_mode) == ("accuracy", "max")


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("steps", "1e6", 1_000_000),
        ("steps", "10_000", 10_000),
        ("steps", 300.0, 300),
        ("lr", "3e-4", 3e-4),
        ("lr", 1, 1.0),
        ("compile", "true", True),
        ("compile", "Off", False),
        ("dtype", "bfloat16", "bfloat16"),
    ],
)
def test_values_from_chat_and_json_are_coerced(name: str, raw: object, expected: object) -> None:
    value = GPT.param(name).coerce(raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_layers": 4}, "unknown parameter 'n_layers' for recipe 'gpt'; did you mean 'n_layer'?"),
        ({"n_layer": 49}, "n_layer=49 is above the maximum 48"),
        ({"steps": 0}, "steps=0 is below the minimum 1"),
        ({"steps": 2.5}, "steps must be an int, got 2.5"),
        ({"steps": True}, "steps must be an int, got True"),
        ({"compile": "maybe"}, "compile must be a bool"),
        ({"device": "tpu"}, "device='tpu' is not one of auto, cpu, cuda"),
        ({"lr": "nan"}, "lr must be a float"),
        ({"n_embd": 64, "n_head": 3}, "n_embd=64 must be a multiple of n_head=3"),
        ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr=0.001 must not exceed lr=0.0001"),
    ],
)
def test_bad_params_get_a_clear_message(params: dict[str, object], message: str) -> None:
    with pytest.raises(ParamError) as info:
        validate_params(GPT, params)
    assert message in str(info.value)


def test_unknown_recipe() -> None:
    with pytest.raises(ParamError, match="unknown recipe 'bert'"):
        get_recipe("bert")


def test_cli_args_round_trip_through_coerce() -> None:
    params = {"lr": 0.1 + 0.2, "compile": False, "steps": 7, "dtype": "float32"}
    args = to_cli_args(GPT, params)
    assert args == ["--lr=0.30000000000000004", "--compile=false", "--steps=7", "--dtype=float32"]
    parsed = dict(a[2:].split("=", 1) for a in args)
    assert validate_params(GPT, parsed) == params


def test_describe_reads_well() -> None:
    assert (
        GPT.param("n_layer").describe() == "n_layer (int, default 2 in [1, 48]): transformer blocks"
    )


def test_host_side_modules_never_import_torch() -> None:
    code = (
        "import sys, assistant.jobs.agent, assistant.jobs.recipes, assistant.jobs.protocol; "
        "assert not {'torch', 'numpy', 'pydantic', 'aiosqlite'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


ALLOWED = {"torch", "numpy", "assistant"}


@pytest.mark.parametrize(
    "path", sorted((REPO / "assistant" / "jobs").rglob("*.py")), ids=lambda p: p.name
)
def test_jobs_code_imports_only_stdlib_torch_numpy(path: Path) -> None:
    """The run image has the stdlib, torch, numpy, scikit-learn, aiohttp and prometheus-client.

    aiohttp and prometheus-client only for the benchmark job: training runs must not need them.
    """
    allowed = ALLOWED | ({"sklearn"} if path.name == "classifier.py" else set())
    allowed |= {"aiohttp", "yarl", "prometheus_client"} if path.parent.name == "bench" else set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in allowed, f"{path.name} imports {name}"
            if top == "assistant":
                assert name.startswith("assistant.jobs"), f"{path.name} imports {name}"
