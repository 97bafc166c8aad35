"""Report progress from your own training code: one structured line per call, on stdout.

Import it (or copy this file: standard library only) into a script that runs as a declared
recipe whose `[recipes.NAME.progress]` sets `json_prefix`; the assistant's agent turns each
line into the same events the built-in recipes write, so `/run show`, `/status`, the report
plot, best-checkpoint tracking and pause/resume work for it as they do for them.

    from reporting import checkpoint, metric, progress

    for step in range(start, steps + 1):
        loss = train_step()
        if step % 10 == 0:
            progress(step, total=steps, loss=loss, lr=lr, tokens_per_s=tps)
        if step % 500 == 0:
            metric("val_loss", evaluate(), step=step)
            path = f"{out_dir}/ckpt-{step}.pt"
            torch.save(state, path)
            checkpoint(path, step=step)

The prefix comes from ASSISTANT_REPORT_PREFIX, which the agent sets from the recipe's
`json_prefix`; outside a run the lines are printed with the default and do no harm.
A job launched elsewhere and followed with `/watch` is read the same way.

One line for the training loops people use (none of their libraries is imported until
the callback is made, so this file stays standard library only):

    report = Reporter(total=steps, every=10)       # a plain loop: report(step, loss=...)
    Trainer(..., callbacks=[hf_callback()])        # Hugging Face transformers
    L.Trainer(..., callbacks=[lightning_callback()])  # Lightning (lightning or pytorch_lightning)

Each writes progress (loss, learning rate, other logged scalars), evaluation metrics,
checkpoints it knows the path of, and a `result` line when training ends; only the main
process of a multi-process run writes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

DEFAULT_PREFIX = "@assistant "


def _emit(kind: str, fields: dict[str, Any], stream: TextIO | None = None) -> None:
    prefix = os.environ.get("ASSISTANT_REPORT_PREFIX", DEFAULT_PREFIX)
    out = stream or sys.stdout
    out.write(prefix + json.dumps({"type": kind, **fields}, default=float) + "\n")
    out.flush()


def progress(step: int, *, total: int | None = None, **numbers: float) -> None:
    """A training step's numbers: loss, lr, tokens_per_s, mfu, ... (loss is plotted)."""
    fields: dict[str, Any] = {"step": int(step), **numbers}
    if total is not None:
        fields["total"] = int(total)
    _emit("progress", fields)


def metric(name: str, value: float, *, step: int) -> None:
    """An evaluation result (val_loss, accuracy, ...); the recipe's key metric picks the best."""
    _emit("metric", {"name": name, "value": float(value), "step": int(step)})


def checkpoint(path: str, *, step: int) -> None:
    """A checkpoint that is complete on disk: what `/run pause` and `/run resume` use."""
    _emit("checkpoint", {"path": str(path), "step": int(step), "best": False})


def log(message: str, *, level: str = "info") -> None:
    _emit("log", {"level": level, "message": message})


def result(status: str = "succeeded", *, step: int | None = None) -> None:
    """How training ended (succeeded, failed, stopped): a watched job's report says so."""
    fields: dict[str, Any] = {"status": status}
    if step is not None:
        fields["step"] = int(step)
    _emit("result", fields)


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among logged values (tensors of one element included), as floats."""
    out: dict[str, float] = {}
    for name, value in values.items():
        if hasattr(value, "numel") and hasattr(value, "item"):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) or math.isnan(value):
            out[str(name)] = float(value)
    return out


class Reporter:
    """A plain loop's one line: `report(step, loss=loss, lr=lr)` every step.

    Writes a progress line every `every` steps (and at `total`), so a loop can call it on
    each step without flooding its output.
    """

    def __init__(self, *, total: int | None = None, every: int = 1) -> None:
        self.total = total
        self.every = max(1, int(every))

    def __call__(self, step: int, **numbers: Any) -> None:
        if step % self.every == 0 or (self.total is not None and step >= self.total):
            progress(step, total=self.total, **_scalars(numbers))

    def metric(self, name: str, value: float, *, step: int) -> None:
        metric(name, value, step=step)

    def done(self, status: str = "succeeded", *, step: int | None = None) -> None:
        result(status, step=step)


# Hugging Face transformers' `on_log` names; the rest of a log entry is kept as it is.
_HF_NAMES = {"learning_rate": "lr"}


class HFReporting:
    """What `hf_callback()`'s TrainerCallback does, on transformers' (args, state) objects.

    A mixin so its logic does not need transformers: `hf_callback` puts it in front of
    `transformers.TrainerCallback`.
    """

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if not getattr(state, "is_world_process_zero", True) or not logs:
            return
        step = int(state.global_step)
        total = int(state.max_steps) if getattr(state, "max_steps", 0) else None
        numbers = _scalars(logs)
        evals = {k: v for k, v in numbers.items() if k.startswith("eval_")}
        for name, value in evals.items():
            if not name.endswith(("_runtime", "_per_second")):
                metric(name, value, step=step)
        train = {
            _HF_NAMES.get(k, k): v
            for k, v in numbers.items()
            if k not in evals and k not in ("epoch", "total_flos") and not k.startswith("train_")
        }
        if "epoch" in numbers:
            train["epoch"] = numbers["epoch"]
        if set(train) - {"epoch"}:
            progress(step, total=total, **train)

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if getattr(state, "is_world_process_zero", True):
            step = int(state.global_step)
            checkpoint(f"{args.output_dir}/checkpoint-{step}", step=step)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if getattr(state, "is_world_process_zero", True):
            result("succeeded", step=int(state.global_step))


def hf_callback() -> Any:
    """A `transformers.TrainerCallback` that writes report lines: `callbacks=[hf_callback()]`."""
    # looked up when asked for: the helper must load where transformers is not installed
    base = importlib.import_module("transformers").TrainerCallback
    cls = type("AssistantReporting", (HFReporting, base), {})
    return cls()


class LightningReporting:
    """What `lightning_callback()`'s Callback does, on Lightning's trainer object.

    :param every: steps between progress lines (None: the trainer's log_every_n_steps).
    """

    def __init__(self, every: int | None = None) -> None:
        self.every = every

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not getattr(trainer, "is_global_zero", True):
            return
        step = int(trainer.global_step)
        every = self.every or int(getattr(trainer, "log_every_n_steps", 50) or 1)
        total = _lightning_total(trainer)
        if step % every and not (total and step >= total):
            return
        numbers = {
            k: v
            for k, v in _scalars(trainer.callback_metrics).items()
            if not k.startswith(("val", "test"))
        }
        if isinstance(outputs, Mapping) and "loss" in outputs:
            numbers.update(_scalars({"loss": outputs["loss"]}))
        elif outputs is not None and not isinstance(outputs, Mapping):
            numbers.update(_scalars({"loss": outputs}))
        progress(step, total=total, **numbers)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(trainer, "is_global_zero", True) or getattr(
            trainer, "sanity_checking", False
        ):
            return
        step = int(trainer.global_step)
        for name, value in _scalars(trainer.callback_metrics).items():
            if name.startswith("val"):
                metric(name, value, step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if getattr(trainer, "is_global_zero", True):
            keeper = getattr(trainer, "checkpoint_callback", None)
            saved = getattr(keeper, "last_model_path", "") or getattr(keeper, "best_model_path", "")
            step = int(trainer.global_step)
            if saved:
                checkpoint(str(saved), step=step)
            result("succeeded", step=step)


def _lightning_total(trainer: Any) -> int | None:
    total = getattr(trainer, "max_steps", -1)
    if isinstance(total, int) and total > 0:
        return total
    with contextlib.suppress(Exception):
        estimated = trainer.estimated_stepping_batches
        if isinstance(estimated, int | float) and math.isfinite(estimated):
            return int(estimated)
    return None


def lightning_callback(every: int | None = None) -> Any:
    """A Lightning `Callback` that writes report lines: `callbacks=[lightning_callback()]`."""
    try:
        base = importlib.import_module("lightning.pytorch").Callback
    except ImportError:  # the older package name
        base = importlib.import_module("pytorch_lightning").Callback
    cls = type("AssistantReporting", (LightningReporting, base), {})
    return cls(every)
