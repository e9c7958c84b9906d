"""Ray Train glue: run :func:`lmforge.train.worker.train_worker` on a ``TorchTrainer``.

Checkpoints persist under ``<checkpoint root>/checkpoints`` (local or ``s3://``), where Ray Train also
keeps its run state: a later fit with the same root resumes from the newest one, and a failed worker
group restarts from it up to ``max_failures`` times. Ray Train's own INFO chatter is kept out of the
terminal (it stays in Ray's session logs); the rank-0 worker's metrics come back through a queue.
"""

from __future__ import annotations

import json
import logging

from lmforge import storage
from lmforge.cluster.session import cluster_cpus
from lmforge.train.checkpoint import RUN_NAME
from lmforge.train.config import WorkerSpec
from lmforge.train.progress import MetricsLog, RayProgress
from lmforge.train.worker import train_worker

log = logging.getLogger(__name__)


def worker_cpus(num_workers: int, configured: float | None) -> float:
    """CPUs per worker: as configured, else an equal share of the cluster (at most 1) that leaves
    headroom for the controller and data tasks; 2 workers x 1 CPU on 2 CPUs starve everything else."""
    return configured or min(1.0, round(0.95 * cluster_cpus() / num_workers, 2))


def fit(spec: WorkerSpec, metrics: MetricsLog | None, callbacks: list | None = None) -> None:
    """Train ``spec`` on ``spec.train.num_workers`` Ray Train workers; returns when training is done.
    ``metrics``: where rank 0's rows go live (None: only into the checkpoints' history, as in a sweep's
    trial); ``callbacks``: Ray Train callbacks (a sweep passes Tune's, which forwards every report)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lmforge import config as cfgmod

    t = spec.train
    cpus = worker_cpus(t.num_workers, t.cpus_per_worker)
    root = spec.checkpoint_root
    path, fs = storage.ray_storage(root)
    progress = RayProgress(metrics) if metrics is not None else None
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": cfgmod.to_dict(spec), "progress": progress.queue if progress else None},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks),
    )
    log.info("%s: Ray Train, %d workers x %.2f CPU%s, checkpoints in %s/%s", spec.stage, t.num_workers, cpus,
             " + GPU" if t.use_gpu else "", root, RUN_NAME)
    try:
        trainer.fit()
    finally:
        if progress is not None:
            progress.close()


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it has registered


def registered_report(root: str) -> dict | None:
    """What the newest checkpoint Ray Train has *registered* under ``root`` was reported with (step,
    val_loss, loss, stopped_early), or None before the first. Registered means whole: a run killed while
    uploading a checkpoint leaves its dir behind, partly written, and Ray Train resumes from the last
    registered one, not from that dir."""
    fs, path = storage.filesystem(f"{root}/{RUN_NAME}/{SNAPSHOT}")
    try:
        with fs.open_input_stream(path) as f:
            snapshot = json.loads(f.read())
    except FileNotFoundError:
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return latest.get("metrics") or None
