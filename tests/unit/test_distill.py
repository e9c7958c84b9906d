"""Distillation's pure parts: the KL term at a temperature (whole vocabulary and top-k) and the student
made from every k-th teacher layer."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.config import ConfigError
from lmforge.distill import data
from lmforge.distill.config import StudentConfig
from lmforge.distill.loss import kl_term


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(x: list[float]) -> list[float]:
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_kl_term_is_t_squared_times_the_mean_kl_of_the_softened_distributions():
    s, t = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]]), torch.tensor([[2.0, 0.0, 1.0, 0.5],
                                                                                     [1.0, -1.0, 2.0, 0.0]])
    for temperature in (1.0, 2.0):
        want = sum(_kl(_softmax((tr / temperature).tolist()), _softmax((sr / temperature).tolist()))
                   for sr, tr in zip(s, t)) / 2 * temperature**2
        assert kl_term(s, t, temperature) == pytest.approx(want, rel=1e-5)
    # top 2 of the teacher's: both renormalised over those tokens (row 0: ids 0, 2; row 1: ids 2, 0)
    want = (_kl(_softmax([2.0, 1.0]), _softmax([1.0, 0.5])) + _kl(_softmax([2.0, 1.0]), _softmax([3.0, 0.0]))) / 2
    assert kl_term(s, t, 1.0, top_k=2) == pytest.approx(want, rel=1e-5)
    assert kl_term(t, t, 1.5) == pytest.approx(0.0, abs=1e-6)


def test_a_student_of_every_kth_layer_holds_those_teacher_layers_and_runs(hf_dir, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert teacher.config.num_hidden_layers == 2
    kept = data.layer_copy(str(hf_dir), 1, tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert kept == [0] and student.config.num_hidden_layers == 1
    for name, weight in student.state_dict().items():
        assert torch.equal(weight, teacher.state_dict()[name]), name  # layer 0, embeddings, norm, head
    assert student(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, teacher.config.vocab_size)
    with pytest.raises(ValueError, match="not fewer than the teacher's 2 layers"):
        data.layer_copy(str(hf_dir), 2, tmp_path / "same")
    with pytest.raises(ConfigError, match="exactly one of layers, init_from, preset"):
        StudentConfig(layers=1, preset="tiny")
