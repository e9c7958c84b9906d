"""Packing: exact row lengths, no lost tokens, pads only at the tail; stable split by document."""

import numpy as np

from lmforge.data import packing


def test_rows_are_exactly_seq_len_and_keep_every_token():
    docs = [[1, 10, 11, 12], [1, 20], [1, 30, 31, 32, 33, 34]]  # 15 ids with eos
    out = packing.pack(docs, seq_len=4, eos_id=2, pad_id=0)
    assert out["input_ids"].shape == (4, 4)
    stream = [t for d in docs for t in (*d, 2)]
    flat = out["input_ids"].reshape(-1)
    assert list(flat[: len(stream)]) == stream and set(flat[len(stream):]) == {0}
    assert out["n_tokens"].sum() == len(stream) and list(out["n_tokens"]) == [4, 4, 4, 3]


def test_empty_input_gives_no_rows():
    out = packing.pack([], seq_len=8, eos_id=2, pad_id=0)
    assert out["input_ids"].shape == (0, 8) and out["n_tokens"].size == 0


def test_split_is_stable_and_near_the_fraction():
    ids = [f"doc-{i}" for i in range(20000)]
    splits = [packing.split_of(i, 0.1) for i in ids]
    assert splits == [packing.split_of(i, 0.1) for i in ids]
    assert abs(np.mean([s == "val" for s in splits]) - 0.1) < 0.01
    assert all(packing.split_of(i, 0.0) == "train" for i in ids[:100])


def test_finalize_batch_writes_every_output_and_counts_each_record_once(tmp_path):
    """The last pass of prepare on one ledger batch: duplicates marked, kept text tokenized, every record
    in exactly one of documents/ or rejected/, and the returned counts match the files."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.data import outputs
    from lmforge.data.curate import PII_COLUMNS
    from lmforge.data.tokenizer import special_ids, train_bpe

    texts = [f"Document {i} talks about rivers and 강물 number {i}." for i in range(40)]
    rows = [{"id": f"d{i}", "source": "a.jsonl", "order": 100 + i, "text": t, "reason": "", "raw": b""}
            for i, t in enumerate(texts)]
    rows[3].update(reason="quality:word_count")
    rows[4].update(text="", reason="quarantine:invalid_json", raw=b"{broken")
    example = json.dumps([["EMAIL", "…write to <EMAIL aaa@aaa.aa> today…"]])
    batch = pa.Table.from_pylist([{**r, **{c: int(c == "pii_EMAIL" and i == 7) for c in PII_COLUMNS},
                                   "pii_examples": example if i == 7 else "",
                                   "canaries": "canary-1,canary-2" if i in (8, 9) else "",
                                   "language": "en", "language_score": 0.9} for i, r in enumerate(rows)])
    marks = {105: ("near_duplicate", "d6")}
    tok = train_bpe(texts, 300)
    for sub in outputs.OUTPUT_DIRS:
        (tmp_path / sub).mkdir()
    out = outputs.finalize_batch(batch, marks, tok.to_str(), special_ids(tok), seq_len=16, val_fraction=0.3,
                                 out=str(tmp_path))
    stats = json.loads(out.column("stats")[0].as_py())

    assert stats["reasons"] == {"": 37, "quality:word_count": 1, "quarantine:invalid_json": 1, "near_duplicate": 1}
    assert stats["pii"]["EMAIL"] == 1 and sum(stats["lengths"]) == 37
    assert stats["pii_examples"] == {"EMAIL": ["…write to <EMAIL aaa@aaa.aa> today…"]}
    assert stats["canaries"] == {"canary-1": ["d8", "d9"], "canary-2": ["d8", "d9"]}  # kept documents only
    assert stats["languages"] == {"input": {"en": 40}, "kept": {"en": 37}}
    assert stats["bias"]["words"] == sum(len(t.split()) for t in texts) - 3 * 9  # the kept documents' words
    docs = pq.read_table(tmp_path / "documents").to_pylist()
    rejected = {r["id"]: r for r in pq.read_table(tmp_path / "rejected").to_pylist()}
    assert len(docs) == 37 and set(rejected) == {"d3", "d4", "d5"}
    assert rejected["d5"]["duplicate_of"] == "d6" and rejected["d4"]["raw"] == b"{broken"
    assert not {d["id"] for d in docs} & set(rejected)
    for split in ("train", "val"):
        table = pq.read_table(tmp_path / split)
        assert table.num_rows == stats["tokens"][split]["rows"] > 0
        assert sum(table.column("n_tokens").to_pylist()) == stats["tokens"][split]["tokens"]
    assert [p.name for p in (tmp_path / "train").iterdir()] == [f"part-{100:016x}.parquet"]  # named by batch


def test_ledger_schema_matches_curated_records():
    from lmforge.data import curate, sources
    from lmforge.data.config import PrepareConfig
    from lmforge.data.curate import curate_all

    cfg = PrepareConfig(inputs=["a"], output="o")
    records = curate_all([sources.record("a", "s.jsonl", 1, "The river flows past the old mill and the town."),
                          sources.record("b", "s.jsonl", 2, reason="quarantine:invalid_json", raw=b"{")], cfg)
    assert all(set(r) == set(curate.LEDGER_SCHEMA.names) for r in records)
