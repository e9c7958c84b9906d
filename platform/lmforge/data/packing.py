"""Packing token streams into fixed-length rows, and the train/val split. Pure Python, numpy, pyarrow.

Documents are concatenated (each ``<bos> ... <eos>``) and cut into rows of exactly ``seq_len`` ids; the
last, partial row of a batch is filled with ``<pad>``, which training masks out of the loss, so no
token is thrown away. ``n_tokens`` counts the real (non-pad) ids of each row.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def pack(token_lists: Sequence[Sequence[int]], seq_len: int, eos_id: int, pad_id: int) -> dict:
    """Concatenate documents with ``eos`` after each and cut into ``seq_len`` rows."""
    total = sum(len(ids) + 1 for ids in token_lists)
    if not total:
        return {"input_ids": np.zeros((0, seq_len), np.int32), "n_tokens": np.zeros(0, np.int32)}
    stream = np.fromiter(itertools.chain.from_iterable(itertools.chain(ids, (eos_id,)) for ids in token_lists),
                         dtype=np.int32, count=total)
    n_rows = -(-len(stream) // seq_len)
    rows = np.full(n_rows * seq_len, pad_id, dtype=np.int32)
    rows[: len(stream)] = stream
    n_tokens = np.full(n_rows, seq_len, dtype=np.int32)
    n_tokens[-1] = len(stream) - (n_rows - 1) * seq_len
    return {"input_ids": rows.reshape(n_rows, seq_len), "n_tokens": n_tokens}


def split_of(doc_id: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` from a stable hash of the document id (order- and shard-independent)."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if h / 2**64 < val_fraction else "train"


PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("n_tokens", pa.int32())])


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def tokenize_and_pack(texts: list[str], ids: list[str], tokenizer_json: str, seq_len: int,
                      val_fraction: float, eos: int, pad: int) -> dict[str, pa.Table]:
    """Documents -> packed ``input_ids`` rows per split (``train``, ``val``), ``eos`` after each document,
    ``pad`` filling the last row; a row never mixes documents of both splits, and a document's split
    depends only on its id."""
    tok = _tokenizer(tokenizer_json)
    # encode_batch_fast skips the character offsets, which packing never uses.
    encodings = tok.encode_batch_fast(texts) if texts else []
    splits = [split_of(i, val_fraction) for i in ids]
    tables = {}
    for split in ("train", "val"):
        packed = pack([e.ids for e, s in zip(encodings, splits) if s == split], seq_len, eos, pad)
        flat = pa.array(packed["input_ids"].reshape(-1), pa.int32())
        offsets = pa.array(np.arange(0, len(flat) + 1, seq_len, dtype=np.int32))
        tables[split] = pa.table([pa.ListArray.from_arrays(offsets, flat), pa.array(packed["n_tokens"], pa.int32())],
                                 schema=PACKED_SCHEMA)
    return tables
