"""Config of the ``finetune`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.train.config import TrainConfig, TrainingConfig

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass(kw_only=True)
class LoraConfig:
    r: int = 16  # rank of the update matrices
    alpha: int = 32  # scale: the update is multiplied by alpha / r
    dropout: float = 0.05  # on the LoRA path's input
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(ALL_LINEAR))  # Llama's linear layers

    def __post_init__(self):
        check(self.r >= 1 and self.alpha >= 1, "r", "r and alpha must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclasses.dataclass(kw_only=True)
class MethodConfig:
    method: Literal["lora", "full"] = "lora"  # lora: train adapters and merge them in; full: every weight
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    max_seq_len: int = 512  # tokens per example: longer prompts lose their middle, shorter rows are padded
    val_fraction: float = 0.1  # of `data`'s examples held out for val_loss, unless val_data is set
    max_examples: int | None = None  # train on at most this many examples (in a stable order)

    def __post_init__(self):
        check(self.max_seq_len >= 16, "max_seq_len", "must be >= 16")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


@dataclasses.dataclass(kw_only=True)
class BaseModelConfig:
    init_from: str  # the HF model dir to fine-tune (an `lmforge import` output, or a pretrain output's model/)


def _finetune_train() -> TrainConfig:
    """Defaults that suit fine-tuning: fewer steps, a LoRA-sized learning rate, no weight decay."""
    return TrainConfig(max_steps=100, micro_batch_size=4, lr=2e-4, warmup_steps=10, weight_decay=0.0,
                       eval_every=25, eval_batches=10, log_every=5, checkpoint_every=50)


@dataclasses.dataclass(kw_only=True)
class FinetuneConfig(TrainingConfig):
    """output: model/ (merged), adapter/ (LoRA), checkpoints/, metrics.jsonl, loss.png, summary.json."""

    # JSONL with "prompt"/"response" or chat "messages" (local or pkg://), or a built-in task's training
    # split: xsum, boolq, nq_open, translate_ko_en, translate_en_ko, chat; or a list of them, mixed
    data: str | list[str]
    val_data: str | None = None  # held-out JSONL for val_loss; default: val_fraction of `data`
    model: BaseModelConfig
    finetune: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    train: TrainConfig = dataclasses.field(default_factory=_finetune_train)

    def __post_init__(self):
        check(not (self.finetune.method == "lora" and self.train.strategy == "fsdp"), "train.strategy",
              "LoRA fine-tuning runs with ddp (the adapters are small; FSDP2 is for full weights)")
