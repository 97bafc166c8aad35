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
"""

from __future__ import annotations

import json
import os
import sys
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
