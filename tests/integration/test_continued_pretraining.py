"""Continued pretraining of an existing model on a new corpus: ``prepare tokenizer.from_model=<model>``
packs the corpus with that model's own tokenizer, and ``pretrain model.init_from=<model>`` continues from
its weights; rows of another tokenizer are refused before anything is written (they would train without
an error on ids that mean other tokens to the model)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from lmforge import config as cfgmod
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from lmforge.data.packing import split_of
from lmforge.train import stage as pretrain
from lmforge.train.config import PretrainConfig
from tests.conftest import make_learned_model

pytestmark = pytest.mark.integration

TRAIN = ["train.num_workers=0", "train.max_steps=20", "train.eval_every=10", "train.checkpoint_every=20",
         "train.log_every=10", "train.micro_batch_size=8", "train.lr=0.003", "train.warmup_steps=2"]


def _val_losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def test_a_corpus_packed_with_a_models_tokenizer_continues_that_models_pretraining(ray_cluster, corpus_dir,
                                                                                   small_data, tmp_path):
    """The rows are the model's token ids (the first training document, encoded by the model's tokenizer,
    opens the first row and ends with its eos); continuing the model on them starts from what it knows
    (held-out loss far below a fresh model's after the same steps); the trained model carries the model's
    tokenizer. A prepare output with its own BPE tokenizer is refused for that model, naming both."""
    model = make_learned_model(tmp_path / "model")
    data = prepare.run(cfgmod.load(PrepareConfig, None, [
        f"inputs=[{corpus_dir}]", f"output={tmp_path / 'data'}", f"tokenizer.from_model={model}",
        "pack.seq_len=64", "pack.val_fraction=0.1"]))
    manifest = json.loads((data / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(model)
    assert manifest["tokenizer_from"] == str(model) and manifest["vocab_size"] == len(tok)
    assert manifest["special_tokens"]["eos"] == tok.eos_token_id
    docs = [d for d in pq.read_table(data / "documents").to_pylist() if split_of(d["id"], 0.1) == "train"]
    first = tok(docs[0]["text"]).input_ids
    row = pq.read_table(data / "train").column("input_ids")[0].as_py()
    assert row[: len(first) + 1] == (first + [tok.eos_token_id])[:64]
    assert AutoTokenizer.from_pretrained(data / "tokenizer").get_vocab() == tok.get_vocab()

    continued = pretrain.run(cfgmod.load(PretrainConfig, None, [
        f"data={data}", f"output={tmp_path / 'continued'}", f"model.init_from={model}", *TRAIN]))
    fresh = pretrain.run(cfgmod.load(PretrainConfig, None, [
        f"data={data}", f"output={tmp_path / 'fresh'}", "model.preset=tiny", *TRAIN]))
    assert _val_losses(continued)[10] < _val_losses(fresh)[10] - 0.5, (_val_losses(continued), _val_losses(fresh))
    assert AutoTokenizer.from_pretrained(continued / "model").get_vocab() == tok.get_vocab()

    refused = tmp_path / "refused"
    with pytest.raises(ValueError, match=r"model.init_from: .*'s tokenizer \(500 tokens\) is not the data's "
                                         r"\(.*, 1024 tokens\).*tokenizer.from_model="):
        pretrain.run(cfgmod.load(PretrainConfig, None, [
            f"data={small_data}", f"output={refused}", f"model.init_from={model}", *TRAIN]))
    assert not refused.exists() and not refused.with_name("refused.partial").exists()
