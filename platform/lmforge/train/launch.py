"""How every stage that trains runs: one output lifecycle, the shared worker on Ray Train or in this
process with ``train.num_workers=0``, the same results. Pretraining and fine-tuning differ only in their
entry module's hooks: what the run shares (``training_context``), the worker's job (``worker_spec``), and
what to do with the trained model (``finish``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.outputs import Output
from lmforge.stages import STAGES, RayConfig
from lmforge.train.config import TrainingConfig, WorkerSpec

log = logging.getLogger("lmforge.train")


def run_training(stage: str, cfg: TrainingConfig) -> Path | str:
    """Run (or resume) a training stage; returns its output. A finished identical run is skipped."""
    from lmforge.train import checkpoint
    from lmforge.train.progress import MetricsLog
    from lmforge.train.results import write_results

    entry = STAGES[stage].entry()
    out = Output(stage, cfg)
    if out.skip():
        return out.result()
    entry.check_inputs(cfg)  # a wrong data dir, a bad row: stopped before anything is written
    # starting over also when what is there was trained from other upstream runs (a re-run prepare)
    fresh = cfg.train.resume == "never" or cfg.force or not out.resumable()
    partial = out.begin(resume=not fresh)
    # a remote output keeps its checkpoints (and what workers share) beside it, where every node reaches them
    root = out.durable_root()
    context = entry.training_context(cfg, partial, root)
    spec = entry.worker_spec(cfg, context, checkpoint_root(cfg.train.checkpoint_dir, root))
    if fresh:
        checkpoint.wipe(spec.checkpoint_root)
    metrics = MetricsLog(partial, stage, cfg.train.max_steps)
    log.info("%s: metrics in %s (tensorboard --logdir %s)", stage, metrics.path, metrics.tb_dir)
    start = time.perf_counter()
    launch(spec, metrics, cfg.ray)
    write_results(partial, spec.checkpoint_root, time.perf_counter() - start, stage)
    if finish := STAGES[stage].hook("finish"):
        finish(cfg, partial, context)
    return out.publish()


def checkpoint_root(configured: str | None, default: Path | str) -> str:
    """``train.checkpoint_dir`` (local or ``s3://``), else ``default`` (the stage's output dir, or the
    remote output itself); local paths absolute."""
    return storage.absolute(configured or default)


def launch(spec: WorkerSpec, metrics, ray: RayConfig) -> None:
    """Train ``spec`` to the end, its metrics rows going to ``metrics`` (a MetricsLog)."""
    if spec.train.num_workers == 0:
        from lmforge.train.worker import train_worker

        try:
            train_worker({"spec": cfgmod.to_dict(spec), "progress": metrics})
        finally:
            metrics.close()
        return
    from lmforge.cluster.session import ray_session
    from lmforge.train import ray_trainer

    with ray_session(ray):
        ray_trainer.fit(spec, metrics)
