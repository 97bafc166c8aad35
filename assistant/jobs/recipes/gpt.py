"""Train a character-level GPT (nanoGPT-shaped) on the pydoc topics text bundled with Python.

    python -m assistant.jobs.recipes.gpt --run-dir DIR [--key=value ...] [--resume=PATH]
    torchrun --standalone --nproc_per_node=N -m assistant.jobs.recipes.gpt --run-dir DIR ...

Parameters, defaults and bounds live in the registry (`RECIPES["gpt"]`); the defaults
are a CPU-sized model that finishes in seconds. Batches are a pure function of
(seed, step, rank, micro-step) and every RNG is in the checkpoint, so a resumed run
continues exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from assistant.jobs.protocol import EXIT_OK
from assistant.jobs.recipes import RECIPES, ParamError
from assistant.jobs.recipes.common import (
    Args,
    Checkpoints,
    Dist,
    Reporter,
    StopFlag,
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
from assistant.jobs.recipes.peaks import peak_flops

INFO = RECIPES["gpt"]
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size")


@dataclass(frozen=True)
class Config:
    """The run's parameters, typed; help, defaults and bounds are in RECIPES["gpt"]."""

    steps: int  # optimizer steps in the whole run (resume continues towards it)
    seed: int
    device: str  # auto | cpu | cuda
    eval_every: int
    log_every: int
    checkpoint_every: int  # 0: checkpoint only on a new best val loss and at the end
    keep_last: int
    sleep_per_step: float  # test knob
    fail_at_step: int  # test knob
    alloc_mb: int  # test knob
    batch_size: int  # micro-batch per process
    grad_accum: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    lr: float
    min_lr: float
    warmup_steps: int
    lr_decay_steps: int  # 0: decay over `steps`
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_iters: int
    dtype: str  # auto | float32 | bfloat16 | float16
    compile: bool


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.dropout = c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # flash attention kernels on GPU; the causal mask is implicit
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=False)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=False)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # scaled init of the residual projections, per GPT-2
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings left out for the FLOPs estimate, as nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss: torch.Tensor = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return loss

    def flops_per_token(self) -> float:
        """6N + 12·L·H·Q·T (PaLM appendix B, as nanoGPT's estimate_mfu)."""
        c = self.config
        return (
            6 * self.num_params()
            + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size
        )


def peak_for(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak for MFU, or None where we do not know it (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), float32=dtype == torch.float32)


# ----------------------------------------------------------------------------- data


def load_corpus() -> tuple[torch.Tensor, int]:
    """The pydoc topics text in sorted key order, as character ids, and the vocab size."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab, ids = np.unique(codes, return_inverse=True)
    return torch.from_numpy(ids.astype(np.int64)), len(vocab)


def get_batch(
    data: torch.Tensor, cfg: Config, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=g)
    chunk = data[ix[:, None] + torch.arange(cfg.block_size + 1)]
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if device.type == "cuda":
        # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
            device, non_blocking=True
        )
    return x, y


# ----------------------------------------------------------------------------- schedule


def get_lr(cfg: Config, it: int) -> float:
    """Linear warmup, then cosine decay to min_lr over lr_decay_steps (default: steps)."""
    decay_steps = cfg.lr_decay_steps or cfg.steps
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / (cfg.warmup_steps + 1)
    if it >= decay_steps or decay_steps <= cfg.warmup_steps:
        return cfg.min_lr
    ratio = (it - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bf16 on CUDA when supported, else fp16; float32 on CPU.

    :raises ParamError: float16 on CPU (no GradScaler there).
    """
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "float16" and device.type != "cuda":
        raise ParamError("dtype=float16 needs device=cuda; use bfloat16 or float32 on cpu")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


# ----------------------------------------------------------------------------- training


def train(args: Args) -> int:
    cfg = Config(**args.config)  # type: ignore[arg-type]  # types checked by the registry
    run_dir = args.run_dir
    stop = StopFlag()
    device = resolve_device(cfg.device)
    fit_threads_to_cpu_quota()
    d = init_distributed(device)
    report = Reporter(run_dir, d)
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
    ptdtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    autocast = (
        torch.autocast(device_type=device.type, dtype=ptdtype)
        if ptdtype != torch.float32
        else contextlib.nullcontext()
    )

    data, vocab_size = load_corpus()
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    report.emit(
        "log",
        level="info",
        message=f"corpus: {len(data)} chars, vocab {vocab_size}, train {n}, val {len(data) - n}",
    )

    seed_everything(cfg.seed)
    gconf = GPTConfig(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)
    raw_model = GPT(gconf).to(device)
    # different dropout masks per rank; identical init came first
    torch.manual_seed(batch_seed("dropout", cfg.seed, d.rank))

    decay = [p for p in raw_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        **({"fused": True} if device.type == "cuda" else {}),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=ptdtype == torch.float16)

    ckpts = Checkpoints(run_dir, cfg.keep_last)
    step = 0
    best_val: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = []
    latest: str | None = None
    if args.resume:
        state = ckpts.load(args.resume)
        check_resume_config(state["config"], args.config, SHAPE_KEYS)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, best_val, best_step = state["step"], state["best_val_loss"], state["best_step"]
        history = list(state["history"])
        latest = args.resume
        rng = state["rng"]
        if len(rng) == d.world_size:
            restore_rng(rng[d.rank], device)
        else:  # a different world size cannot repeat the old batches anyway
            torch.manual_seed(batch_seed("dropout", cfg.seed, d.rank, step))
        del state

    model: nn.Module = raw_model
    if cfg.compile:
        model = torch.compile(raw_model)  # type: ignore[assignment]
    train_model: nn.Module = model
    if d.world_size > 1:
        train_model = DDP(model, device_ids=[d.local_rank] if device.type == "cuda" else None)

    n_params = raw_model.num_params(non_embedding=False)
    peak = peak_for(device, ptdtype)
    flops_per_token = raw_model.flops_per_token()
    report.emit(
        "started",
        step=step,
        total=cfg.steps,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        world_size=d.world_size,
        params={
            **args.config,
            "n_params": n_params,
            "vocab_size": vocab_size,
            "dtype": str(ptdtype).removeprefix("torch."),
        },
        peak_flops=peak,
        resumed_from=args.resume,
    )

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        """Mean loss over fixed batches, shared out across ranks and summed."""
        model.eval()
        out = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=device)
            for k in range(d.rank, cfg.eval_iters, d.world_size):
                x, y = get_batch(splits[split], cfg, batch_seed("eval", split, cfg.seed, k), device)
                with autocast:
                    total += model(x, y).float()
            if d.world_size > 1:
                dist.all_reduce(total)
            out[split] = total.item() / cfg.eval_iters
        model.train()
        return out

    def save(is_best: bool) -> str:
        """Checkpoint the current step (collective: all ranks gather RNG states)."""
        rng = gather_rng(d, device)
        rel = ckpts.relpath(step)
        if d.is_main:
            state = {
                "recipe": INFO.name,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "best_val_loss": best_val,
                "best_step": best_step,
                "config": args.config,
                "model_args": asdict(gconf),
                "rng": rng,
                "history": history,
            }
            rel = ckpts.save(state, step, best_step)
            last_val = history[-1]["val_loss"] if history and history[-1]["step"] == step else None
            report.emit("checkpoint", step=step, path=rel, best=is_best, val_loss=last_val)
        return rel

    def finish(status: str, code: int) -> int:
        final = {"loss": last_loss, "val_loss": history[-1]["val_loss"] if history else None}
        best = {"val_loss": best_val, "step": best_step}
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
        report.emit("result", status=status, step=step, final=final, best=best, checkpoint=latest)
        return code

    last_loss: float | None = None
    last_saved = step if latest else -1
    last_eval = history[-1]["step"] if history else -1
    t_log, tokens_since = time.time(), 0
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * d.world_size

    while True:
        if any_rank(d, stop.requested):
            status, code = stop_status(run_dir)
            if last_saved != step:
                latest, last_saved = save(is_best=False), step
            return finish(status, code)
        if step >= cfg.steps:
            break

        maybe_fail(cfg.fail_at_step, step + 1)
        lr = get_lr(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(
                splits["train"], cfg, batch_seed("train", cfg.seed, step, d.rank, micro), device
            )
            # gradients are all-reduced only on the last micro-step
            sync = d.world_size == 1 or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else train_model.no_sync():  # type: ignore[operator]
                with autocast:
                    loss = train_model(x, y) / cfg.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_since += tokens_per_step
        maybe_sleep(cfg.sleep_per_step)

        if step % cfg.log_every == 0 or step == cfg.steps:
            last_loss = loss_sum.item()  # a CPU-GPU sync point, only on log steps
            now = time.time()
            tps = tokens_since / max(now - t_log, 1e-9)
            mfu = flops_per_token * tps / d.world_size / peak if peak else None
            report.emit(
                "progress",
                step=step,
                total=cfg.steps,
                loss=last_loss,
                lr=lr,
                tokens_per_s=round(tps, 1),
                mfu=None if mfu is None else round(mfu, 4),
                elapsed_s=round(now - t_start, 3),
            )
            t_log, tokens_since = now, 0

        is_best = False
        if step % cfg.eval_every == 0 or step == cfg.steps:
            losses = evaluate()
            last_eval = step
            history.append({"step": step, "train_loss": losses["train"], "val_loss": losses["val"]})
            report.emit("metric", step=step, name="val_loss", value=losses["val"])
            report.emit("metric", step=step, name="train_loss", value=losses["train"])
            if best_val is None or losses["val"] < best_val:
                best_val, best_step, is_best = losses["val"], step, True
        periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
        if is_best or periodic or step == cfg.steps:
            latest, last_saved = save(is_best), step

    # a resume at or past the end: report what the checkpoint holds
    if last_eval != step:
        losses = evaluate()
        history.append({"step": step, "train_loss": losses["train"], "val_loss": losses["val"]})
    return finish("succeeded", EXIT_OK)


def main() -> int:
    return cli_main(INFO, train)


if __name__ == "__main__":
    sys.exit(main())
