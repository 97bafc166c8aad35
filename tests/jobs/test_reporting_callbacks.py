"""The reporting helper's one-line callbacks: a plain loop, Lightning (a real fit on the CPU)
and Hugging Face's Trainer callback logic; read back the way a watch and the agent read.

transformers is not in the lock (it and its dependencies add about 190 MB to every test
environment), so the Trainer callback's logic is driven here with objects of the shape
transformers hands it (`TrainerState`'s and `TrainingArguments`' fields it reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from assistant.jobs import reporting
from assistant.watch.output import LineReader

PREFIX = reporting.DEFAULT_PREFIX


def events(out: str) -> list[dict[str, Any]]:
    """Every report line of the output, as the watch reads it (checked by the protocol)."""
    reader = LineReader({})
    found = [e for line in out.splitlines() for e in reader.events(line)]
    assert len(found) == sum(line.startswith(PREFIX) for line in out.splitlines())
    return found


def test_a_plain_loop_reports_every_nth_step_and_its_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = reporting.Reporter(total=20, every=5)
    for step in range(1, 21):
        report(step, loss=torch.tensor(1.0 / step), lr=0.1, note="not a number")
        if step % 10 == 0:
            report.metric("val_loss", 2.0 / step, step=step)
    report.done(step=20)
    found = events(capsys.readouterr().out)
    progress = [e for e in found if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [5, 10, 15, 20]
    last = progress[-1]
    assert last["loss"] == pytest.approx(0.05)  # a float32 tensor's value
    assert {k: v for k, v in last.items() if k != "loss"} == {
        "type": "progress",
        "step": 20,
        "total": 20,
        "lr": 0.1,
    }
    assert [(e["name"], e["value"]) for e in found if e["type"] == "metric"] == [
        ("val_loss", 0.2),
        ("val_loss", 0.1),
    ]
    assert found[-1] == {"type": "result", "status": "succeeded", "step": 20}


def test_the_trainer_callback_reports_losses_evaluations_checkpoints_and_the_end(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    callback = reporting.HFReporting()
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=10, max_steps=30, is_world_process_zero=True)
    callback.on_log(args, state, None, logs={"loss": 0.5, "grad_norm": 1.5, "learning_rate": 1e-4})
    state.global_step = 20
    callback.on_log(
        args,
        state,
        None,
        logs={"eval_loss": 0.4, "eval_runtime": 0.2, "eval_samples_per_second": 9.0, "epoch": 1.0},
    )
    callback.on_save(args, state, None)
    state.global_step = 30
    callback.on_log(args, state, None, logs={"train_runtime": 3.0, "train_loss": 0.45})
    callback.on_train_end(args, state, None)
    other = SimpleNamespace(global_step=30, max_steps=30, is_world_process_zero=False)
    callback.on_log(args, other, None, logs={"loss": 9.0})  # another rank: nothing
    found = events(capsys.readouterr().out)
    assert found == [
        {"type": "progress", "step": 10, "total": 30, "loss": 0.5, "grad_norm": 1.5, "lr": 1e-4},
        {"type": "metric", "name": "eval_loss", "value": 0.4, "step": 20},
        {"type": "checkpoint", "path": f"{tmp_path}/checkpoint-20", "step": 20, "best": False},
        {"type": "result", "status": "succeeded", "step": 30},
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on dataloader workers
# Lightning 2.6's pytree helper on torch 2.13
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_a_lightning_fit_reports_through_its_callback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("lr", 0.05)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4), torch.randn(24, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[reporting.lightning_callback()],
    )
    trainer.fit(Tiny(), loader, loader)
    found = events(capsys.readouterr().out)
    progress = [e for e in found if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [2, 4, 6]
    for event in progress:  # self.log keeps values as float32 tensors
        assert event["total"] == 6 and event["loss"] > 0, event
        assert event["lr"] == pytest.approx(0.05), event
    kinds = [e["type"] for e in found]
    assert kinds == ["progress", "progress", "progress", "metric", "checkpoint", "result"], found
    (val,) = [e for e in found if e["type"] == "metric"]
    assert val["name"] == "val_loss" and val["step"] == 6
    (saved,) = [e for e in found if e["type"] == "checkpoint"]
    assert Path(saved["path"]).is_file() and saved["step"] == 6
    assert found[-1] == {"type": "result", "status": "succeeded", "step": 6}
    assert all(json.dumps(e) for e in found)
