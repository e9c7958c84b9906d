"""What ``prepare`` writes, batch by batch: kept documents, rejected rows, packed train/val rows.

:func:`finalize_batch` is the body of prepare's one write pass (a Ray Data batch function, plain
pyarrow here): it marks the duplicates the global dedup chose, writes the batch's parquet parts and
returns its counts, which :func:`sum_stats` adds up for the manifest.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa

from lmforge import storage, uploads
from lmforge.data import bias, report
from lmforge.data.curate import PII_COLUMNS
from lmforge.data.packing import PACKED_SCHEMA, tokenize_and_pack

# Every parquet output of the stage: its directory and columns.
OUTPUT_SCHEMAS = {
    "documents": pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                            ("language", pa.string()), ("language_score", pa.float32())]),
    "rejected": pa.schema([("id", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string()),
                           ("source", pa.string()), ("raw", pa.binary()), ("language", pa.string()),
                           ("language_score", pa.float32())]),
    "train": PACKED_SCHEMA,
    "val": PACKED_SCHEMA,
}
OUTPUT_DIRS = tuple(OUTPUT_SCHEMAS)


def finalize_batch(batch: pa.Table, marks: dict, tokenizer_json: str, special_tokens: dict, seq_len: int,
                   val_fraction: float, out: str) -> pa.Table:
    """Mark the duplicates dedup chose, write this batch's kept documents, rejected rows and packed
    train/val rows (``special_tokens``: the tokenizer's pad and eos ids) as parquet parts named by the
    batch's first record, and return its counts as one JSON row. Part names are stable, so a re-run
    writes the same files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not batch.num_rows:
        return pa.table({"stats": pa.array([], pa.string())})
    batch = apply_marks(batch, marks)
    name = f"part-{pc.min(batch.column('order')).as_py():016x}.parquet"
    is_kept = pc.equal(batch.column("reason"), "")
    kept, rejected = batch.filter(is_kept), batch.filter(pc.invert(is_kept))
    texts, ids = kept.column("text").to_pylist(), kept.column("id").to_pylist()
    tables = {"documents": kept.select(OUTPUT_SCHEMAS["documents"].names),
              "rejected": rejected.select(OUTPUT_SCHEMAS["rejected"].names),
              **tokenize_and_pack(texts, ids, tokenizer_json, seq_len, val_fraction, eos=special_tokens["eos"],
                                  pad=special_tokens["pad"])}
    filesystem, root = storage.filesystem(out)  # a local dir, or straight to s3:// (no shared disk needed)
    for sub, table in tables.items():
        if table.num_rows:
            pq.write_table(table, f"{root}/{sub}/{name}", filesystem=filesystem)
    counts = [bias.count(t) for t in texts]
    stats = {
        "bias": {"words": sum(c["words"] for c in counts), "terms": sum((c["terms"] for c in counts), Counter()),
                 "occupations": sum((c["occupations"] for c in counts), Counter())},
        "reasons": Counter(batch.column("reason").to_pylist()),
        "languages": {"input": Counter(batch.column("language").to_pylist()),
                      "kept": Counter(kept.column("language").to_pylist())},
        "pii": {c.removeprefix("pii_"): pc.sum(kept.column(c)).as_py() or 0 for c in PII_COLUMNS},
        "pii_examples": _examples(kept.column("pii_examples").to_pylist()),
        "canaries": _planted(ids, kept.column("canaries").to_pylist()),
        "lengths": report.length_histogram(np.array([len(t.split()) for t in texts])).tolist(),
        "tokens": {split: {"rows": tables[split].num_rows,
                           "tokens": pc.sum(tables[split].column("n_tokens")).as_py() or 0}
                   for split in ("train", "val")},
    }
    return pa.table({"stats": [json.dumps(stats)]})


EXAMPLES_PER_TYPE = 3  # masked redaction examples per PII type in the manifest and report


def _examples(cells: list[str]) -> dict[str, list[str]]:
    """Up to ``EXAMPLES_PER_TYPE`` masked examples per PII type from a batch's kept documents."""
    out: dict[str, list[str]] = {}
    for cell in cells:
        for kind, example in json.loads(cell) if cell else []:
            if len(out.setdefault(kind, [])) < EXAMPLES_PER_TYPE:
                out[kind].append(example)
    return out


def _planted(ids: list[str], cells: list[str]) -> dict[str, list[str]]:
    """``{canary id: ids of the kept documents it is in}`` for a batch."""
    out: dict[str, list[str]] = {}
    for doc_id, cell in zip(ids, cells):
        for canary_id in filter(None, cell.split(",")):
            out.setdefault(canary_id, []).append(doc_id)
    return out


def apply_marks(batch: pa.Table, marks: dict) -> pa.Table:
    """Set reason/duplicate_of of the documents dedup chose to drop; add the ``duplicate_of`` column."""
    reasons = batch.column("reason").to_pylist()
    dup_of = [""] * batch.num_rows
    for i, order in enumerate(batch.column("order").to_pylist()):
        if order in marks:
            reasons[i], dup_of[i] = marks[order]
    batch = batch.set_column(batch.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))
    return batch.append_column("duplicate_of", pa.array(dup_of, pa.string()))


def sum_stats(rows: list[dict]) -> dict:
    """The per-batch JSON counts of :func:`finalize_batch`, added up."""
    total = {"reasons": Counter(), "languages": {"input": Counter(), "kept": Counter()},
             "bias": {"words": 0, "terms": Counter(), "occupations": Counter()},
             "pii": Counter(), "lengths": np.zeros(len(report.LENGTH_BINS) - 1, np.int64),
             "tokens": {"train": Counter(), "val": Counter()}, "pii_examples": {}, "canaries": {}}
    for row in rows:
        part = json.loads(row["stats"])
        total["reasons"].update(part["reasons"])
        for k in ("input", "kept"):
            total["languages"][k].update(part["languages"][k])
        total["bias"]["words"] += part["bias"]["words"]
        for k in ("terms", "occupations"):
            total["bias"][k].update(part["bias"][k])
        total["pii"].update(part["pii"])
        for canary_id, docs in part["canaries"].items():
            total["canaries"].setdefault(canary_id, []).extend(docs)
        for kind, examples in part["pii_examples"].items():
            kept = total["pii_examples"].setdefault(kind, [])
            kept += examples[: EXAMPLES_PER_TYPE - len(kept)]
        total["lengths"] += np.array(part["lengths"], np.int64)
        for split in ("train", "val"):
            total["tokens"][split].update(part["tokens"][split])
    return total


def make_dirs(out: str) -> None:
    for sub in OUTPUT_DIRS:
        uploads.ensure_dir(storage.join(out, sub))


def write_empty_parts(out: str) -> None:
    """A split or table with no rows still gets one empty part with its schema, so readers work."""
    import pyarrow.parquet as pq

    filesystem, root = storage.filesystem(out)
    for sub, schema in OUTPUT_SCHEMAS.items():
        if not storage.list_files(storage.join(out, sub), ".parquet"):
            pq.write_table(schema.empty_table(), f"{root}/{sub}/part-empty.parquet", filesystem=filesystem)
