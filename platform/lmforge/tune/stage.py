"""The ``tune`` stage's entry (the contract: :mod:`lmforge.stages`): a hyperparameter sweep over the config
of any stage that trains (pretrain, finetune, ...) on Ray Tune.

Run: ``lmforge tune jobs/tune_tiny.yaml`` (``tune.resume=auto``, the default, finishes an interrupted
sweep; ``search=optuna``, ``scheduler=none`` to compare).

The run, step by step: read the base config and check it, and the space against it, before anything
starts (:mod:`.space`); open ``<output>.partial/``; make what every trial shares once (the swept stage's
``training_context``: finetune renders its rows); plan how many trials fit the cluster at once
(:mod:`.plan`); run the trials on Ray Tune, or restore an interrupted sweep and finish it
(:mod:`.ray_tune`); write ``trials.csv``, ``best.yaml`` (the base with the best values, runnable as is),
``summary.json`` and the plots (:mod:`.results`); publish.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lmforge import config as cfgmod
from lmforge import uploads
from lmforge.config import ConfigError
from lmforge.outputs import DONE_MARKER, Output
from lmforge.stages import STAGES, Input, training_stages
from lmforge.tune import results, space
from lmforge.tune.config import TuneConfig as Config
from lmforge.tune.plan import Plan, plan
from lmforge.tune.recipe import feed, wire  # noqa: F401  (hooks of this entry module)

log = logging.getLogger("lmforge.tune")

SUMMARY = "hyperparameter sweep over a stage that trains (Ray Tune: ASHA, random or Optuna, resumable)"
# not wired (the base is the swept stage's section, inputs and all), but recorded, so that a re-run
# upstream stage makes the sweep run again
INPUTS = (Input("base.data"), Input("base.model.init_from"))


def run(cfg: Config) -> Path | str:
    out = Output("tune", cfg)
    if out.skip():
        return out.result()
    sweep = Sweep.of(cfg)
    sweep.entry.check_inputs(sweep.base_cfg)
    # Only an interrupted run of this very sweep is finished off; a finished or interrupted one of another
    # config (space, trials, base or upstream runs changed) is not restored in its place.
    fresh = cfg.tune.resume == "never" or cfg.force or not out.interrupted()
    partial = out.begin(resume=not fresh)
    root = cfg.tune.storage.rstrip("/") if cfg.tune.storage else out.durable_root()
    if fresh:
        _wipe(root)
    context = sweep.entry.training_context(sweep.base_cfg, partial, root, reuse=True)
    from lmforge.cluster.session import ray_session
    from lmforge.tune import ray_tune

    start = time.perf_counter()
    with ray_session(cfg.ray):
        import ray

        resources = ray.cluster_resources()
        trial_plan = plan(resources.get("CPU", 1.0), resources.get("GPU", 0.0), workers=trial_workers(sweep.train),
                          use_gpu=sweep.train.use_gpu, num_samples=cfg.num_samples,
                          max_concurrent=cfg.max_concurrent_trials, cpus_per_worker=sweep.train.cpus_per_worker)
        log.info("tune: %d trials of %s, %s; %s search, scheduler %s; storage %s", cfg.num_samples, sweep.stage,
                 trial_plan.describe(), cfg.search, cfg.scheduler, root)
        grid = ray_tune.run_sweep(cfg, sweep.params, sweep.spec_builder(context, trial_plan), root, trial_plan,
                                  sweep.train.max_steps, sweep.train.eval_every, partial / "trial_events.jsonl",
                                  resume=not fresh, keep=sweep.train.keep_checkpoints)
        trials = ray_tune.collect(grid, [p.key for p in sweep.params])
    write_outputs(cfg, sweep, trials, partial, time.perf_counter() - start)
    return out.publish(keep=REMOTE_DIRS)


def trial_workers(train) -> int:
    """Training workers per trial as the plan takes them: 0, training in the trial's own process, for a
    trial of one worker, unless it asks Ray Train to restart it after a failure (``train.max_failures``).
    Starting a trainer (a controller, worker actors, a placement group) took ~15 s per trial on 2 cores,
    against seconds of training in a sweep of small models."""
    return 0 if train.num_workers <= 1 and not train.max_failures else train.num_workers


# Under a remote storage root: Tune's experiment, the trials' checkpoints, what trials share (rows). The
# root is ``tune.storage``, else the output itself when it is s3:// (trials on any node reach it, and an
# interrupted sweep resumes from it), else the local partial dir.
REMOTE_DIRS = ("ray_tune", "trials", "data")


def dry_run(cfg: Config) -> dict:
    """The sweep as ``--dry-run`` prints it, after checking the base and the space: the base fully
    resolved (every default filled in) and the stage it runs."""
    sweep = Sweep.of(cfg)
    out = cfgmod.to_dict(cfg)
    base = cfgmod.to_dict(sweep.base_cfg)
    base.pop("output")
    return {**out, "stage": sweep.stage, "base": base}


class Sweep:
    """The swept stage's base config and the space, checked; how a trial's config and job are made."""

    def __init__(self, cfg: Config, stage_name: str, base: dict):
        self.cfg, self.stage, self.base = cfg, stage_name, base
        self.entry = STAGES[stage_name].entry()
        self.stage_cls = self.entry.Config
        self.sweep_set = {"output": f"{cfg.output}/trial"}  # a trial publishes nothing; it only checkpoints
        try:
            self.base_cfg = cfgmod.from_dict(self.stage_cls, space.trial_dict(base, {}, self.sweep_set))
        except ConfigError as e:
            raise ConfigError(f"base.{e}") from None
        self.train = self.base_cfg.train
        self.params = space.parse(cfg.space, self.stage_cls, stage_name, base, self.sweep_set,
                                  getattr(self.entry, "SHARED_BY_TRIALS", ()))

    @classmethod
    def of(cls, cfg: Config) -> Sweep:
        base = cfgmod.read_yaml(cfg.base) if isinstance(cfg.base, str) else dict(cfg.base)
        base.pop("output", None)
        trains = [s.name for s in training_stages()]
        if cfg.stage is not None and cfg.stage not in trains:
            raise ConfigError(f"stage: {cfg.stage!r} is no stage that trains (these do: {', '.join(trains)})")
        return cls(cfg, cfg.stage or swept_stage(base), base)

    def trial_config(self, params: dict[str, Any], extra: dict[str, Any] | None = None):
        sweep_set = {**self.sweep_set, **(extra or {})}
        return cfgmod.from_dict(self.stage_cls, space.trial_dict(self.base, params, sweep_set))

    def spec_builder(self, context: dict, trial_plan: Plan):
        """``(params, checkpoint_root) -> WorkerSpec`` for the trainable (plain values only: it is shipped
        to the trial's actor). Trials checkpoint at every evaluation: that is when they report."""
        stage_name, base, sweep_set = self.stage, self.base, self.sweep_set
        extra = {"train.checkpoint_every": self.train.eval_every}
        if trial_plan.workers:  # an in-process trial's CPUs are the trial's own (Plan.trial_resources)
            extra["train.cpus_per_worker"] = trial_plan.worker_cpus

        def build(params: dict, ckpt_root: str):
            entry = STAGES[stage_name].entry()
            cfg = cfgmod.from_dict(entry.Config, space.trial_dict(base, params, {**sweep_set, **extra}))
            return entry.worker_spec(cfg, context, ckpt_root)

        return build


def swept_stage(base: dict) -> str:
    """The stage a base config is of, when the sweep names none: the one training stage whose config takes
    it (the later one when several do: a stage that builds on another has the more specific config)."""
    errors = {}
    for stage in reversed(training_stages()):
        try:
            cfgmod.from_dict(stage.config_class(), {**base, "output": "-"})
            return stage.name
        except ConfigError as e:
            errors[stage.name] = str(e)
    raise ConfigError("stage: base is no config of a stage that trains (set stage:): "
                      + "; ".join(f"as {name}: {e}" for name, e in errors.items()))


def write_outputs(cfg: Config, sweep: Sweep, trials: list[results.Trial], out: Path, seconds: float) -> None:
    max_steps = sweep.train.max_steps
    rows = results.table(trials, sweep.params, cfg.metric, cfg.mode, max_steps)
    results.write_csv(rows, out / "trials.csv")
    summary = results.summary(trials, cfg.metric, cfg.mode, max_steps, seconds)
    summary["stage"] = sweep.stage
    summary["trial_start_to_training_s"] = results.start_to_training(out / "trial_events.jsonl")
    best = results.best_trial(trials, cfg.metric, cfg.mode)
    if best is not None:
        best_cfg = sweep.trial_config(best.params, {"output": f"{cfg.output.rstrip('/')}-best"})
        header = (f"# lmforge {sweep.stage} {cfg.output}/best.yaml -- the base config with the best trial's values "
                  f"({best.trial_id}: {cfg.metric} {summary['best'][cfg.metric]:.4f} at step "
                  f"{summary['best']['step']})\n")
        (out / "best.yaml").write_text(header + cfgmod.dump(best_cfg))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    results.plot_curves(trials, cfg.metric, out / "curves.png", best)
    results.plot_params(trials, sweep.params, cfg.metric, cfg.mode, out / "params.png")
    log.info("tune: %s", json.dumps({k: v for k, v in summary.items() if k != "best"}))
    if best is not None:
        log.info("tune: best trial %s: %s; run it in full with: lmforge %s %s/best.yaml", best.trial_id,
                 json.dumps(summary["best"]["params"]), sweep.stage, cfg.output)


def _wipe(root: str) -> None:
    """A fresh sweep starts from an empty remote root (the output itself is unmarked first: it no longer
    holds a finished sweep); a local one is the fresh partial dir already."""
    uploads.empty_remote(root, DONE_MARKER, subdirs=REMOTE_DIRS)


def report(cfg: Config | None, result: dict) -> list:
    """The sweep's section: every trial, the best one and whether the swept stage trained with it."""
    from lmforge.tune.report import sweep_section

    return [sweep_section(cfg)]
