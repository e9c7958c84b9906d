"""``lmforge tune``: a hyperparameter sweep over a pretrain or finetune config on Ray Tune.

Run: ``lmforge tune jobs/tune_tiny.yaml`` (``tune.resume=auto``, the default, finishes an interrupted
sweep; ``search=optuna``, ``scheduler=none`` to compare).

The run, step by step: read the base config and check it, and the space against it, before anything
starts (:mod:`.space`); open ``<output>.partial/``; for finetune, render the training rows once for
every trial; plan how many trials fit the cluster at once (:mod:`.plan`); run the trials on Ray Tune,
or restore an interrupted sweep and finish it (:mod:`.ray_tune`); write ``trials.csv``, ``best.yaml``
(the base with the best values, runnable as is), ``summary.json`` and the plots (:mod:`.results`);
publish.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lmforge import config as cfgmod
from lmforge import stage, storage
from lmforge.config import ConfigError
from lmforge.tune import results, space
from lmforge.tune.config import TuneConfig
from lmforge.tune.plan import Plan, plan

log = logging.getLogger("lmforge.tune")


def run(cfg: TuneConfig) -> Path:
    if done := stage.already_done(cfg, "tune"):
        return done
    sweep = Sweep.of(cfg)
    # Only an interrupted run of this very sweep is finished off; a finished or interrupted one of another
    # config (space, trials, base or upstream runs changed) is not restored in its place.
    fresh = cfg.tune.resume == "never" or cfg.force or not stage.interrupted(cfg, cfg.output)
    partial = stage.begin(cfg, cfg.output, resume=not fresh)
    root = storage_root(cfg, partial)
    if fresh and storage.is_remote(root):
        _wipe(root)
    context = sweep.context(partial, root)
    from lmforge.cluster.session import ray_session
    from lmforge.tune import ray_tune

    start = time.perf_counter()
    with ray_session(cfg.ray):
        import ray

        resources = ray.cluster_resources()
        trial_plan = plan(resources.get("CPU", 1.0), resources.get("GPU", 0.0), workers=sweep.train.num_workers,
                          use_gpu=sweep.train.use_gpu, num_samples=cfg.num_samples,
                          max_concurrent=cfg.max_concurrent_trials, cpus_per_worker=sweep.train.cpus_per_worker)
        log.info("tune: %d trials of %s, %s; %s search, scheduler %s; storage %s", cfg.num_samples, sweep.stage,
                 trial_plan.describe(), cfg.search, cfg.scheduler, root)
        grid = ray_tune.run_sweep(cfg, sweep.params, sweep.spec_builder(context, trial_plan), root, trial_plan,
                                  sweep.train.max_steps, sweep.train.eval_every, partial / "trial_events.jsonl",
                                  resume=not fresh, keep=sweep.train.keep_checkpoints)
        trials = ray_tune.collect(grid, [p.key for p in sweep.params])
    write_outputs(cfg, sweep, trials, partial, time.perf_counter() - start)
    return stage.publish(partial, cfg.output, keep=REMOTE_DIRS)


REMOTE_DIRS = ("ray_tune", "trials", "data")  # under a remote storage root: Tune's, checkpoints, rows


def storage_root(cfg: TuneConfig, partial: Path) -> str:
    """Where Tune's experiment, the trials' checkpoints and (finetune) the rows live: ``tune.storage``,
    else the output itself when it is ``s3://`` (trials on any node reach it, and an interrupted sweep
    resumes from it), else the local partial dir."""
    if cfg.tune.storage:
        return cfg.tune.storage.rstrip("/")
    return cfg.output.rstrip("/") if storage.is_remote(cfg.output) else str(partial.resolve())


def resolved_dict(cfg: TuneConfig) -> dict:
    """The sweep as ``--dry-run`` prints it, after checking the base and the space: the base fully
    resolved (every default filled in) and the stage it runs."""
    sweep = Sweep.of(cfg)
    out = cfgmod.to_dict(cfg)
    base = cfgmod.to_dict(sweep.base_cfg)
    base.pop("output")
    return {**out, "stage": sweep.stage, "base": base}


class Sweep:
    """The base stage's config and the space, checked; how a trial's config and worker spec are made."""

    def __init__(self, cfg: TuneConfig, stage_name: str, base: dict):
        from lmforge.stages import STAGES

        self.cfg, self.stage, self.base = cfg, stage_name, base
        self.stage_cls = STAGES[stage_name].config_class()
        self.sweep_set = {"output": f"{cfg.output}/trial"}  # a trial publishes nothing; it only checkpoints
        try:
            self.base_cfg = cfgmod.from_dict(self.stage_cls, space.trial_dict(base, {}, self.sweep_set))
        except ConfigError as e:
            raise ConfigError(f"base.{e}") from None
        self.train = self.base_cfg.train
        self.params = space.parse(cfg.space, self.stage_cls, stage_name, base, self.sweep_set)

    @classmethod
    def of(cls, cfg: TuneConfig) -> Sweep:
        base = cfgmod.read_yaml(cfg.base) if isinstance(cfg.base, str) else dict(cfg.base)
        base.pop("output", None)
        stage_name = cfg.stage or ("finetune" if "finetune" in base else "pretrain")
        return cls(cfg, stage_name, base)

    def trial_config(self, params: dict[str, Any], extra: dict[str, Any] | None = None):
        sweep_set = {**self.sweep_set, **(extra or {})}
        return cfgmod.from_dict(self.stage_cls, space.trial_dict(self.base, params, sweep_set))

    def context(self, partial: Path, root: str) -> dict:
        """What every trial shares, made once here with absolute paths (trials run in other directories)
        or URIs: pretrain, the prepared data's manifest; finetune, the base model and the rendered rows
        (shared under a remote ``root``, where trials on any node mirror them)."""
        if self.stage == "pretrain":
            from lmforge.data import manifest as prepared

            data = self.base_cfg.data
            data = data if storage.is_remote(data) else str(Path(data).resolve())
            return {"data": data, "manifest": prepared.read(data)}
        from lmforge.finetune import data, finetune

        base = finetune.base_dir(self.base_cfg.model.init_from)
        rows = partial / "data"
        if not (rows / "counts.json").is_file():  # a resumed sweep keeps the rows its trials trained on
            c = self.base_cfg
            train, val = data.load_examples(c.data, c.val_data, c.finetune.val_fraction, c.finetune.max_examples)
            finetune.write_rows(c, base, train, val, rows)
            if storage.is_remote(root):
                stage.share_dir(rows, storage.join(root, "data"))
        shared = storage.join(root, "data") if storage.is_remote(root) else str(rows.resolve())
        return {"base": base, "rows": shared}

    def spec_builder(self, context: dict, trial_plan: Plan):
        """``(params, checkpoint_root) -> WorkerSpec`` for the trainable (plain values only: it is shipped
        to the trial's actor). Trials checkpoint at every evaluation: that is when they report."""
        stage_name, stage_cls, base, sweep_set = self.stage, self.stage_cls, self.base, self.sweep_set
        extra = {"train.checkpoint_every": self.train.eval_every}
        if trial_plan.workers:  # an in-process trial's CPUs are the trial's own (Plan.trial_resources)
            extra["train.cpus_per_worker"] = trial_plan.worker_cpus

        def build(params: dict, ckpt_root: str):
            cfg = cfgmod.from_dict(stage_cls, space.trial_dict(base, params, {**sweep_set, **extra}))
            if stage_name == "pretrain":
                from dataclasses import replace

                from lmforge.train import pretrain

                return pretrain.worker_spec(replace(cfg, data=context["data"]), context["manifest"], ckpt_root)
            from lmforge.finetune import finetune

            return finetune.worker_spec(cfg, context["base"], context["rows"], ckpt_root)

        return build


def write_outputs(cfg: TuneConfig, sweep: Sweep, trials: list[results.Trial], out: Path, seconds: float) -> None:
    max_steps = sweep.train.max_steps
    rows = results.table(trials, sweep.params, cfg.metric, cfg.mode, max_steps)
    results.write_csv(rows, out / "trials.csv")
    summary = results.summary(trials, cfg.metric, cfg.mode, max_steps, seconds)
    summary["stage"] = sweep.stage
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
    holds a finished sweep)."""
    storage.delete_remote(f"{root}/{stage.DONE_MARKER}")
    fs, path = storage.filesystem(root)
    for sub in REMOTE_DIRS:
        fs.delete_dir_contents(f"{path}/{sub}", missing_dir_ok=True)
