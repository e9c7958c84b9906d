"""The distillation rows. Pure Python + transformers, no Ray.

Text from a ``prepare`` output (its kept ``documents/``) or corpus files is tokenized with the teacher's
own tokenizer (a prepare output's rows use prepare's tokenizer, which the teacher does not read) and
packed into rows of ``seq_len`` (each document followed by the teacher's end-of-text token), split
train/val by document id as prepare splits; a ``loss_mask`` marks the real tokens, so padding never
counts whatever id it shares. Fine-tuning data (built-in tasks, prompt/response or messages JSONL) is
rendered as ``finetune`` renders it, with the teacher's chat template, one conversation per row and only
the assistant turns in the loss mask: the student learns the teacher's answers, not its prompts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge import storage

log = logging.getLogger(__name__)


def read_texts(data: str | list[str], text_field: str, limit: int | None) -> tuple[list[str], list[str]]:
    """(ids, texts): a prepare output's kept documents, or every readable record of the files."""
    from lmforge.data import manifest, sources

    uris = [data] if isinstance(data, str) else list(data)
    ids, texts = [], []
    for uri in uris:
        local = storage.local_dir(uri) if Path(storage.resolve_local(uri)).is_dir() or uri.startswith("s3://") else uri
        if manifest.is_prepared(local):
            for table in manifest.kept_documents(local, ["id", "text"]):
                ids += table.column("id").to_pylist()
                texts += table.column("text").to_pylist()
            continue
        for i, path in enumerate(sources.list_inputs([uri])):
            for rec in sources.read_records(path, i, text_field):
                if not rec["reason"]:
                    ids.append(rec["id"])
                    texts.append(rec["text"])
    if limit is not None:
        ids, texts = ids[:limit], texts[:limit]
    if not texts:
        raise ValueError(f"data: {data} holds no documents to distil on")
    return ids, texts


def write_rows(tokenizer, ids: list[str], texts: list[str], seq_len: int, val_fraction: float, out: Path) -> dict:
    """``out/train`` and ``out/val`` rows dirs (``input_ids``, ``loss_mask``) and their counts."""
    from lmforge.data.packing import pack, split_of

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False).input_ids
    splits = [split_of(i, val_fraction) for i in ids]
    counts = {}
    for split in ("train", "val"):
        packed = pack([e for e, s in zip(encoded, splits) if s == split], seq_len, eos, pad)
        mask = (np.arange(seq_len)[None, :] < packed["n_tokens"][:, None]).astype(np.int8)
        (out / split).mkdir(parents=True, exist_ok=True)
        table = pa.table({"input_ids": pa.array(list(packed["input_ids"]), pa.list_(pa.int32())),
                          "loss_mask": pa.array(list(mask), pa.list_(pa.int8()))})
        pq.write_table(table, out / split / "part-0.parquet")
        counts[split] = {"documents": splits.count(split), "rows": len(packed["input_ids"]),
                         "tokens": int(packed["n_tokens"].sum())}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts


def is_examples(data: str | list[str], text_field: str) -> bool:
    """Whether ``data`` is fine-tuning data: built-in task names, or JSONL whose first row has ``prompt``
    or ``messages`` and not ``text_field``."""
    from lmforge.tasks.builtin import TASKS

    for uri in [data] if isinstance(data, str) else data:
        if uri in TASKS:
            return True
        path = Path(storage.resolve_local(uri))
        if path.suffix not in (".jsonl", ".json") or not path.is_file():
            continue
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            row = json.loads(first) if first else {}
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and text_field not in row and ("prompt" in row or "messages" in row):
            return True
    return False


def write_example_rows(tokenizer, data: str | list[str], seq_len: int, val_fraction: float, limit: int | None,
                       out: Path) -> dict:
    """``out/train`` and ``out/val`` rows of rendered conversations (the assistant turns masked in), as
    finetune writes them, and their counts."""
    from lmforge.finetune.data import format_examples, load_examples
    from lmforge.finetune.data import write_rows as write_masked_rows

    counts = {}
    for split, examples in zip(("train", "val"), load_examples(data, None, val_fraction, limit)):
        formatted = format_examples(tokenizer, examples, seq_len)
        write_masked_rows(formatted.rows, out / split)
        counts[split] = {"examples": len(examples), "rows": len(formatted.rows),
                         "target_tokens": sum(sum(m) for _, m in formatted.rows),
                         "dropped_too_long": formatted.dropped_too_long}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts
