"""The ``distill`` stage's entry (the contract: :mod:`lmforge.stages`): a smaller student trained on Ray
Train to match a teacher's next-token distribution (:mod:`.loss`), on text tokenized with the teacher's
tokenizer (:mod:`.data`).

Run: ``lmforge run jobs/distill_smollm2.yaml`` (import, distill, eval, export, serve) or
``lmforge distill teacher=runs/smollm2 student.layers=15 data=runs/data output=runs/distilled``.

The run (:func:`lmforge.train.launch.run_training`, shared with pretraining and fine-tuning, so
checkpoints local or ``s3://``, resume, fault tolerance, early stopping and live metrics are theirs):
check the student's tokenizer is the teacher's; pack the text (or render the fine-tuning examples) into
rows; build the student (every k-th teacher layer and/or a narrower MLP, a preset, or an HF dir); train
with the teacher in the workers; write the best checkpoint's model and ``distill.json``: teacher vs
student on the held-out rows (parameters, perplexity, top-1 agreement, decode speed); publish.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge import storage
from lmforge.distill.config import DistillConfig as Config
from lmforge.report import Section
from lmforge.stages import Input
from lmforge.train.config import WorkerSpec

log = logging.getLogger(__name__)

SUMMARY = "distil a teacher into a smaller student (KL at a temperature + cross-entropy) on Ray Train"
_MODEL = (("finetune", "model"), ("pretrain", "model"), ("import", ""))  # the latest model the recipe makes
# a student's init_from is recorded, never wired: a recipe's models are teachers unless the section says
INPUTS = (Input("teacher", _MODEL), Input("student.init_from"), Input("data", (("prepare", ""),)), Input("tuned_by"))
# the rows and the student's starting point are made once for every trial of a sweep
SHARED_BY_TRIALS = ("teacher", "student.layers", "student.intermediate_size", "student.init_from", "student.preset",
                    "data", "text_field", "data_format",
                    "distill.seq_len", "distill.val_fraction", "distill.max_documents")


def run(cfg: Config):
    from lmforge.train.launch import run_training

    return run_training("distill", cfg)


def check_inputs(cfg: Config) -> None:
    """The teacher is a model, and a given student reads the teacher's tokens, before anything is written."""
    from lmforge.model import vocabulary

    teacher = _model_dir(cfg.teacher, "teacher")
    if cfg.student.init_from:
        student = _model_dir(cfg.student.init_from, "student.init_from")
        vocabulary.check_same(teacher, student, key="student.init_from", role="teacher",
                              why="distillation compares distributions over the same token ids")


def training_context(cfg: Config, partial: Path, root: str, reuse: bool = False) -> dict:
    """The packed rows (``partial/data``) and the student's starting point (``partial/student``; a
    narrower MLP is ranked on the training rows), made once (kept by a resumed run) and shared where
    workers on any node reach them."""
    from transformers import AutoTokenizer

    from lmforge.outputs import share_dir

    teacher = _model_dir(cfg.teacher, "teacher")
    student, rows = partial / "student", partial / "data"
    if not (reuse and (rows / "counts.json").is_file()):
        counts = _write_rows(cfg, AutoTokenizer.from_pretrained(teacher), rows)
        log.info("distill: %s", json.dumps(counts))
    if not (reuse and (student / "config.json").is_file()):
        _make_student(cfg, teacher, rows / "train", student)
    if cfg.student.init_from:
        student_uri = storage.remote_or(cfg.student.init_from, _model_dir(cfg.student.init_from, "student.init_from"))
    else:
        student_uri = share_dir(student, root)
    return {"teacher": teacher, "student": student_uri, "rows": share_dir(rows, root)}


def _write_rows(cfg: Config, tokenizer, out: Path) -> dict:
    from lmforge.distill import data

    opts = cfg.distill
    examples = cfg.data_format == "examples" or (cfg.data_format == "auto" and data.is_examples(cfg.data,
                                                                                                 cfg.text_field))
    if examples:
        return data.write_example_rows(tokenizer, cfg.data, opts.seq_len, opts.val_fraction, opts.max_documents,
                                       out)
    ids, texts = data.read_texts(cfg.data, cfg.text_field, opts.max_documents)
    return data.write_rows(tokenizer, ids, texts, opts.seq_len, opts.val_fraction, out)


def _make_student(cfg: Config, teacher: str, train_rows: Path, out: Path) -> None:
    from lmforge.distill import student
    from lmforge.train.data import load_rows

    if cfg.student.resized:
        calibration = load_rows(train_rows)[:student.CALIBRATION_ROWS] if cfg.student.intermediate_size else None
        kept = student.resized_copy(
            teacher, out, layers=cfg.student.layers, intermediate_size=cfg.student.intermediate_size,
            calibration=calibration.input_ids if calibration is not None else None,
            mask=calibration.loss_mask if calibration is not None else None)
        log.info("distill: student = teacher with %s", kept)
    elif cfg.student.preset:
        student.preset_student(teacher, cfg.student.preset, out)


def worker_spec(cfg: Config, context: dict, checkpoint_root: str) -> WorkerSpec:
    rows = context["rows"]
    return WorkerSpec(
        train_rows=storage.join(rows, "train"), val_rows=storage.join(rows, "val"), seq_len=cfg.distill.seq_len,
        pad_id=None,  # the loss mask covers padding
        tokenizer=context["student"], init_from=context["student"], train=cfg.train, checkpoint_root=checkpoint_root,
        stage="distill", loss="lmforge.distill.loss:make_loss",
        loss_args={"teacher": storage.remote_or(cfg.teacher, context["teacher"]), "alpha": cfg.distill.alpha,
                   "temperature": cfg.distill.temperature, "top_k": cfg.distill.top_k})


def finish(cfg: Config, partial: Path, context: dict) -> None:
    """``distill.json``: teacher and student on the held-out rows."""
    from lmforge.distill import compare

    figures = compare.teacher_and_student(context["teacher"], str(partial / "model"),
                                          Path(storage.local_dir(context["rows"])) / "val")
    (partial / "distill.json").write_text(json.dumps(figures, indent=2))
    log.info("distill: %s", json.dumps(figures))


def _model_dir(uri: str, key: str) -> str:
    path = Path(storage.local_dir(uri))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{key}: {uri} is not an HF model dir (no config.json)")
    return str(path.resolve())


def report(cfg: Config | None, result: dict) -> list[Section]:
    from lmforge.report import read_json
    from lmforge.train.report import training_section

    section = training_section("Distillation", "distill", cfg)
    figures = read_json(cfg.output, "distill.json") if cfg else None
    if figures:
        labels = {"params": "parameters", "layers": "layers", "intermediate_size": "MLP width",
                  "perplexity": "perplexity", "decode_tokens_per_s": "decode tokens/s (PyTorch fp32, batch 1)"}
        rows = [[label, figures["teacher"].get(k), figures["student"].get(k)] for k, label in labels.items()]
        rows.append(["top-1 agreement with the teacher", 1.0, figures["student"]["top1_agreement"]])
        section.tables.append((["held-out rows", "teacher", "student"], rows))
    return [section]
