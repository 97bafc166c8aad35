"""Chat parameters are validated before anything starts; every refusal says what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.errors import CommandError
from assistant.recipes.catalog import RecipeCatalog
from assistant.runs.spec import build_spec

BUILT_IN = RecipeCatalog(Path("/nonexistent/recipes.toml"), allowed_roots=(), secrets_dir=Path())


def spec(recipe: str, *words: str, gpus: int = 0):  # type: ignore[no-untyped-def]
    return build_spec(
        BUILT_IN.require(recipe),
        list(words),
        chat_id="tg:1",
        image="img",
        default_gpus=gpus,
        memory_mb=4096,
        cpus=2.0,
    )


def test_defaults_are_filled_and_overrides_typed() -> None:
    s = spec("gpt", "steps=2_000", "lr=3e-4", "compile=yes", "gpus=0", "mem_mb=512")
    assert s.params["steps"] == 2000 and s.params["lr"] == 3e-4 and s.params["compile"] is True
    assert s.overrides == {"steps": 2000, "lr": 3e-4, "compile": True}
    assert s.params["n_layer"] == spec("gpt").params["n_layer"]
    assert (s.gpus, s.nproc, s.memory_mb, s.total) == (0, 1, 512, 2000)


def test_procs_default_to_one_per_gpu() -> None:
    assert spec("gpt", "gpus=2").nproc == 2
    assert spec("gpt", "gpus=0", "procs=2").nproc == 2


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (("stepz=10",), "unknown parameter 'stepz'"),
        (("steps=ten",), "steps must be an int"),
        (("steps=0",), "below the minimum"),
        (("device=tpu",), "not one of auto, cpu, cuda"),
        (("steps",), "is not key=value"),
        (("steps=1", "steps=2"), "steps is given twice"),
        (("gpus=-1",), "out of range"),
        (("cpus=lots",), "cpus='lots' is not valid"),
        (("n_embd=65", "n_head=2"), "must be a multiple of n_head"),
        (("device=cuda;rm -rf /",), "not one of auto, cpu, cuda"),
    ],
)
def test_refusals_name_the_problem_and_what_is_accepted(words: tuple[str, ...], says: str) -> None:
    with pytest.raises(CommandError) as caught:
        spec("gpt", *words)
    assert says in str(caught.value)


def test_unknown_recipe_lists_the_recipes() -> None:
    with pytest.raises(CommandError, match="unknown recipe 'bert'; recipes: classifier, gpt"):
        spec("bert")
