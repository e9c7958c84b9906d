"""The training loop: plain PyTorch, one device, no Ray. Ray Train (or a bare process) calls it.

``fit`` runs ``max_steps`` optimizer steps of AdamW with weight-decay groups, linear warmup then cosine
decay, gradient accumulation and clipping, evaluates every ``eval_every`` steps and hands metrics to a
callback. Under DDP the model passed in is already wrapped; the loop does not care.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lmforge.train.config import TrainConfig
from lmforge.train.data import Rows

IGNORE_INDEX = -100  # labels the loss skips (HF convention)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms and biases), as in GPT-2/Llama recipes."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=torch.cuda.is_available() and next(model.parameters()).is_cuda)


def labels_for(input_ids: torch.Tensor, pad_id: int | None, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token labels: the inputs themselves (HF shifts them); pads, and tokens the loss mask marks
    as context only, are left out of the loss."""
    labels = input_ids.clone()
    if pad_id is not None:
        labels[input_ids == pad_id] = IGNORE_INDEX
    if loss_mask is not None:
        labels[loss_mask == 0] = IGNORE_INDEX
    return labels


def loss_on(model: torch.nn.Module, rows: Rows, pad_id: int | None) -> torch.Tensor:
    """Mean next-token loss over the target tokens of ``rows``."""
    labels = labels_for(rows.input_ids, pad_id, rows.loss_mask)
    if not (labels[:, 1:] != IGNORE_INDEX).any():  # no target at all: HF would return 0/0
        return model(input_ids=rows.input_ids).logits.sum() * 0.0  # zero, with every weight in the graph
    return model(input_ids=rows.input_ids, labels=labels).loss


def real_tokens(rows: Rows, pad_id: int | None) -> int:
    """Tokens the model reads in ``rows`` (pads excluded): what tokens_per_s counts."""
    return int((rows.input_ids != pad_id).sum()) if pad_id is not None else rows.input_ids.numel()


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # real (non-pad) tokens this worker trained on in the step


LossFn = Callable[[torch.nn.Module, Rows, "int | None"], torch.Tensor]  # (model, rows, pad_id) -> loss


def train_step(model, optimizer, micro_batches: list[Rows], cfg: TrainConfig, pad_id: int | None,
               autocast: contextlib.AbstractContextManager, loss_fn: LossFn = loss_on) -> StepResult:
    """One optimizer step over ``len(micro_batches)`` accumulated micro-batches of ``loss_fn``."""
    optimizer.zero_grad(set_to_none=True)
    total, tokens = 0.0, 0
    for i, batch in enumerate(micro_batches):
        batch = batch.trimmed()
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, autocast:
            loss = loss_fn(model, batch, pad_id) / len(micro_batches)
        with sync:
            loss.backward()
        total += loss.item()
        tokens += real_tokens(batch, pad_id)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor over all shards
    optimizer.step()
    return StepResult(loss=total, grad_norm=float(norm), tokens=tokens)


@torch.no_grad()
def evaluate(model, rows: Rows, batch_size: int, max_batches: int, pad_id: int | None,
             device: torch.device, autocast: contextlib.AbstractContextManager) -> float | None:
    """Mean loss over up to ``max_batches`` validation batches (in order), averaged over workers."""
    was_training = model.training
    model.eval()
    losses = []
    for i in range(0, min(len(rows), batch_size * max_batches), batch_size):
        with autocast:
            losses.append(loss_on(model, rows[i : i + batch_size].trimmed().to(device), pad_id).float())
    model.train(was_training)
    stats = torch.tensor([sum(x.item() for x in losses), len(losses)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return float(stats[0] / stats[1]) if stats[1] > 0 else None


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done
    best_val: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)  # every metrics row so far

    def improved(self, val: float, step: int) -> bool:
        if self.best_val is None or val < self.best_val:
            self.best_val, self.best_step, self.evals_since_best = val, step, 0
            return True
        self.evals_since_best += 1
        return False


def fit(model, batches: Iterator[Rows], val_rows: Rows, cfg: TrainConfig, *,
        pad_id: int | None, device: torch.device, world_size: int = 1,
        optimizer: torch.optim.Optimizer | None = None, state: TrainState | None = None,
        flops_per_token: float | None = None, peak_flops: float | None = None,
        on_metrics: Callable[[dict], None] = lambda m: None,
        on_checkpoint: Callable[[TrainState], None] = lambda s: None,
        autocast: contextlib.AbstractContextManager | None = None, loss_fn: LossFn = loss_on) -> TrainState:
    """Train from ``state.step`` to ``cfg.max_steps`` (or an early stop) on ``loss_fn`` (next-token
    cross-entropy unless a stage brings its own); returns the final state. Validation is always next-token
    cross-entropy, so val_loss compares across stages and losses.

    ``batches`` must already be positioned at ``state.step`` (see :func:`lmforge.train.data.batches`).
    Every ``checkpoint_every`` steps, at early stop and at the end, ``on_checkpoint`` gets the state.
    """
    autocast = autocast or contextlib.nullcontext()
    optimizer = optimizer or make_optimizer(model, cfg)
    state = state or TrainState()
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    while state.step < cfg.max_steps and not state.stopped_early:
        step = state.step
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        micro = [next(batches).to(device) for _ in range(cfg.grad_accum_steps)]
        result = train_step(model, optimizer, micro, cfg, pad_id, autocast, loss_fn)
        state.step = done = step + 1
        window_tokens += result.tokens * world_size
        row = None
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            elapsed = time.perf_counter() - window_start
            row = {"step": done, "loss": result.loss, "lr": lr_at(step, cfg), "grad_norm": result.grad_norm,
                   "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
            if flops_per_token and peak_flops:
                row["mfu"] = row["tokens_per_s"] * flops_per_token / (peak_flops * world_size)
            window_tokens, window_start = 0, time.perf_counter()
        checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.max_steps
        if done % cfg.eval_every == 0 or checkpoint_now:
            val = evaluate(model, val_rows, cfg.micro_batch_size, cfg.eval_batches, pad_id, device, autocast)
            if val is not None:
                row = row or {"step": done, "loss": result.loss, "lr": lr_at(step, cfg)}
                row.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
                state.improved(val, done)
                if cfg.patience and state.evals_since_best >= cfg.patience:
                    state.stopped_early = checkpoint_now = True
        if row is not None:
            state.history.append(row)
            on_metrics(row)
        if checkpoint_now:
            on_checkpoint(state)
    return state
