"""Config of the ``eval`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.stages import StageConfig, UsesRay

METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "f1", "accuracy", "perplexity")


@dataclasses.dataclass(kw_only=True)
class TaskSpec:
    """A task of your own: JSONL rows ``{"prompt", "reference"}`` (or ``{"messages"}``), or ``canary``
    with a prepare output (or its ``canaries.jsonl``)."""

    name: str  # how eval.json and predictions.jsonl name it
    data: str  # a JSONL file (local or pkg://); for `canary`, a prepare output dir or canaries.jsonl
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rougeL"])  # rouge*, bleu, chrf, exact_match,
    # f1, perplexity (of the reference, given the prompt)
    max_tokens: int = 64  # new tokens per generated answer
    stop: list[str] = dataclasses.field(default_factory=lambda: ["\n"])  # where a generated answer ends

    def __post_init__(self):
        for metric in self.metrics:
            check(metric in METRICS, "metrics", f"unknown metric {metric!r} (known: {', '.join(METRICS)})")


@dataclasses.dataclass(kw_only=True)
class EvalConfig(UsesRay, StageConfig):
    """output: eval.json, predictions.jsonl, report.md."""

    model: str | None = None  # an export dir (onnxruntime) or an HF dir (PyTorch)
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> dir: several, side by side
    # built-in task names (xsum, boolq, nq_open, translate_ko_en, translate_en_ko, chat, bias) or
    # {name, data, metrics} for JSONL tasks and the canary audit
    tasks: list[str | TaskSpec]
    split: Literal["test", "train", "all"] = "test"  # built-in tasks' split: test is what training never sees
    # prompts as a user turn of the model's chat template (as `lmforge finetune` trains and `serve` serves);
    # false: plain text, as base-model benchmarks are run
    chat: bool = False
    max_examples: int | None = 200  # per task (the first of the split, in a stable order); null: all
    batch_size: int = 8  # sequences per generation or scoring call
    threads: int = 0  # onnxruntime / PyTorch threads per model actor; 0 lets them choose
    engine: Literal["ray", "local"] = "ray"  # ray: Ray Data with model actors; local: in this process
    actors: int = 1  # model actors per model on Ray (each holds the model)
    actor_cpus: float = 1.0  # CPUs Ray reserves per actor

    def __post_init__(self):
        check(bool(self.model) or bool(self.models), "model", "set `model` or `models` (name -> dir)")
        check(len(self.tasks) > 0, "tasks", "needs at least one task")
        check(self.max_examples is None or self.max_examples >= 1, "max_examples", "must be >= 1")
        check(self.batch_size >= 1 and self.actors >= 1, "batch_size", "batch_size and actors must be >= 1")
