"""The one registry of lmforge's stages. The CLI, ``lmforge run`` recipes and their help read it.

A stage is a config class and a function ``run(config) -> output``, both named here by import path so
that ``lmforge <stage> --help`` imports nothing heavier than the config. In a recipe a stage writes to
``<recipe output>/<subdir>`` and its ``inputs`` are wired from the outputs of the stages before it.
Adding a stage is its own package plus one entry below.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Input:
    """A config key that a recipe fills from an earlier stage's output, unless the recipe sets it. The run
    id of the stage output it names is recorded in the ``.done`` marker (no sources: recorded only)."""

    key: str  # dotted key in this stage's config, e.g. "data" or "model"
    sources: tuple[tuple[str, str], ...]  # (stage, path below its output), the first the recipe runs wins


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line, for `lmforge --help` and the stage's own help
    config: str  # "module:ConfigClass"
    run: str  # "module:function": run(config) -> the output dir (or a result to print)
    subdir: str | None = None  # where the stage writes in a recipe; None: not a recipe stage
    inputs: tuple[Input, ...] = ()
    # In a recipe, called as fn(config, recipe) instead of `run` (serve: start, answer the prompts, stop).
    recipe_run: str | None = None
    # `--dry-run` prints fn(config) instead of the config itself (a recipe shows every stage resolved).
    dry_run: str | None = None
    # In a recipe: fn(section, sections) -> section, given every stage's section with its inputs wired
    # (a sweep takes the section of the stage it sweeps as its base).
    recipe_wire: str | None = None
    # In a recipe: fn(config, later) -> later, after the stage ran, with the typed configs of the stages
    # still to run (a sweep sets its best values in the stage it swept).
    recipe_feed: str | None = None
    # fn(config) -> {"files:<key>": state}: files it reads that are no stage's output (a raw corpus), as
    # they are now; recorded in the .done marker beside the upstream runs, so editing one re-runs it.
    raw_inputs: str | None = None

    def config_class(self) -> type:
        return load(self.config)

    def run_fn(self) -> Callable[..., Any]:
        return load(self.run)


def load(target: str) -> Any:
    """``"package.module:name"`` -> the object, imported only now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_TRAINED = (("finetune", "model"), ("pretrain", "model"), ("import", ""))  # the newest model a recipe makes

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "corpus files -> cleaned, deduplicated, PII-redacted documents, a BPE tokenizer and packed "
          "train/val shards (Ray Data)",
          "lmforge.data.config:PrepareConfig", "lmforge.data.prepare:run", subdir="data",
          raw_inputs="lmforge.data.prepare:corpus_state"),
    Stage("pretrain", "train a Llama-style model on prepared shards (Ray Train: DDP or FSDP2, checkpoints, resume)",
          "lmforge.train.config:PretrainConfig", "lmforge.train.pretrain:run", subdir="train",
          inputs=(Input("data", (("prepare", ""),)), Input("tuned_by", ()))),
    Stage("import", "an HF model dir or a .gguf file -> an HF model dir that every other stage takes",
          "lmforge.model.config:ImportConfig", "lmforge.model.importer:run", subdir="import"),
    Stage("finetune", "supervised fine-tuning (LoRA or full) on prompt/response or chat data, on Ray Train",
          "lmforge.finetune.config:FinetuneConfig", "lmforge.finetune.finetune:run", subdir="finetune",
          inputs=(Input("model.init_from", (("pretrain", "model"), ("import", ""))), Input("tuned_by", ()))),
    Stage("tune", "hyperparameter sweep over a pretrain or finetune config (Ray Tune: ASHA, random or Optuna, "
          "resumable)", "lmforge.tune.config:TuneConfig", "lmforge.tune.tune:run", subdir="tune",
          # not wired (the base is the swept stage's section, inputs and all), but recorded, so that a
          # re-run upstream stage makes the sweep run again
          inputs=(Input("base.data", ()), Input("base.model.init_from", ())),
          dry_run="lmforge.tune.tune:resolved_dict", recipe_wire="lmforge.tune.recipe:wire",
          recipe_feed="lmforge.tune.recipe:feed"),
    Stage("eval", "task metrics (ROUGE, BLEU, chrF, EM/F1, accuracy, perplexity), bias and canary audits",
          "lmforge.evaluate.config:EvalConfig", "lmforge.evaluate.evaluation:run", subdir="eval",
          inputs=(Input("model", _TRAINED),)),
    Stage("export", "HF model dir -> ONNX with KV cache (fp32, int8, int4, fp16), parity-checked against PyTorch",
          "lmforge.export.config:ExportConfig", "lmforge.export.onnx_export:run", subdir="onnx",
          inputs=(Input("model", _TRAINED),)),
    Stage("serve", "OpenAI-compatible HTTP API on Ray Serve and onnxruntime (foreground until Ctrl-C)",
          "lmforge.serve.config:ServeConfig", "lmforge.serve.server:run", subdir="",
          inputs=(Input("model", (("export", ""),)),), recipe_run="lmforge.serve.server:answer_prompts"),
    Stage("run", "a recipe: several stages in order in one Ray session (e.g. jobs/quickstart.yaml)",
          "lmforge.recipe.config:RecipeConfig", "lmforge.recipe.runner:run",
          dry_run="lmforge.recipe.runner:resolved_dict"),
)}


def recipe_stages() -> list[Stage]:
    """The stages a recipe can hold, in registry order."""
    return [s for s in STAGES.values() if s.subdir is not None]
