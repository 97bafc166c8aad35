"""Train an MLP on scikit-learn's bundled digits; report accuracy and macro F1 on a held-out split.

    python -m assistant.jobs.recipes.classifier --run-dir DIR [--key=value ...] [--resume=PATH]

Same shape as the gpt recipe: parameters from the registry (`RECIPES["classifier"]`),
minibatches a pure function of (seed, step, rank), every RNG in the checkpoint, a
checkpoint and a `paused`/`stopped` result at the next step after SIGTERM.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.metrics import confusion_matrix, f1_score  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from assistant.jobs.protocol import EXIT_OK
from assistant.jobs.recipes import RECIPES
from assistant.jobs.recipes.common import (
    Args,
    Checkpoints,
    Dist,
    Reporter,
    StopFlag,
    agree,
    allocate_ballast,
    any_rank,
    artifact,
    batch_seed,
    check_resume_config,
    cli_main,
    close_distributed,
    fit_threads_to_cpu_quota,
    gather_rng,
    init_distributed,
    maybe_fail,
    maybe_sleep,
    resolve_device,
    restore_rng,
    seed_everything,
    stop_status,
    write_json,
)

INFO = RECIPES["classifier"]
SHAPE_KEYS = ("hidden", "layers", "val_fraction", "seed")  # the split depends on seed too
N_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """The run's parameters, typed; help, defaults and bounds are in RECIPES["classifier"]."""

    steps: int
    seed: int  # also picks the stratified split
    device: str  # auto | cpu | cuda
    eval_every: int
    log_every: int
    checkpoint_every: int  # 0: checkpoint only on a new best accuracy and at the end
    keep_last: int
    sleep_per_step: float  # test knob
    fail_at_step: int  # test knob
    alloc_mb: int  # test knob
    batch_size: int
    hidden: int
    layers: int
    dropout: float
    lr: float
    weight_decay: float
    val_fraction: float


def build_model(cfg: Config, n_in: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(cfg.layers):
        mods += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = cfg.hidden
    mods.append(nn.Linear(width, N_CLASSES))
    return nn.Sequential(*mods)


def load_split(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], split stratified by class with the run's seed."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=cfg.val_fraction, stratify=y, random_state=cfg.seed
    )
    return tuple(torch.from_numpy(a) for a in (x_tr, y_tr, x_va, y_va))  # type: ignore[return-value]


def train(args: Args) -> int:
    cfg = Config(**args.config)  # type: ignore[arg-type]  # types checked by the registry
    stop = StopFlag()
    device = resolve_device(cfg.device)
    fit_threads_to_cpu_quota()
    d = init_distributed(device)
    report = Reporter(args.run_dir, d)
    with report.errors():
        code = _train(cfg, args, d, device, report, stop)
    close_distributed(d)
    report.close()
    return code


def _train(
    cfg: Config, args: Args, d: Dist, device: torch.device, report: Reporter, stop: StopFlag
) -> int:
    run_dir = args.run_dir
    t_start = time.time()
    _ballast = allocate_ballast(cfg.alloc_mb)  # held until return, so the memory stays touched
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in load_split(cfg))
    report.emit("log", level="info", message=f"digits: train {len(y_tr)}, validation {len(y_va)}")

    seed_everything(cfg.seed)
    raw_model = build_model(cfg, x_tr.shape[1]).to(device)
    torch.manual_seed(batch_seed("dropout", cfg.seed, d.rank))
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    ckpts = Checkpoints(run_dir, cfg.keep_last)
    step = 0
    best_acc: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = []
    latest: str | None = None
    if args.resume:
        state = ckpts.load(args.resume)
        check_resume_config(state["config"], args.config, SHAPE_KEYS)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_acc, best_step = state["step"], state["best_accuracy"], state["best_step"]
        history = list(state["history"])
        latest = args.resume
        rng = state["rng"]
        if len(rng) == d.world_size:
            restore_rng(rng[d.rank], device)
        else:
            torch.manual_seed(batch_seed("dropout", cfg.seed, d.rank, step))
        del state

    model: nn.Module = raw_model
    if d.world_size > 1:
        model = DDP(raw_model, device_ids=[d.local_rank] if device.type == "cuda" else None)

    report.emit(
        "started",
        step=step,
        total=cfg.steps,
        device=str(device),
        world_size=d.world_size,
        params={**args.config, "n_params": sum(p.numel() for p in raw_model.parameters())},
        resumed_from=args.resume,
    )

    @torch.no_grad()
    def evaluate() -> dict[str, Any]:
        """Loss, accuracy, macro F1 and the confusion matrix on the validation split."""
        raw_model.eval()
        logits = raw_model(x_va)
        raw_model.train()
        pred = logits.argmax(dim=1).cpu().numpy()
        true = y_va.cpu().numpy()
        return {
            "val_loss": F.cross_entropy(logits, y_va).item(),
            "accuracy": float((pred == true).mean()),
            "macro_f1": float(f1_score(true, pred, average="macro", labels=list(range(N_CLASSES)))),
            "confusion": confusion_matrix(true, pred, labels=list(range(N_CLASSES))).tolist(),
        }

    def save(is_best: bool) -> str:
        """Checkpoint the current step (collective: all ranks gather RNG states)."""
        rng = gather_rng(d, device)
        rel = ckpts.relpath(step)
        if d.is_main:
            state = {
                "recipe": INFO.name,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "best_accuracy": best_acc,
                "best_step": best_step,
                "config": args.config,
                "rng": rng,
                "history": history,
            }
            rel = ckpts.save(state, step, best_step)
            ev = history[-1] if history and history[-1]["step"] == step else {}
            report.emit(
                "checkpoint",
                step=step,
                path=rel,
                best=is_best,
                val_loss=ev.get("val_loss"),
                accuracy=ev.get("accuracy"),
            )
        return rel

    last_confusion: list[list[int]] | None = None

    def finish(status: str, code: int) -> int:
        last = history[-1] if history else {}
        final = {
            "loss": last_loss,
            "val_loss": last.get("val_loss"),
            "accuracy": last.get("accuracy"),
            "macro_f1": last.get("macro_f1"),
        }
        best = {"accuracy": best_acc, "step": best_step}
        if d.is_main:
            write_json(
                artifact(run_dir, "metrics.json"),
                {
                    "recipe": INFO.name,
                    "status": status,
                    "step": step,
                    "eval": history,
                    "final": final,
                    "best": best,
                },
            )
            if last_confusion is not None:
                write_confusion(run_dir, last_confusion, step)
        report.emit("result", status=status, step=step, final=final, best=best, checkpoint=latest)
        return code

    def run_eval() -> dict[str, Any]:
        nonlocal last_confusion
        ev = evaluate()
        last_confusion = ev.pop("confusion")
        history.append({"step": step, **ev})
        for name in ("accuracy", "macro_f1", "val_loss"):
            report.emit("metric", step=step, name=name, value=ev[name])
        return ev

    last_loss: float | None = None
    last_saved = step if latest else -1
    last_eval = history[-1]["step"] if history else -1
    while True:
        if any_rank(d, stop.requested):
            status, code = stop_status(run_dir)
            if last_saved != step:
                latest, last_saved = save(False), step
            return finish(status, code)
        if step >= cfg.steps:
            break

        maybe_fail(cfg.fail_at_step, step + 1)
        g = torch.Generator().manual_seed(batch_seed("train", cfg.seed, step, d.rank))
        idx = torch.randint(len(y_tr), (cfg.batch_size,), generator=g).to(device)
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        step += 1
        maybe_sleep(cfg.sleep_per_step)

        if step % cfg.log_every == 0 or step == cfg.steps:
            last_loss = loss.item()
            now = time.time()
            report.emit(
                "progress",
                step=step,
                total=cfg.steps,
                loss=last_loss,
                lr=cfg.lr,
                elapsed_s=round(now - t_start, 3),
            )

        is_best = False
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = run_eval()["accuracy"]
            last_eval = step
            # rank 0 decides, so every rank takes part in the same checkpoints
            if agree(d, best_acc is None or acc > best_acc):
                best_acc, best_step, is_best = acc, step, True
        periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
        if is_best or periodic or step == cfg.steps:
            latest, last_saved = save(is_best), step

    if last_eval != step or last_confusion is None:
        run_eval()
    return finish("succeeded", EXIT_OK)


def write_confusion(run_dir: Any, matrix: list[list[int]], step: int) -> None:
    """artifacts/confusion_matrix.json and .csv: rows are true labels, columns predictions."""
    labels = list(range(N_CLASSES))
    write_json(
        artifact(run_dir, "confusion_matrix.json"),
        {"step": step, "split": "validation", "labels": labels, "matrix": matrix},
    )
    rows = ["true\\pred," + ",".join(map(str, labels))]
    rows += [
        f"{label}," + ",".join(map(str, row)) for label, row in zip(labels, matrix, strict=True)
    ]
    artifact(run_dir, "confusion_matrix.csv").write_text("\n".join(rows) + "\n")


def main() -> int:
    return cli_main(INFO, train)


if __name__ == "__main__":
    sys.exit(main())
