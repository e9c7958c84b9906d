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
