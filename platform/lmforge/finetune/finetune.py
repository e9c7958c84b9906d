"""``lmforge finetune``: supervised fine-tuning of an HF model on prompt/response or chat data.

Run: ``lmforge finetune jobs/finetune_xsum.yaml`` or
``lmforge finetune data=train.jsonl model.init_from=runs/smollm2 output=runs/tuned finetune.method=lora``.

The run, step by step: read and check the examples (every bad row reported with its line number,
before anything trains); render them with the model's chat template and mask everything but the
answers (:mod:`.data`); hand the training worker token rows with that mask, the base model and LoRA
settings (the worker, checkpoints, resume, live metrics and early stopping are pretraining's); write the
best checkpoint's model and the run's metrics; merge a LoRA adapter into ``model/`` (:mod:`.lora`),
keeping ``adapter/``; publish.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lmforge import config as cfgmod
from lmforge import stage, storage
from lmforge.finetune import data, lora
from lmforge.finetune.config import FinetuneConfig
from lmforge.train import checkpoint
from lmforge.train.config import WorkerSpec
from lmforge.train.launch import checkpoint_root, launch
from lmforge.train.progress import MetricsLog
from lmforge.train.results import write_results

log = logging.getLogger(__name__)


def run(cfg: FinetuneConfig) -> Path:
    if done := stage.already_done(cfg, "finetune"):
        return done
    base = base_dir(cfg.model.init_from)
    train, val = data.load_examples(cfg.data, cfg.val_data, cfg.finetune.val_fraction, cfg.finetune.max_examples)
    # starting over also when what is there was trained from other upstream runs (a re-run prepare)
    fresh = cfg.train.resume == "never" or cfg.force or not stage.resumable(cfg, cfg.output)
    partial = stage.begin(cfg, cfg.output, resume=not fresh)
    rows = write_rows(cfg, base, train, val, partial / "data")
    remote = storage.is_remote(cfg.output)
    if remote:  # the rows go to the bucket, where every worker mirrors them from: no shared disk needed
        rows = stage.share_dir(rows, storage.join(cfg.output, "data"))
    # a remote output keeps its checkpoints beside it, where every node reads and writes them
    spec = worker_spec(cfg, base, rows, checkpoint_root(cfg.train.checkpoint_dir, cfg.output if remote else partial))
    if fresh:
        checkpoint.wipe(spec.checkpoint_root)
    metrics = MetricsLog(partial, "finetune", cfg.train.max_steps)
    start = time.perf_counter()
    launch(spec, metrics, cfg.ray)
    write_results(partial, spec.checkpoint_root, time.perf_counter() - start, "finetune")
    if spec.lora is not None:
        lora.merge(partial, base)
    return stage.publish(partial, cfg.output)


def write_rows(cfg: FinetuneConfig, base: str, train: list, val: list, out: Path) -> Path:
    """The examples rendered with the base model's chat template as token rows with a loss mask, in
    ``out/train`` and ``out/val`` (with ``counts.json``); returns ``out``, absolute."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    counts = {}
    for split, examples in (("train", train), ("val", val)):
        formatted = data.format_examples(tokenizer, examples, cfg.finetune.max_seq_len)
        data.write_rows(formatted.rows, out / split)
        counts[split] = {"rows": len(formatted.rows), "truncated": formatted.truncated,
                         "dropped_too_long": formatted.dropped_too_long}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    log.info("finetune: %s", json.dumps(counts))
    return out.resolve()


def worker_spec(cfg: FinetuneConfig, base: str, rows: Path | str, ckpt_root: str) -> WorkerSpec:
    """The job as workers get it: the rendered rows, the base model, LoRA settings (an ``s3://`` base or
    rows stay URIs: each worker mirrors them on its own node)."""
    base = cfg.model.init_from if storage.is_remote(cfg.model.init_from) else base
    return WorkerSpec(
        train_rows=storage.join(str(rows), "train"), val_rows=storage.join(str(rows), "val"),
        seq_len=cfg.finetune.max_seq_len, pad_id=None,  # the loss mask covers padding (pad may be eos)
        tokenizer=base, init_from=base, train=cfg.train, checkpoint_root=ckpt_root, stage="finetune",
        lora=cfgmod.to_dict(cfg.finetune.lora) if cfg.finetune.method == "lora" else None)


def base_dir(init_from: str) -> str:
    path = Path(storage.local_dir(init_from))  # an s3:// model: this node's mirror of it
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.init_from: {init_from} is not an HF model dir (no config.json)")
    return str(path.resolve())
