"""The gpt and classifier recipes as real processes: learning, exact resume, checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_process import finish, read_events, run_recipe, start_recipe

torch = pytest.importorskip("torch")

# dropout on, so resuming must restore the RNG too, not only weights and optimizer
GPT_ARGS = (
    "--n_layer=1",
    "--n_embd=32",
    "--block_size=32",
    "--batch_size=8",
    "--dropout=0.1",
    "--warmup_steps=5",
    "--lr_decay_steps=40",
    "--eval_every=20",
    "--eval_iters=2",
    "--log_every=1",
    "--lr=3e-3",
)
CLS_ARGS = ("--eval_every=50", "--log_every=10", "--hidden=64", "--keep_last=5")


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 steps straight; and 20 steps, then a resume to 40 in the same run dir."""
    root = tmp_path_factory.mktemp("gpt")
    straight, split = root / "straight", root / "split"
    background = start_recipe("gpt", straight, "--steps=40", *GPT_ARGS)
    _ok(run_recipe("gpt", split, "--steps=20", *GPT_ARGS))
    _ok(run_recipe("gpt", split, "--steps=40", *GPT_ARGS, "--resume=checkpoints/ckpt_00000020.pt"))
    finish(background)
    return {"straight": straight, "split": split}


def test_gpt_loss_goes_down(gpt_runs: dict[str, Path]) -> None:
    progress = read_events(gpt_runs["straight"], "progress")
    assert [e["step"] for e in progress] == list(range(1, 41))
    assert progress[-1]["loss"] < progress[0]["loss"] - 0.5
    assert all(e["tokens_per_s"] > 0 and e["mfu"] is None for e in progress)  # no MFU on CPU
    metrics = {(e["step"], e["name"]) for e in read_events(gpt_runs["straight"], "metric")}
    assert metrics == {(20, "val_loss"), (20, "train_loss"), (40, "val_loss"), (40, "train_loss")}
    started = read_events(gpt_runs["straight"], "started")[0]
    assert started["step"] == 0 and started["total"] == 40 and started["world_size"] == 1
    assert started["params"]["n_params"] > 0 and started["device"] == "cpu"


def test_gpt_resume_equals_uninterrupted(gpt_runs: dict[str, Path]) -> None:
    straight, split = gpt_runs["straight"], gpt_runs["split"]
    started = read_events(split, "started")
    assert [e["step"] for e in started] == [0, 20]
    a = read_events(straight, "result")[-1]
    b = read_events(split, "result")[-1]
    assert a["status"] == b["status"] == "succeeded" and a["step"] == b["step"] == 40
    assert b["final"]["loss"] == pytest.approx(a["final"]["loss"], abs=1e-5)
    assert b["final"]["val_loss"] == pytest.approx(a["final"]["val_loss"], abs=1e-5)
    # the second half's per-step losses match too, not only the last one
    a_loss = [e["loss"] for e in read_events(straight, "progress")][20:]
    b_loss = [e["loss"] for e in read_events(split, "progress")][20:]
    assert b_loss == pytest.approx(a_loss, abs=1e-5)
    sa = _load(straight / a["checkpoint"])
    sb = _load(split / b["checkpoint"])
    for name, tensor in sa["model"].items():
        torch.testing.assert_close(sb["model"][name], tensor, atol=1e-6, rtol=1e-5)
    assert sb["step"] == 40 and sb["config"]["steps"] == 40
    assert {"python", "numpy", "torch"} <= set(sb["rng"][0])


def test_gpt_writes_metrics_history(gpt_runs: dict[str, Path]) -> None:
    metrics = json.loads((gpt_runs["split"] / "artifacts" / "metrics.json").read_text())
    # the history survives the resume: it travels in the checkpoint
    assert [h["step"] for h in metrics["eval"]] == [20, 40]
    assert metrics["status"] == "succeeded" and metrics["best"]["val_loss"] is not None


def test_gpt_checkpoint_events_point_at_files(gpt_runs: dict[str, Path]) -> None:
    ckpts = read_events(gpt_runs["straight"], "checkpoint")
    assert [c["step"] for c in ckpts] == [20, 40]
    assert (gpt_runs["straight"] / ckpts[-1]["path"]).is_file()
    assert all(isinstance(c["best"], bool) for c in ckpts)


def test_gpt_unknown_param_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_recipe("gpt", tmp_path, "--n_layers=3")
    assert proc.returncode == 2
    assert "unknown parameter 'n_layers' for recipe 'gpt'; did you mean 'n_layer'?" in proc.stderr


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """100 steps straight; and a resume to 100 from a copy of its step-50 checkpoint."""
    root = tmp_path_factory.mktemp("classifier")
    straight, split = root / "straight", root / "split"
    _ok(run_recipe("classifier", straight, "--steps=100", "--checkpoint_every=50", *CLS_ARGS))
    (split / "checkpoints").mkdir(parents=True)
    ckpt = "checkpoints/ckpt_00000050.pt"
    shutil.copy(straight / ckpt, split / ckpt)
    _ok(run_recipe("classifier", split, "--steps=100", *CLS_ARGS, f"--resume={ckpt}"))
    return {"straight": straight, "split": split}


def test_classifier_beats_chance(classifier_runs: dict[str, Path]) -> None:
    run = classifier_runs["straight"]
    result = read_events(run, "result")[-1]
    assert result["status"] == "succeeded"
    assert result["final"]["accuracy"] > 0.8  # chance is 0.1
    assert result["final"]["macro_f1"] > 0.8
    assert result["best"]["accuracy"] >= result["final"]["accuracy"]
    names = {e["name"] for e in read_events(run, "metric")}
    assert {"accuracy", "macro_f1", "val_loss"} <= names
    cm = json.loads((run / "artifacts" / "confusion_matrix.json").read_text())
    assert cm["labels"] == list(range(10))
    assert sum(map(sum, cm["matrix"])) == 360  # 20% of the 1797 digits, stratified
    csv = (run / "artifacts" / "confusion_matrix.csv").read_text().splitlines()
    assert csv[0].startswith("true\\pred,0,1") and len(csv) == 11


def test_classifier_resume_equals_uninterrupted(classifier_runs: dict[str, Path]) -> None:
    a = read_events(classifier_runs["straight"], "result")[-1]
    b = read_events(classifier_runs["split"], "result")[-1]
    assert [e["step"] for e in read_events(classifier_runs["split"], "started")] == [50]
    assert b["final"]["val_loss"] == pytest.approx(a["final"]["val_loss"], abs=1e-5)
    assert b["final"]["accuracy"] == a["final"]["accuracy"]
    sa = _load(classifier_runs["straight"] / a["checkpoint"])
    sb = _load(classifier_runs["split"] / b["checkpoint"])
    for name, tensor in sa["model"].items():
        torch.testing.assert_close(sb["model"][name], tensor, atol=1e-6, rtol=1e-5)
