"""Config of the ``pretrain`` stage, and what a training worker is handed (:class:`WorkerSpec`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.model.presets import PRESETS
from lmforge.stages import StageConfig, UsesRay


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    preset: str = "tiny"  # tiny | mini | small | 20m | 125m | 350m | 1b (Llama-style, lmforge.model.presets)
    init_from: str | None = None  # an HF model dir to continue from instead of a fresh preset
    # The preset's width, resized (a sweep's "width"): the preset's attention heads must divide it; the
    # MLP keeps the preset's ratio. Fresh presets only.
    hidden_size: int | None = None
    num_layers: int | None = None  # the preset's depth, resized: decoder blocks (fresh presets only)

    def __post_init__(self):
        check(self.preset in PRESETS, "preset", f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        heads = PRESETS[self.preset]["num_attention_heads"]
        check(self.hidden_size is None or (self.hidden_size > 0 and self.hidden_size % heads == 0), "hidden_size",
              f"must be a positive multiple of the {self.preset} preset's {heads} attention heads")
        check(self.num_layers is None or self.num_layers >= 1, "num_layers", "must be >= 1")
        check(self.init_from is None or (self.hidden_size is None and self.num_layers is None), "hidden_size",
              "hidden_size and num_layers resize a fresh preset; init_from brings its own shape")

    def overrides(self) -> dict:
        """The preset's HF config fields this config changes."""
        out = {}
        if self.hidden_size is not None:
            base = PRESETS[self.preset]
            out["hidden_size"] = self.hidden_size
            out["intermediate_size"] = base["intermediate_size"] * self.hidden_size // base["hidden_size"]
        if self.num_layers is not None:
            out["num_hidden_layers"] = self.num_layers
        return out


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    max_steps: int = 200  # optimizer steps
    micro_batch_size: int = 16  # rows per worker per forward pass
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    # When set, grad_accum_steps is derived: the smallest number of micro-batches over all workers that
    # reaches this many tokens per optimizer step (micro_batch_size x seq_len x workers per micro-step).
    global_batch_tokens: int | None = None
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # on weight matrices only
    beta1: float = 0.9  # AdamW
    beta2: float = 0.95  # AdamW
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # model init and data order
    num_workers: int = 1  # Ray Train workers; 0 runs the same loop in this process without Ray
    use_gpu: bool = False  # one GPU per worker; nccl, bf16 autocast
    # ddp: every worker holds the whole model. fsdp: FSDP2 (fully_shard per decoder layer + root), for
    # models whose weights + optimizer state do not fit one device; bf16 params / fp32 reduce on GPU.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    cpus_per_worker: float | None = None  # default: an equal share of the cluster, at most 1
    eval_every: int = 50  # steps between validation runs
    eval_batches: int = 20  # validation micro-batches per run
    log_every: int = 10  # steps between metrics rows (metrics.jsonl, TensorBoard, the log)
    patience: int = 0  # early stop after this many evaluations without a new best val_loss; 0 = off
    checkpoint_every: int = 100  # steps between checkpoints (also one at the end and at an early stop)
    checkpoint_dir: str | None = None  # local dir or s3://bucket/prefix; default <output>/checkpoints
    keep_checkpoints: int = 3  # the best by val_loss are kept; the newest always is, for resume
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the newest checkpoint if any
    max_failures: int = 0  # Ray Train restarts of the worker group from the last checkpoint
    peak_tflops: float | None = None  # per device, for MFU; default from a table of known GPUs

    def __post_init__(self):
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "eval_every", "log_every",
                    "eval_batches", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.global_batch_tokens is None or self.global_batch_tokens >= 1, "global_batch_tokens", "must be >= 1")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        check(self.cpus_per_worker is None or self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.patience >= 0 and self.max_failures >= 0, "patience", "patience and max_failures must be >= 0")


@dataclasses.dataclass(kw_only=True)
class TrainingConfig(UsesRay, StageConfig):
    """What every stage that trains on the shared worker has (``force`` starts over, checkpoints wiped).
    output: model/ (best by val_loss), checkpoints/, metrics.jsonl, loss.png, summary.json."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # The sweep output whose best values this run trains with (a recipe sets it after its tune stage):
    # recorded as an input, so a re-run sweep makes this run again.
    tuned_by: str | None = None


@dataclasses.dataclass(kw_only=True)
class PretrainConfig(TrainingConfig):
    """output: model/ (best by val_loss), checkpoints/, metrics.jsonl, loss.png, summary.json."""

    data: str  # a prepare output dir (its train/ and val/ rows, manifest.json, tokenizer/)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


@dataclasses.dataclass(kw_only=True)
class WorkerSpec:
    """Everything a training worker needs, as plain values (it is shipped to Ray Train workers).

    The data are token rows, not a particular stage's output: parquet files with ``input_ids`` (every row
    ``seq_len`` ids) and optionally ``loss_mask`` (1 where the token is a training target, 0 where it is
    context only, such as a fine-tuning prompt). Pads never count.
    """

    train_rows: str  # dir of parquet parts
    val_rows: str
    seq_len: int
    pad_id: int | None
    tokenizer: str  # HF tokenizer dir, saved beside every checkpoint's model
    # the model to train: an HF dir, or a preset sized by vocab_size / seq_len / special_tokens
    init_from: str | None = None
    preset: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)  # preset fields resized (ModelConfig.overrides)
    vocab_size: int = 0
    special_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint_root: str  # local dir or s3:// prefix; checkpoints land in <root>/checkpoints/step_N
    stage: str = "train"  # the name in log lines
    lora: dict | None = None  # LoRA adapters on a frozen init_from (r, alpha, dropout, target_modules)
    # The training loss, for a stage that brings its own: "module:function", called once per worker as
    # fn(spec, device) -> loss(model, rows, pad_id) -> a scalar tensor. None: next-token cross-entropy
    # (lmforge.train.loop.loss_on). val_loss is next-token cross-entropy whatever the training loss.
    loss: str | None = None
    loss_args: dict = dataclasses.field(default_factory=dict)  # what the stage's loss factory reads (a teacher...)


def accumulation_steps(cfg: TrainConfig, seq_len: int, world_size: int) -> int:
    """Micro-batches per optimizer step: ``grad_accum_steps``, or enough to reach ``global_batch_tokens``."""
    if cfg.global_batch_tokens is None:
        return cfg.grad_accum_steps
    per_micro_step = cfg.micro_batch_size * seq_len * max(1, world_size)
    return max(1, -(-cfg.global_batch_tokens // per_micro_step))
