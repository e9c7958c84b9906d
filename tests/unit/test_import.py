"""``lmforge import`` of an HF model dir (the GGUF path is tests/integration/test_smollm2.py): a plain HF
dir comes out with the same weights and tokenizer, publishes like every stage, and a re-run is skipped."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge import config as cfgmod
from lmforge.model import importer
from lmforge.model.config import ImportConfig


def test_an_hf_dir_imports_with_its_weights_and_tokenizer(hf_dir, tmp_path):
    out = importer.run(cfgmod.from_dict(ImportConfig, {"source": str(hf_dir), "output": str(tmp_path / "m")}))
    assert (out / ".done").is_file() and not (tmp_path / "m.partial").exists()
    ours, theirs = load_file(out / "model.safetensors"), load_file(hf_dir / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    text = "서울은 대한민국의 수도 and the river"
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == AutoTokenizer.from_pretrained(hf_dir)(text).input_ids
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(ids).logits,
                           AutoModelForCausalLM.from_pretrained(hf_dir)(ids).logits)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert importer.run(cfgmod.load(ImportConfig, out / "config.yaml")) == out  # finished: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_missing_source_says_so_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="source: .*nowhere does not exist"):
        importer.run(cfgmod.from_dict(ImportConfig, {"source": str(tmp_path / "nowhere"),
                                                      "output": str(tmp_path / "m")}))
    assert not (tmp_path / "m").exists()
