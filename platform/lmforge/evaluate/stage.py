"""The ``eval`` stage's entry (the contract: :mod:`lmforge.stages`); the work is :mod:`.evaluation`.

Run: ``lmforge eval model=runs/smollm2 tasks=[boolq,nq_open,bias] output=runs/eval``, or
``models={base: runs/smollm2, tuned: runs/xsum/model} tasks=[xsum]`` to compare side by side.
"""

from __future__ import annotations

from lmforge.evaluate.config import EvalConfig as Config
from lmforge.report import Section
from lmforge.stages import Input

SUMMARY = "benchmarks as lm-eval scores them, task metrics with intervals, on a model or endpoint; audits"
# the newest model a recipe makes
INPUTS = (Input("model", (("distill", "model"), ("finetune", "model"), ("pretrain", "model"), ("import", ""))),)


def run(cfg: Config):
    from lmforge.evaluate import evaluation

    return evaluation.run(cfg)


def read_paths(cfg: Config) -> dict[str, str]:
    """The models compared side by side are inputs too: a re-trained one makes the comparison stale."""
    return {f"models.{name}": path for name, path in cfg.models.items()}


def report(cfg: Config | None, result: dict) -> list[Section]:
    from lmforge.evaluate.report import recipe_sections

    return recipe_sections(cfg)
