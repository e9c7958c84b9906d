"""Where a training stage's workers run: Ray Train, or this process alone with ``train.num_workers=0``.
Pretraining and fine-tuning call the same two functions."""

from __future__ import annotations

from pathlib import Path

from lmforge import config as cfgmod
from lmforge.cluster.config import RayConfig
from lmforge.train.config import WorkerSpec
from lmforge.train.progress import MetricsLog


def checkpoint_root(configured: str | None, default: Path | str) -> str:
    """``train.checkpoint_dir`` (local or ``s3://``), else ``default`` (the stage's output dir, or the
    remote output itself); local paths absolute."""
    root = configured or str(default)
    return root if root.startswith("s3://") else str(Path(root).resolve())


def launch(spec: WorkerSpec, metrics: MetricsLog, ray: RayConfig) -> None:
    """Train ``spec`` to the end, its metrics rows going to ``metrics``."""
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
