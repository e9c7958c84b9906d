"""Ray Tune glue: the sweep's Tuner (new or restored), its trials, and what they reported.

Each trial is a Tune function trainable that runs the stage's own Ray Train ``TorchTrainer``
(:func:`lmforge.train.ray_trainer.fit`) with Tune's callback for Train, which forwards every report of
the rank-0 worker (step, val_loss, loss at each evaluation) to the scheduler. A trial stopped by ASHA
takes its trainer's actors with it. Trials checkpoint under ``<storage>/trials/<trial id>``, so a
resumed trial's trainer continues from its own newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from lmforge import storage
from lmforge.progress import Ticker
from lmforge.tune.config import TuneConfig
from lmforge.tune.plan import Plan
from lmforge.tune.results import Trial, short
from lmforge.tune.space import Param

log = logging.getLogger("lmforge.tune")

EXPERIMENT = "ray_tune"  # Tune's experiment dir under the storage root
REPORTED = ("step", "val_loss", "loss", "stopped_early")  # what a training worker reports at each evaluation
# (and "loop_started": when its training loop began, for the trial's start-to-training time)


def search_space(params: list[Param]) -> dict:
    """The space in Tune's own terms (randint's hi included, as lmforge documents it)."""
    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1), "choice": lambda a: tune.choice(list(a))}
    return {p.key: make[p.kind](p.args) for p in params}


def _search(cfg: TuneConfig, concurrent: int):
    """Tune applies max_concurrent_trials to Searchers (Optuna) itself, but not to a variant generator
    passed in (random search): that one is told here."""
    if cfg.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=concurrent, random_state=cfg.seed)


def _scheduler(cfg: TuneConfig, max_steps: int, eval_every: int):
    if cfg.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=cfg.asha.grace_period or eval_every,
                         reduction_factor=cfg.asha.reduction_factor)


def trainable(build_spec: Callable[[dict, str], Any], root: str, plan: Plan):
    """The Tune function trainable: ``build_spec(params, checkpoint_root)`` -> the trial's WorkerSpec. It
    trains on a Ray Train trainer of its own, or, with one worker (``plan.workers == 0``), in the trial's
    own process."""
    def trial(params: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from lmforge import config as cfgmod
        from lmforge.train import ray_trainer
        from lmforge.train.worker import train_worker

        trial_root = f"{root}/trials/{tune.get_context().get_trial_id()}"
        spec = build_spec(params, trial_root)
        in_process = plan.workers == 0
        last = _checkpointed_report() if in_process else ray_trainer.registered_report(trial_root)
        if last and (last["step"] >= spec.train.max_steps or last.get("stopped_early")):
            # Finished before the sweep was interrupted, but after Tune last saved its state (it does so
            # every 10 s or more): report the result again instead of training.
            tune.report(last)
            return
        if in_process:
            train_worker({"spec": cfgmod.to_dict(spec), "progress": None, "tune": True})
            return
        ray_trainer.fit(spec, None, callbacks=[TuneReportCallback()])

    return tune.with_resources(trial, plan.trial_resources())


def _checkpointed_report() -> dict | None:
    """An in-process trial's report at the checkpoint Tune restored it from (None: a fresh start)."""
    from lmforge.train import checkpoint

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as path:
        return checkpoint.report_of(checkpoint.read_state(Path(path)))


class Progress(tune.Callback):
    """One log line per trial event and report, each with where the sweep stands (trials done, trial
    steps run, their rate and at most how long is left: trials stopped early finish it sooner), and
    ``trial_events.jsonl`` (when each trial started, finished or failed, so a resumed sweep shows which
    trials ran again)."""

    def __init__(self, events: Path, metric: str, max_steps: int, num_samples: int):
        self.events, self.metric, self.max_steps, self.num_samples = events, metric, max_steps, num_samples
        self.steps: dict[str, int] = {}  # trial id -> the last step it reported
        self.finished: set[str] = set()
        self.started: dict[str, float] = {}  # trial id -> when it started, until it reports training began
        self.ticker = Ticker(log, "tune", num_samples * max_steps, "trial steps", bound=True)

    def _event(self, kind: str, trial, **extra) -> None:
        with self.events.open("a") as f:
            f.write(json.dumps({"time": time.time(), "event": kind, "trial_id": trial.trial_id, **extra}) + "\n")

    def _sweep(self) -> str:
        """Where the sweep stands; a trial that ended before max_steps takes its unrun steps off the total."""
        cut = sum(self.max_steps - self.steps.get(t, 0) for t in self.finished)
        self.ticker.total = self.num_samples * self.max_steps - cut
        self.ticker.done = sum(self.steps.values())
        return f"{len(self.finished)}/{self.num_samples} trials done; " + self.ticker.line().split(": ", 1)[1]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self._event("start", trial, params=trial.config)
        log.info("tune: trial %s started: %s", trial.trial_id,
                 ", ".join(f"{k}={short(v)}" for k, v in trial.config.items()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id in self.started and result.get("loop_started"):
            # from the trial's start here to its worker's first training step (clocks of one cluster)
            after = round(result["loop_started"] - self.started.pop(trial.trial_id), 2)
            self._event("training", trial, after_s=after)
            log.info("tune: trial %s began training %.1f s after it started", trial.trial_id, after)
        if isinstance(result.get("step"), int):
            self.steps[trial.trial_id] = result["step"]
        log.info("tune: trial %s step %s/%d %s %s | %s", trial.trial_id, result.get("step"), self.max_steps,
                 self.metric, short(result.get(self.metric)), self._sweep())

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = (trial.last_result or {}).get("step")
        self._event("complete", trial, step=step)
        self.finished.add(trial.trial_id)
        log.info("tune: trial %s finished at step %s | %s", trial.trial_id, step, self._sweep())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._event("error", trial)
        self.finished.add(trial.trial_id)
        log.warning("tune: trial %s failed (its error is in %s) | %s", trial.trial_id, trial.path, self._sweep())


def run_sweep(cfg: TuneConfig, params: list[Param], build_spec: Callable[[dict, str], Any], root: str,
              plan: Plan, max_steps: int, eval_every: int, events: Path, resume: bool, keep: int = 2):
    """Fit a new sweep, or restore an interrupted one under ``root`` and finish it; the ResultGrid."""
    path, fs = storage.ray_storage(root)
    experiment = f"{path.rstrip('/')}/{EXPERIMENT}"  # with the filesystem given, a path within it
    fn = trainable(build_spec, root, plan)
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("tune: resuming the sweep in %s (finished trials are kept, the rest continue)", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=fn, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
        return tuner.fit()
    tuner = tune.Tuner(
        fn, param_space=search_space(params),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples, search_alg=_search(cfg, plan.concurrent),
            scheduler=_scheduler(cfg, max_steps, eval_every),
            max_concurrent_trials=plan.concurrent if cfg.search == "optuna" else None,
            trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id,
            # a finished trial's process runs the next one: its imports (torch, transformers) are done
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=path, storage_filesystem=fs, verbose=0,
            # what Tune keeps of in-process trials' checkpoints (a Ray Train trial's trainer keeps its own)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute="val_loss",
                                                    checkpoint_score_order="min"),
            callbacks=[Progress(events, cfg.metric, max_steps, cfg.num_samples)]),
    )
    return tuner.fit()


def collect(grid, keys: list[str]) -> list[Trial]:
    """Every trial of a ResultGrid with its sampled values and each report it made."""
    trials = []
    for result in grid:
        frame = result.metrics_dataframe
        history = []
        if frame is not None and len(frame):
            cols = [c for c in REPORTED if c in frame.columns]
            history = [{k: _plain(v) for k, v in row.items()} for row in frame[cols].to_dict("records")]
        metrics = result.metrics or {}
        # Tune's own id (a trial restarted into an existing dir gets a suffixed dir name, not a new id)
        trial_id = metrics.get("trial_id") or Path(result.path).name
        trials.append(Trial(trial_id=trial_id, params={k: _plain(result.config.get(k)) for k in keys},
                            history=history, error=str(result.error) if result.error else None,
                            wall_s=float(metrics.get("time_total_s", 0.0))))
    return sorted(trials, key=lambda t: t.trial_id)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones (for CSV, JSON and YAML)."""
    return value.item() if hasattr(value, "item") else value
