"""Config of the ``tune`` stage."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from lmforge.config import check
from lmforge.stages import StageConfig, UsesRay


@dataclasses.dataclass(kw_only=True)
class AshaConfig:
    # Steps every trial runs before ASHA may stop it (its first rung); default: the base's eval_every.
    grace_period: int | None = None
    reduction_factor: float = 2.0  # at each rung only the best 1/reduction_factor of trials go on

    def __post_init__(self):
        check(self.grace_period is None or self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor > 1, "reduction_factor", "must be > 1")


@dataclasses.dataclass(kw_only=True)
class RunControl:
    resume: Literal["auto", "never"] = "auto"  # auto: continue an interrupted sweep (Tuner.restore)
    # Where Tune's experiment and the trials' checkpoints live: a local dir or s3://bucket/prefix (trials
    # on several nodes need no shared disk). Default: inside the output dir.
    storage: str | None = None


@dataclasses.dataclass(kw_only=True)
class TuneConfig(UsesRay, StageConfig):
    """output: trials.csv, best.yaml, curves.png, params.png, summary.json; Tune's experiment dir."""

    # A config of a stage that trains (pretrain, finetune): a YAML path or the mapping itself. Each trial
    # runs it with the sampled values set; its own output, checkpoint_dir and resume are the sweep's to
    # set. In a recipe, a mapping here is laid over the recipe's section of the swept stage (unset: that
    # section as is).
    base: str | dict[str, Any]
    # The stage it sweeps, one that trains; default: in a recipe, the last such stage it runs; else the
    # one whose config accepts base (the later one in `lmforge --help`'s order when several do)
    stage: str | None = None
    # {dotted.key: {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {choice: [a, b, ...]} | {randint: [lo, hi]}}
    # over any key of the base config (randint includes hi)
    space: dict[str, dict[str, Any]]
    num_samples: int = 8  # trials
    metric: Literal["val_loss", "loss"] = "val_loss"  # as a trial reports it at each evaluation
    mode: Literal["min", "max"] = "min"  # whether the best trial has the lowest metric or the highest
    scheduler: Literal["asha", "none"] = "asha"  # asha: stop trials that fall behind at each rung
    asha: AshaConfig = dataclasses.field(default_factory=AshaConfig)
    search: Literal["random", "optuna"] = "random"  # optuna: TPE, which learns from finished trials
    seed: int = 0  # of the search (the trials' own seed is the base's train.seed)
    # Trials at once; default: as many as the cluster fits with one CPU (or GPU) per training worker.
    max_concurrent_trials: int | None = None
    tune: RunControl = dataclasses.field(default_factory=RunControl)
    # In a recipe whose swept stage runs after the sweep: that stage trains with the best trial's values.
    apply_best: bool = True

    def __post_init__(self):
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials",
              "must be >= 1")
        check(bool(self.space), "space", "give at least one key to sweep")
