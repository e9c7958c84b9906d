"""The ``finetune`` stage's entry (the contract: :mod:`lmforge.stages`): supervised fine-tuning of an HF
model on prompt/response or chat data.

Run: ``lmforge finetune jobs/finetune_xsum.yaml`` or
``lmforge finetune data=train.jsonl model.init_from=runs/smollm2 output=runs/tuned finetune.method=lora``.

The run (:func:`lmforge.train.launch.run_training`, shared with pretraining): read and check the
examples (every bad row reported with its line number, before anything trains); render them with the
model's chat template and mask everything but the answers (:mod:`.data`); hand the training worker
token rows with that mask, the base model and LoRA settings (the worker, checkpoints, resume, live
metrics and early stopping are pretraining's); write the best checkpoint's model and the run's metrics;
merge a LoRA adapter into ``model/`` (:mod:`lmforge.model.lora`), keeping ``adapter/``; publish.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.finetune.config import FinetuneConfig as Config
from lmforge.report import Section
from lmforge.stages import Input
from lmforge.train.config import WorkerSpec

log = logging.getLogger(__name__)

SUMMARY = "supervised fine-tuning (LoRA or full) on prompt/response or chat data, on Ray Train"
INPUTS = (Input("model.init_from", (("pretrain", "model"), ("import", ""))), Input("tuned_by"))
# keys a sweep cannot vary: the training rows are rendered from them once for every trial
SHARED_BY_TRIALS = ("data", "val_data", "model.init_from", "finetune.max_seq_len", "finetune.val_fraction",
                    "finetune.max_examples")


def run(cfg: Config):
    from lmforge.train.launch import run_training

    return run_training("finetune", cfg)


def check_inputs(cfg: Config) -> None:
    """The base model and every example, checked (each bad row reported with its line number) before
    anything is written."""
    from lmforge.finetune import data

    base_dir(cfg.model.init_from)
    data.load_examples(cfg.data, cfg.val_data, cfg.finetune.val_fraction, cfg.finetune.max_examples)


def training_context(cfg: Config, partial: Path, root: str, reuse: bool = False) -> dict:
    """What the run (every trial of a sweep) shares: the base model and the rendered rows, made in
    ``partial/data`` (a resumed sweep, ``reuse``, keeps the rows its trials trained on; a run renders
    them anew, from the data as it is now) and shared where workers on any node reach them (under a
    remote ``root``)."""
    from lmforge.finetune import data
    from lmforge.outputs import share_dir

    base = base_dir(cfg.model.init_from)
    rows = partial / "data"
    if not (reuse and (rows / "counts.json").is_file()):
        train, val = data.load_examples(cfg.data, cfg.val_data, cfg.finetune.val_fraction, cfg.finetune.max_examples)
        write_rows(cfg, base, train, val, rows)
    return {"base": base, "rows": share_dir(rows, root)}


def worker_spec(cfg: Config, context: dict, checkpoint_root: str) -> WorkerSpec:
    """The job as workers get it: the rendered rows, the base model, LoRA settings (an ``s3://`` base or
    rows stay URIs: each worker mirrors them on its own node)."""
    base = storage.remote_or(cfg.model.init_from, context["base"])
    rows = context["rows"]
    return WorkerSpec(
        train_rows=storage.join(rows, "train"), val_rows=storage.join(rows, "val"),
        seq_len=cfg.finetune.max_seq_len, pad_id=None,  # the loss mask covers padding (pad may be eos)
        tokenizer=base, init_from=base, train=cfg.train, checkpoint_root=checkpoint_root, stage="finetune",
        lora=cfgmod.to_dict(cfg.finetune.lora) if cfg.finetune.method == "lora" else None)


def finish(cfg: Config, partial: Path, context: dict) -> None:
    """A LoRA run's best adapter merged into ``model/`` (the adapter kept in ``adapter/``)."""
    if cfg.finetune.method == "lora":
        from lmforge.model import lora

        lora.merge(partial, context["base"])


def write_rows(cfg: Config, base: str, train: list, val: list, out: Path) -> Path:
    """The examples rendered with the base model's chat template as token rows with a loss mask, in
    ``out/train`` and ``out/val`` (with ``counts.json``); returns ``out``, absolute."""
    from transformers import AutoTokenizer

    from lmforge.finetune import data

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


def base_dir(init_from: str) -> str:
    path = Path(storage.local_dir(init_from))  # an s3:// model: this node's mirror of it
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.init_from: {init_from} is not an HF model dir (no config.json)")
    return str(path.resolve())


def report(cfg: Config | None, result: dict) -> list[Section]:
    from lmforge.train.report import training_section

    return [training_section("Fine-tuning", "finetune", cfg)]
