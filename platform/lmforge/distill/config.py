"""Config of the ``distill`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.train.config import TrainConfig, TrainingConfig


@dataclasses.dataclass(kw_only=True)
class StudentConfig:
    """The model trained: a resized copy of the teacher (``layers`` and/or ``intermediate_size``), or
    ``init_from``, or ``preset``."""

    # a copy of the teacher with this many layers, initialised from every k-th of its layers (DistilBERT's
    # way), embeddings, final norm and head copied
    layers: int | None = None
    # a copy of the teacher with this many MLP neurons per layer: those adding most to the residual stream
    # on the training rows (Minitron's width pruning); with `layers`, of the layers kept
    intermediate_size: int | None = None
    init_from: str | None = None  # an HF dir whose tokenizer is the teacher's
    preset: str | None = None  # a fresh lmforge preset (tiny ... 1b) with the teacher's vocabulary and context

    def __post_init__(self):
        resized = self.layers is not None or self.intermediate_size is not None
        chosen = ["layers/intermediate_size"] * resized + [k for k in ("init_from", "preset")
                                                            if getattr(self, k) is not None]
        check(len(chosen) == 1, "student", "set one of layers and/or intermediate_size (a resized teacher), "
              f"init_from, preset (got {chosen or 'none'})")
        check(self.layers is None or self.layers >= 1, "student.layers", "must be >= 1")
        check(self.intermediate_size is None or self.intermediate_size >= 1, "student.intermediate_size",
              "must be >= 1")

    @property
    def resized(self) -> bool:
        return self.layers is not None or self.intermediate_size is not None


@dataclasses.dataclass(kw_only=True)
class DistillOptions:
    alpha: float = 0.5  # weight of KL(teacher || student); 1 - alpha on the data's cross-entropy
    temperature: float = 2.0  # both distributions softened by it; the KL term is scaled by T^2 (Hinton et al.)
    # 0: the KL over the whole vocabulary; k: over the teacher's k most likely tokens (both renormalised
    # there): for vocabularies too large to hold every position's distribution
    top_k: int = 0
    seq_len: int = 256  # tokens per training row (the corpus is packed with the teacher's tokenizer)
    val_fraction: float = 0.05  # of documents held out for val_loss and the teacher-vs-student figures
    max_documents: int | None = None  # read at most this many documents (in a stable order)

    def __post_init__(self):
        check(0.0 <= self.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")
        check(self.temperature > 0, "distill.temperature", "must be > 0")
        check(self.top_k >= 0, "distill.top_k", "must be >= 0")
        check(self.seq_len >= 8, "distill.seq_len", "must be >= 8")
        check(0.0 < self.val_fraction < 1.0, "distill.val_fraction", "must be in (0, 1)")


def _distill_train() -> TrainConfig:
    return TrainConfig(max_steps=200, micro_batch_size=8, lr=1e-3, warmup_steps=20, eval_every=50, eval_batches=10,
                       log_every=10, checkpoint_every=50)


@dataclasses.dataclass(kw_only=True)
class DistillConfig(TrainingConfig):
    """output: model/ (the student, best by val_loss), distill.json (teacher vs student), checkpoints/,
    metrics.jsonl, loss.png, summary.json."""

    teacher: str  # an HF dir: an `lmforge import` output, a pretrain or finetune model/
    student: StudentConfig
    # text to distil on: a prepare output (its kept documents/), or .jsonl/.txt/.parquet files or dirs,
    # re-tokenized with the teacher's tokenizer; or fine-tuning data (built-in tasks, prompt/response or
    # messages JSONL: see data_format)
    data: str | list[str]
    text_field: str = "text"  # the field holding the text in .jsonl / parquet data
    # text: documents packed into rows, every token learned; examples: conversations rendered with the
    # teacher's chat template as finetune renders them, only the assistant turns learned; auto: examples
    # when data names built-in tasks or JSONL rows with prompt/messages and no text_field, else text
    data_format: Literal["auto", "text", "examples"] = "auto"
    distill: DistillOptions = dataclasses.field(default_factory=DistillOptions)
    train: TrainConfig = dataclasses.field(default_factory=_distill_train)
