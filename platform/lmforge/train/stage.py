"""The ``pretrain`` stage's entry (the contract: :mod:`lmforge.stages`): train a Llama-style model on
``prepare``'s packed rows with Ray Train.

Run: ``lmforge pretrain jobs/pretrain.yaml data=runs/data output=runs/model train.num_workers=2``.

The run (:func:`lmforge.train.launch.run_training`, shared by every stage that trains): open
``<output>.partial/`` (an interrupted run's, or the finished output's when its checkpoints should carry
over, with ``train.resume=auto``); describe the job to the workers as token rows and a model
(:func:`worker_spec`); train on Ray Train or in this process with ``train.num_workers=0``, with
``metrics.jsonl`` growing as it goes; write the best checkpoint's model, the metrics, loss plot and
summary; publish the dir as ``output``.
"""

from __future__ import annotations

from lmforge import storage
from lmforge.report import Section
from lmforge.stages import Input
from lmforge.train.config import PretrainConfig as Config
from lmforge.train.config import WorkerSpec

SUMMARY = "train a Llama-style model on prepared shards (Ray Train: DDP or FSDP2, checkpoints, resume)"
INPUTS = (Input("data", (("prepare", ""),)), Input("tuned_by"))


def run(cfg: Config):
    """Run (or resume) the pretrain stage; returns the output dir. A finished identical run is skipped."""
    from lmforge.train.launch import run_training

    return run_training("pretrain", cfg)


def check_inputs(cfg: Config) -> None:
    """A wrong data dir fails here, with a clear message, before anything starts; so does continuing a
    model (``model.init_from``) on rows of another tokenizer, which would train without an error on ids
    that mean other tokens to it."""
    from lmforge.data import manifest as prepared
    from lmforge.model import vocabulary

    prepared.read(cfg.data)
    if cfg.model.init_from:
        vocabulary.check_same(storage.local_dir(storage.join(storage.absolute(cfg.data), "tokenizer")),
                              storage.local_dir(storage.absolute(cfg.model.init_from)), key="model.init_from",
                              role="data", why="the rows are token ids of the data's tokenizer; prepare the corpus "
                              f"with tokenizer.from_model={cfg.model.init_from} to continue this model's pretraining")


def training_context(cfg: Config, partial, root: str, reuse: bool = False) -> dict:
    """What the run (every trial of a sweep) shares: the prepared data, where workers reach it, and its
    manifest."""
    from lmforge.data import manifest as prepared

    data = storage.absolute(cfg.data)
    return {"data": data, "manifest": prepared.read(data)}


def worker_spec(cfg: Config, context: dict, checkpoint_root: str) -> WorkerSpec:
    """The job as workers get it: prepare's rows and tokenizer, a preset sized to them (or an HF dir);
    remote dirs stay URIs (each worker mirrors them on its own node)."""
    data, manifest, init_from = context["data"], context["manifest"], cfg.model.init_from
    return WorkerSpec(
        train_rows=storage.join(data, "train"), val_rows=storage.join(data, "val"), seq_len=manifest["seq_len"],
        pad_id=manifest["special_tokens"]["pad"], tokenizer=storage.join(data, "tokenizer"),
        init_from=storage.absolute(init_from) if init_from else None,
        preset=cfg.model.preset, model_overrides=cfg.model.overrides(), vocab_size=manifest["vocab_size"],
        special_tokens=manifest["special_tokens"],
        train=cfg.train, checkpoint_root=checkpoint_root, stage="pretrain")


def report(cfg: Config | None, result: dict) -> list[Section]:
    from lmforge.train.report import training_section

    return [training_section("Pretraining", "pretrain", cfg)]
