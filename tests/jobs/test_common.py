"""The recipes' shared helpers: command line, checkpoints kept, RNG capture, typed configs."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from assistant.jobs.recipes import RECIPES, ParamError  # noqa: E402
from assistant.jobs.recipes.common import (  # noqa: E402
    Checkpoints,
    allocate_ballast,
    capture_rng,
    check_resume_config,
    parse_args,
    restore_rng,
)

GPT = RECIPES["gpt"]


def test_parse_args_reads_run_dir_params_and_resume(tmp_path: Path) -> None:
    args = parse_args(
        GPT,
        ["--run-dir", str(tmp_path), "--steps=5", "--compile=true", "--resume=checkpoints/c.pt"],
    )
    assert args.run_dir == tmp_path.resolve() and args.resume == "checkpoints/c.pt"
    assert args.config["steps"] == 5 and args.config["compile"] is True
    assert args.config["n_layer"] == GPT.defaults()["n_layer"]  # defaults filled in


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--run-dir=x", "--n_layers=3"],
            "unknown parameter 'n_layers' for recipe 'gpt'; did you mean 'n_layer'?",
        ),
        (["--run-dir=x", "--steps"], "'--steps' needs a value: --steps=VALUE"),
        (["--run-dir=x", "--steps=1", "--steps=2"], "--steps given twice"),
        (["--run-dir=x", "steps=1"], "unexpected argument 'steps=1'"),
        (["--steps=1"], "--run-dir is required"),
        (["--run-dir=x", "--n_head=3"], "n_embd=64 must be a multiple of n_head=3"),
    ],
)
def test_parse_args_rejects_with_a_clear_message(argv: list[str], message: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_args(GPT, argv)
    assert message in str(info.value)


@pytest.mark.parametrize("recipe", ["gpt", "classifier"])
def test_recipe_config_mirrors_the_registry(recipe: str) -> None:
    """Each recipe's typed Config has exactly the registry's params, with the same types."""
    import importlib

    module = importlib.import_module(f"assistant.jobs.recipes.{recipe}")
    fields = {f.name: f.type for f in dataclasses.fields(module.Config)}
    assert fields == {p.name: p.type.__name__ for p in RECIPES[recipe].params}


def test_checkpoints_keep_the_last_n_and_the_best(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, keep_last=2)
    for step in range(1, 6):
        rel = ckpts.save({"step": step}, step, best_step=2)
        assert rel == f"checkpoints/ckpt_{step:08d}.pt"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt_00000002.pt", "ckpt_00000004.pt", "ckpt_00000005.pt"]
    assert ckpts.load("checkpoints/ckpt_00000005.pt")["step"] == 5


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    device = torch.device("cpu")
    state = capture_rng(device)
    torch.save({"rng": [state]}, tmp_path / "c.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng(torch.load(tmp_path / "c.pt", weights_only=True)["rng"][0], device)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_resume_refuses_a_different_model_shape() -> None:
    with pytest.raises(ParamError, match=r"n_layer=4 \(checkpoint has 2\)"):
        check_resume_config({"n_layer": 2, "lr": 1.0}, {"n_layer": 4, "lr": 0.5}, ["n_layer"])
    check_resume_config({"n_layer": 2, "lr": 1.0}, {"n_layer": 2, "lr": 0.5}, ["n_layer"])


def test_ballast_touches_the_memory() -> None:
    assert allocate_ballast(0) is None
    ballast = allocate_ballast(3)
    assert ballast is not None and ballast.nbytes == 3 * 1024 * 1024 and int(ballast[-1]) == 1


def test_usage_lists_every_param_with_its_bounds() -> None:
    from assistant.jobs.recipes.common import usage

    text = usage(GPT)
    assert text.startswith("python -m assistant.jobs.recipes.gpt --run-dir DIR")
    assert all(f"--{p.name} (" in text for p in GPT.params)


def test_rank_zero_prints_each_event_as_a_line_beside_the_event(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """What `/run logs` shows: the recipe's own output, one plain line per event."""
    from assistant.jobs.recipes.common import Dist, Reporter

    report = Reporter(tmp_path, Dist(0, 0, 1, None))
    report.emit("log", level="warning", message="low memory")
    report.emit("progress", step=10, total=60, loss=2.3104, lr=6e-4, tokens_per_s=1234.5, mfu=0.123)
    report.emit("metric", step=10, name="val_loss", value=2.41)
    report.emit(
        "checkpoint", step=10, path="checkpoints/ckpt_00000010.pt", best=True, val_loss=2.41
    )
    report.emit("heartbeat", step=10)
    report.emit("result", status="succeeded", step=60, final={"loss": 1.5, "val_loss": None})
    report.close()
    assert capfd.readouterr().out.splitlines() == [
        "warning: low memory",
        "step 10/60 loss 2.31 lr 0.0006, 1234 tok/s, mfu 12.3%",
        "eval step 10: val_loss 2.41",
        "checkpoint step 10: checkpoints/ckpt_00000010.pt (best, val_loss 2.41)",
        "succeeded at step 60: loss 1.5",
    ]
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(events) == 6  # the events are written as before


def test_other_ranks_print_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from assistant.jobs.recipes.common import Dist, Reporter

    report = Reporter(tmp_path, Dist(1, 1, 2, None))
    report.emit("progress", step=1, total=2, loss=1.0, lr=0.1)
    assert capfd.readouterr().out == "" and not (tmp_path / "events.jsonl").exists()
