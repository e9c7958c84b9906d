"""Config of the ``eval`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.stages import StageConfig, UsesRay

GENERATION_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "f1", "perplexity")
# what a JSONL task scores when its spec names no metrics, by kind
DEFAULT_METRICS = {"choice": ("acc", "acc_norm"), "generate": ("rougeL",)}
CHOICE_METRICS = ("acc", "acc_norm", "f1")  # lm-evaluation-harness's names; f1 of the choices as classes
METRICS = tuple(dict.fromkeys(GENERATION_METRICS + CHOICE_METRICS))


@dataclasses.dataclass(kw_only=True)
class TaskSpec:
    """A task of your own: JSONL rows ``{"prompt", "reference"}`` (or ``{"messages"}``) to generate,
    ``{"prompt", "choices", "answer"}`` (or ``{"messages", "choices", "answer"}``) for multiple choice, or
    ``canary`` with a prepare output (or its ``canaries.jsonl``); or a built-in task by name without data,
    to give it its own ``max_examples``."""

    name: str  # how eval.json and predictions.jsonl name it (a built-in task's name when data is null)
    # a JSONL file (local or pkg://); for `canary`, a prepare output dir or canaries.jsonl; null: the built-in
    # task of that name
    data: str | None = None
    max_examples: int | None = None  # examples of this task; null: eval's max_examples
    # generation: rouge*, bleu, chrf, exact_match, f1, perplexity (of the reference, given the prompt);
    # multiple choice: acc, acc_norm (log-likelihood per character), f1. null: rougeL, or acc and acc_norm
    metrics: list[str] | None = None
    max_tokens: int = 64  # new tokens per generated answer
    stop: list[str] = dataclasses.field(default_factory=lambda: ["\n"])  # where a generated answer ends
    target_delimiter: str = " "  # multiple choice: between the prompt and each choice (lm-eval's default)
    description: str = ""  # text before the few-shot examples and the prompt

    def __post_init__(self):
        check(self.max_examples is None or self.max_examples >= 1, "max_examples", "must be >= 1")
        check(self.data is not None or self.name != "canary", "data",
              "the canary audit reads the secrets a prepare output planted: its dir or its canaries.jsonl")
        for metric in self.metrics or ():
            check(metric in METRICS, "metrics", f"unknown metric {metric!r} (known: {', '.join(METRICS)})")


@dataclasses.dataclass(kw_only=True)
class EvalConfig(UsesRay, StageConfig):
    """output: eval.json, predictions.jsonl, report.md."""

    # an export dir (onnxruntime), a LoRA adapter exported beside one (<export>/adapters/<name>: run on that
    # export as served), an HF dir (PyTorch), or an OpenAI-compatible endpoint (http(s)://host/v1)
    model: str | None = None
    # name -> dir or endpoint: several, side by side, each compared with the first (paired intervals)
    models: dict[str, str] = dataclasses.field(default_factory=dict)
    # built-in tasks (xsum, nq_open, translate_ko_en, translate_en_ko, chat, bias; the multiple-choice
    # benchmarks boolq, piqa, openbookqa, siqa, commonsense_qa, mmlu, mmlu_medical; `standard` for the usual
    # set of them) or {name, data, metrics} for JSONL tasks and the canary audit
    tasks: list[str | TaskSpec]
    num_fewshot: int = 0  # solved examples before each prompt, drawn (seeded) from the task's train split
    seed: int = 1234  # of the few-shot draw and the bootstrap
    bootstrap: int = 1000  # resamples of the examples for every metric's 95% interval; 0: no intervals
    split: Literal["test", "train", "all"] = "test"  # built-in tasks' split: test is what training never sees
    # prompts as a user turn of the model's chat template (as `lmforge finetune` trains and `serve` serves);
    # false: plain text, as base-model benchmarks are run
    chat: bool = False
    max_examples: int | None = 200  # per task (the first of the split, in a stable order); null: all
    batch_size: int = 8  # sequences per generation or scoring call
    threads: int = 0  # onnxruntime / PyTorch threads per model; 0: an actor's CPUs on Ray, the library's choice locally
    engine: Literal["ray", "local"] = "ray"  # ray: Ray Data with model actors; local: in this process
    actors: int = 1  # model actors per model on Ray (each holds the model)
    actor_cpus: float | None = None  # CPUs Ray reserves per actor; null: the largest node's CPUs split among them
    # an endpoint model: the environment variable holding its API key (unset or empty: no key sent)
    api_key_env: str = "OPENAI_API_KEY"
    # an endpoint model: the model's tokenizer (an HF or export dir), required: prompts go as its token ids and
    # chat prompts through its template, exactly as a local run makes them
    tokenizer: str | None = None
    concurrency: int = 8  # an endpoint model: requests in flight at once
    retries: int = 3  # an endpoint model: tries again after a connection error, 429 or 5xx, backing off

    def __post_init__(self):
        check(bool(self.model) or bool(self.models), "model", "set `model` or `models` (name -> dir)")
        check(len(self.tasks) > 0, "tasks", "needs at least one task")
        check(self.max_examples is None or self.max_examples >= 1, "max_examples", "must be >= 1")
        check(self.batch_size >= 1 and self.actors >= 1, "batch_size", "batch_size and actors must be >= 1")
        check(self.num_fewshot >= 0, "num_fewshot", "must be >= 0")
        check("comparisons" not in self.models, "models", "`comparisons` names the paired differences in eval.json; "
              "call the model something else")
