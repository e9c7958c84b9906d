"""``lmforge prepare``: corpus files -> documents ledger -> tokenizer -> packed train/val shards.

Run: ``lmforge prepare jobs/prepare.yaml inputs=[data/*.jsonl] output=runs/data``.

Ray Data glue. Each file is read by a Ray task (sharded across the cluster) and every record is
curated there (:mod:`lmforge.data.curate`: clean, quality rules, PII, dedup keys) into a ledger row:
kept, dropped with a reason, or quarantined. Exact and near duplicates are found globally
(:mod:`lmforge.data.dedup_ray`); the tokenizer trains on a bounded sample streamed to the driver.
Then one ``map_batches`` pass on the workers marks the duplicates, tokenizes and packs the kept
documents (split train/val by document), writes every output as parquet parts and returns only counts.
Output layout (DESIGN.md): documents/, rejected/, tokenizer/, train/, val/, manifest.json, report.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from lmforge import stage, storage
from lmforge.cluster.session import ray_session
from lmforge.data import dedup_ray, packing, report, sources
from lmforge.data.config import PrepareConfig
from lmforge.data.curate import PII_COLUMNS, curate_all
from lmforge.data.tokenizer import EOS, PAD, to_hf, train_bpe

log = logging.getLogger(__name__)


def run(cfg: PrepareConfig) -> Path:
    """Run the prepare stage; returns the output dir. A finished identical run is skipped."""
    if done := stage.already_done(cfg, "prepare"):
        return done
    files = list_inputs(cfg.inputs)
    log.info("prepare: %d input files", len(files))
    partial = stage.begin(cfg, cfg.output)
    with ray_session(cfg.ray):
        manifest = _run_pipeline(cfg, files, partial)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    out = stage.publish(partial, cfg.output)
    log.info("prepare: %s", json.dumps(manifest["documents"]))
    return out


def list_inputs(inputs: list[str]) -> list[str]:
    """Expand every input (path, dir, glob, pkg://) into files, deduplicated, in a stable order."""
    files: list[str] = []
    for uri in inputs:
        if storage.is_remote(uri) and not uri.startswith("s3://"):
            raise FileNotFoundError(f"input {uri!r}: only local paths, pkg:// and s3:// are supported")
        files.extend(f for f in storage.expand(uri, sources.SUFFIXES) if f not in files)
    return files


def _run_pipeline(cfg: PrepareConfig, files: list[str], out: Path) -> dict:
    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # deterministic
    clock = _Clock()
    ledger = _read_ledger(cfg, files).materialize()
    clock.lap("read + curate")
    marks = dedup_ray.find_duplicates(ledger.filter(expr="reason == ''"), cfg.dedup)
    clock.lap("dedup")
    tok = train_bpe(_sample_texts(ledger, marks, cfg.tokenizer.sample_chars), cfg.tokenizer.vocab_size,
                    cfg.tokenizer.min_frequency)
    to_hf(tok, cfg.pack.seq_len).save_pretrained(str(out / "tokenizer"))
    clock.lap("tokenizer trained")
    stats = _write_outputs(ledger, ray.put(marks), tok.to_str(), cfg, out)
    clock.lap("write + tokenize")
    manifest = _manifest(cfg, files, stats, tok)
    report.plot_lengths(stats["lengths"], out / "doc_lengths.png")
    (out / "report.md").write_text(report.render(manifest))
    return manifest


class _Clock:
    """Logs the seconds each phase took, so a slow step is visible in every run's log."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        log.info("prepare: %-18s %6.1fs", phase, now - self.last)
        self.last = now


def _read_ledger(cfg: PrepareConfig, files: list[str]):
    import ray

    items = [{"path": f, "file_index": i} for i, f in enumerate(files)]
    remote_args = {}
    if any(f.startswith("s3://") for f in files):
        remote_args["runtime_env"] = {"env_vars": storage.aws_env()}
    ds = ray.data.from_items(items, override_num_blocks=len(files))
    return ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"cfg": cfg}, **remote_args)


LEDGER_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("order", pa.int64()),
                          ("text", pa.string()), ("reason", pa.string()), ("raw", pa.binary()),
                          *((c, pa.int64()) for c in PII_COLUMNS), ("exact_key", pa.int64()),
                          ("minhash", pa.binary())])


def _read_files(batch: pa.Table, cfg: PrepareConfig) -> pa.Table:
    """Ray task body: files -> curated ledger rows (kept, dropped with a reason, quarantined), built
    column by column (Ray's row-at-a-time builder cost more than the reading)."""
    records = [rec for path, index in zip(batch.column("path").to_pylist(), batch.column("file_index").to_pylist())
               for rec in curate_all(sources.read_records(path, index, cfg.text_field, cfg.id_field,
                                                          cfg.max_doc_bytes), cfg)]
    return pa.table({f.name: pa.array([r[f.name] for r in records], f.type) for f in LEDGER_SCHEMA},
                    schema=LEDGER_SCHEMA)


def _sample_texts(ledger, marks: dict, max_chars: int):
    """Stream texts that survive dedup to the driver until ``max_chars``: the tokenizer's bounded sample."""
    seen = 0
    kept = ledger.filter(expr="reason == ''").select_columns(["order", "text"])
    for batch in kept.iter_batches(batch_size=1024, batch_format="pyarrow"):
        for order, text in zip(batch.column("order").to_pylist(), batch.column("text").to_pylist()):
            if seen >= max_chars:
                return
            if order not in marks:
                seen += len(text)
                yield text


PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("n_tokens", pa.int32())])
# Every parquet output of the stage: its directory and columns.
OUTPUT_SCHEMAS = {
    "documents": pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string())]),
    "rejected": pa.schema([("id", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string()),
                           ("source", pa.string()), ("raw", pa.binary())]),
    "train": PACKED_SCHEMA,
    "val": PACKED_SCHEMA,
}
OUTPUT_DIRS = tuple(OUTPUT_SCHEMAS)


def _write_outputs(ledger, marks_ref, tokenizer_json: str, cfg: PrepareConfig, out: Path) -> dict:
    """One Ray Data pass over the ledger writes every output (documents/, rejected/, train/, val/) and
    returns the summed per-batch statistics; the driver never holds the corpus."""
    for sub in OUTPUT_DIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    fn_kwargs = dict(marks=marks_ref, tokenizer_json=tokenizer_json, seq_len=cfg.pack.seq_len,
                     val_fraction=cfg.pack.val_fraction, out=str(out))
    stats = ledger.map_batches(finalize_batch, batch_size=cfg.pack.batch_size, batch_format="pyarrow",
                               fn_kwargs=fn_kwargs).take_all()
    total = {"reasons": Counter(), "pii": Counter(), "lengths": np.zeros(len(report.LENGTH_BINS) - 1, np.int64),
             "tokens": {"train": Counter(), "val": Counter()}}
    for row in stats:
        part = json.loads(row["stats"])
        total["reasons"].update(part["reasons"])
        total["pii"].update(part["pii"])
        total["lengths"] += np.array(part["lengths"], np.int64)
        for split in ("train", "val"):
            total["tokens"][split].update(part["tokens"][split])
    _write_empty_parts(out)
    return total


def finalize_batch(batch: pa.Table, marks, tokenizer_json: str, seq_len: int, val_fraction: float,
                   out: str) -> pa.Table:
    """Ray Data batch fn: mark the duplicates dedup chose, write this batch's kept documents, rejected
    rows and packed train/val rows as parquet parts named by the batch's first record, and return its
    counts as one JSON row. Part names are stable, so a re-run writes the same files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not batch.num_rows:
        return pa.table({"stats": pa.array([], pa.string())})
    batch = apply_marks(batch, _marks(marks) if not isinstance(marks, dict) else marks)
    name = f"part-{pc.min(batch.column('order')).as_py():016x}.parquet"
    is_kept = pc.equal(batch.column("reason"), "")
    kept, rejected = batch.filter(is_kept), batch.filter(pc.invert(is_kept))
    texts, ids = kept.column("text").to_pylist(), kept.column("id").to_pylist()
    tables = {"documents": kept.select(OUTPUT_SCHEMAS["documents"].names),
              "rejected": rejected.select(OUTPUT_SCHEMAS["rejected"].names),
              **tokenize_and_pack(texts, ids, tokenizer_json, seq_len, val_fraction)}
    for sub, table in tables.items():
        if table.num_rows:
            pq.write_table(table, f"{out}/{sub}/{name}")
    stats = {
        "reasons": Counter(batch.column("reason").to_pylist()),
        "pii": {c.removeprefix("pii_"): pc.sum(kept.column(c)).as_py() or 0 for c in PII_COLUMNS},
        "lengths": report.length_histogram(np.array([len(t.split()) for t in texts])).tolist(),
        "tokens": {split: {"rows": tables[split].num_rows,
                           "tokens": pc.sum(tables[split].column("n_tokens")).as_py() or 0}
                   for split in ("train", "val")},
    }
    return pa.table({"stats": [json.dumps(stats)]})


def apply_marks(batch: pa.Table, marks: dict) -> pa.Table:
    """Set reason/duplicate_of of the documents dedup chose to drop; add the ``duplicate_of`` column."""
    reasons = batch.column("reason").to_pylist()
    dup_of = [""] * batch.num_rows
    for i, order in enumerate(batch.column("order").to_pylist()):
        if order in marks:
            reasons[i], dup_of[i] = marks[order]
    batch = batch.set_column(batch.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))
    return batch.append_column("duplicate_of", pa.array(dup_of, pa.string()))


def _write_empty_parts(out: Path) -> None:
    """A split or table with no rows still gets one empty part with its schema, so readers work."""
    import pyarrow.parquet as pq

    for sub, schema in OUTPUT_SCHEMAS.items():
        if not any((out / sub).glob("*.parquet")):
            pq.write_table(schema.empty_table(), str(out / sub / "part-empty.parquet"))


@functools.lru_cache(maxsize=2)
def _marks(ref):
    import ray

    return ray.get(ref)


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def tokenize_and_pack(texts: list[str], ids: list[str], tokenizer_json: str, seq_len: int,
                      val_fraction: float) -> dict[str, pa.Table]:
    """Documents -> packed ``input_ids`` rows per split (``train``, ``val``); a row never mixes documents
    of both splits, and a document's split depends only on its id."""
    tok = _tokenizer(tokenizer_json)
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    # encode_batch_fast skips the character offsets, which packing never uses.
    encodings = tok.encode_batch_fast(texts) if texts else []
    splits = [packing.split_of(i, val_fraction) for i in ids]
    tables = {}
    for split in ("train", "val"):
        packed = packing.pack([e.ids for e, s in zip(encodings, splits) if s == split], seq_len, eos, pad)
        flat = pa.array(packed["input_ids"].reshape(-1), pa.int32())
        offsets = pa.array(np.arange(0, len(flat) + 1, seq_len, dtype=np.int32))
        tables[split] = pa.table([pa.ListArray.from_arrays(offsets, flat), pa.array(packed["n_tokens"], pa.int32())],
                                 schema=PACKED_SCHEMA)
    return tables


def _manifest(cfg: PrepareConfig, files: list[str], stats: dict, tok) -> dict:
    counts, tokens = stats["reasons"], stats["tokens"]
    total = sum(counts.values())
    quarantined = sum(n for r, n in counts.items() if r.startswith("quarantine:"))
    dropped = {r: n for r, n in sorted(counts.items()) if r and not r.startswith("quarantine:")}
    return {
        "documents": {"input": total, "kept": counts.get("", 0), "dropped": dropped,
                      "quarantined": quarantined,
                      "quarantine_reasons": {r: n for r, n in sorted(counts.items())
                                             if r.startswith("quarantine:")}},
        "pii": {t: n for t, n in sorted(stats["pii"].items()) if n},
        "tokens": {s: tokens[s]["tokens"] for s in tokens},
        "rows": {s: tokens[s]["rows"] for s in tokens},
        "seq_len": cfg.pack.seq_len,
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": {"pad": tok.token_to_id(PAD), "bos": tok.token_to_id("<bos>"),
                           "eos": tok.token_to_id(EOS)},
        "inputs": files,
        "tokenizer_sha256": hashlib.sha256(tok.to_str().encode()).hexdigest(),
    }
