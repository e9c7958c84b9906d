"""``lmforge pretrain``: train a Llama-style model on ``prepare``'s packed rows with Ray Train.

Run: ``lmforge pretrain jobs/pretrain.yaml data=runs/data output=runs/model train.num_workers=2``.

The run, step by step: check the data dir; open ``<output>.partial/`` (an interrupted run's, or the
finished output's when its checkpoints should carry over, with ``train.resume=auto``); describe the job
to the workers as token rows and a model (:class:`~lmforge.train.config.WorkerSpec`); train, on Ray
Train or in this process with ``train.num_workers=0`` (:mod:`.launch`), with
``metrics.jsonl`` growing as it goes (:mod:`.progress`); write the best checkpoint's model, the
metrics, loss plot and summary (:mod:`.results`); publish the dir as ``output``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmforge import stage, storage
from lmforge.data import manifest as prepared
from lmforge.train import checkpoint
from lmforge.train.config import PretrainConfig, WorkerSpec
from lmforge.train.launch import checkpoint_root, launch
from lmforge.train.progress import MetricsLog
from lmforge.train.results import write_results

log = logging.getLogger(__name__)


def run(cfg: PretrainConfig) -> Path:
    """Run (or resume) the pretrain stage; returns the output dir. A finished identical run is skipped."""
    if done := stage.already_done(cfg, "pretrain"):
        return done
    manifest = prepared.read(cfg.data)  # fail early, with a clear message, on a wrong data dir
    # starting over also when what is there was trained from other upstream runs (a re-run prepare)
    fresh = cfg.train.resume == "never" or cfg.force or not stage.resumable(cfg, cfg.output)
    partial = stage.begin(cfg, cfg.output, resume=not fresh)
    # a remote output keeps its checkpoints beside it, where every node reads and writes them
    default_root = cfg.output if storage.is_remote(cfg.output) else partial
    spec = worker_spec(cfg, manifest, checkpoint_root(cfg.train.checkpoint_dir, default_root))
    if fresh:
        checkpoint.wipe(spec.checkpoint_root)
    metrics = MetricsLog(partial, "pretrain", cfg.train.max_steps)
    log.info("pretrain: metrics in %s (tensorboard --logdir %s)", metrics.path, metrics.tb_dir)
    start = time.perf_counter()
    launch(spec, metrics, cfg.ray)
    write_results(partial, spec.checkpoint_root, time.perf_counter() - start, "pretrain")
    return stage.publish(partial, cfg.output)


def worker_spec(cfg: PretrainConfig, manifest: dict, ckpt_root: str) -> WorkerSpec:
    """The job as workers get it: prepare's rows and tokenizer, a preset sized to them (or an HF dir),
    local paths made absolute (workers run in another directory)."""
    data = cfg.data if storage.is_remote(cfg.data) else str(Path(cfg.data).resolve())
    init_from = cfg.model.init_from
    return WorkerSpec(  # remote dirs stay URIs: each worker mirrors them on its own node
        train_rows=storage.join(data, "train"), val_rows=storage.join(data, "val"), seq_len=manifest["seq_len"],
        pad_id=manifest["special_tokens"]["pad"], tokenizer=storage.join(data, "tokenizer"),
        init_from=str(Path(init_from).resolve()) if init_from and "://" not in init_from else init_from,
        preset=cfg.model.preset, model_overrides=cfg.model.overrides(), vocab_size=manifest["vocab_size"],
        special_tokens=manifest["special_tokens"],
        train=cfg.train, checkpoint_root=ckpt_root, stage="pretrain")
