"""``lmforge prepare``: corpus files -> documents ledger -> tokenizer -> packed train/val shards.

Run: ``lmforge prepare jobs/prepare.yaml inputs=[data/*.jsonl] output=runs/data``.

Ray Data glue. Each file is read by a Ray task (sharded across the cluster) and every record is
curated there (:mod:`lmforge.data.curate`: clean, quality rules, PII, dedup keys) into a ledger row:
kept, dropped with a reason, or quarantined. Exact and near duplicates are found globally
(:mod:`lmforge.data.dedup_ray`); the tokenizer trains on a bounded sample streamed to the driver;
tokenization and packing run in ``map_batches`` on the workers, split train/val by document.
Output layout (DESIGN.md): documents/, rejected/, tokenizer/, train/, val/, manifest.json, report.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
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
    marks_ref = ray.put(marks)
    ledger = ledger.map_batches(_apply_marks, batch_format="pyarrow", fn_kwargs={"marks": marks_ref})
    ledger = ledger.drop_columns(["exact_key", "minhash"]).materialize()
    counts = _reason_counts(ledger)
    kept = ledger.filter(expr="reason == ''").materialize()
    kept.select_columns(["id", "source", "text"]).write_parquet(str(out / "documents"))
    _write_rejected(ledger, out / "rejected")
    pii_counts = _pii_counts(kept)
    clock.lap("ledger written")

    tok = train_bpe(_sample_texts(kept, cfg.tokenizer.sample_chars), cfg.tokenizer.vocab_size,
                    cfg.tokenizer.min_frequency)
    to_hf(tok, cfg.pack.seq_len).save_pretrained(str(out / "tokenizer"))
    clock.lap("tokenizer trained")
    tokens = _pack_splits(kept, tok.to_str(), cfg, out)
    clock.lap("tokenize + pack")
    manifest = _manifest(cfg, files, counts, pii_counts, tokens, tok)
    report.plot_lengths(_length_histogram(kept), out / "doc_lengths.png")
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
    return ds.flat_map(_read_file, fn_kwargs={"cfg": cfg}, **remote_args)


def _read_file(row: dict, cfg: PrepareConfig) -> list[dict]:
    """Ray task body: one file -> curated ledger records (kept, dropped with a reason, quarantined)."""
    records = sources.read_records(row["path"], row["file_index"], cfg.text_field, cfg.id_field,
                                   cfg.max_doc_bytes)
    return curate_all(records, cfg)


def _apply_marks(batch: pa.Table, marks) -> pa.Table:
    """Set reason/duplicate_of of the documents dedup chose to drop."""
    import ray

    marks = _marks(marks) if isinstance(marks, ray.ObjectRef) else marks
    reasons = batch.column("reason").to_pylist()
    dup_of = [""] * batch.num_rows
    for i, order in enumerate(batch.column("order").to_pylist()):
        if order in marks:
            reasons[i], dup_of[i] = marks[order]
    batch = batch.set_column(batch.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))
    return batch.append_column("duplicate_of", pa.array(dup_of, pa.string()))


@functools.lru_cache(maxsize=2)
def _marks(ref):
    import ray

    return ray.get(ref)


def _reason_counts(ledger) -> dict[str, int]:
    rows = ledger.groupby("reason", num_partitions=dedup_ray.partitions()).count().take_all()
    return {r["reason"]: int(r["count()"]) for r in rows}


def _pii_counts(kept) -> dict[str, int]:
    if kept.count() == 0:
        return {}
    sums = kept.sum(PII_COLUMNS)
    sums = sums if isinstance(sums, dict) else {PII_COLUMNS[0]: sums}
    return {c.removeprefix("pii_"): int(v) for c, v in sorted(sums.items()) if v}


def _write_rejected(ledger, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rejected = ledger.filter(expr="reason != ''")
    rejected.select_columns(["id", "reason", "duplicate_of", "source", "raw"]).write_parquet(str(path))


def _length_histogram(kept) -> np.ndarray:
    """Streamed, per-batch histogram of kept documents' word counts (nothing held in the driver)."""
    total = np.zeros(len(report.LENGTH_BINS) - 1, dtype=np.int64)
    for batch in kept.select_columns(["text"]).iter_batches(batch_size=4096, batch_format="numpy"):
        total += report.length_histogram(np.array([len(str(t).split()) for t in batch["text"]]))
    return total


def _sample_texts(kept, max_chars: int):
    """Stream kept texts to the driver until ``max_chars``: the tokenizer's bounded sample."""
    seen = 0
    for batch in kept.select_columns(["text"]).iter_batches(batch_size=1024, batch_format="numpy"):
        for t in batch["text"]:
            if seen >= max_chars:
                return
            seen += len(t)
            yield str(t)


def _pack_splits(kept, tokenizer_json: str, cfg: PrepareConfig, out: Path) -> dict:
    """One tokenizing pass over the kept documents; rows tagged with their split, written apart."""
    fn_kwargs = dict(tokenizer_json=tokenizer_json, seq_len=cfg.pack.seq_len, val_fraction=cfg.pack.val_fraction)
    rows = kept.map_batches(tokenize_and_pack, batch_size=cfg.pack.batch_size, batch_format="numpy",
                            fn_kwargs=fn_kwargs).materialize()
    tokens = {}
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        part = rows.filter(expr=f"split == '{split}'").drop_columns(["split"]).materialize()
        part.write_parquet(str(out / split))
        n_rows = part.count()
        tokens[split] = {"rows": n_rows, "tokens": int(part.sum("n_tokens") or 0) if n_rows else 0}
    return tokens


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def tokenize_and_pack(batch: dict, tokenizer_json: str, seq_len: int, val_fraction: float) -> pa.Table:
    """Ray Data batch fn: documents -> packed ``input_ids`` rows of each split (column ``split``); a row
    never mixes documents of both splits."""
    tok = _tokenizer(tokenizer_json)
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    texts = [str(t) for t in batch["text"]]
    # encode_batch_fast skips the character offsets, which packing never uses.
    encodings = tok.encode_batch_fast(texts) if texts else []
    splits = [packing.split_of(str(i), val_fraction) for i in batch["id"]]
    tables = []
    for split in ("train", "val"):
        packed = packing.pack([e.ids for e, s in zip(encodings, splits) if s == split], seq_len, eos, pad)
        flat = pa.array(packed["input_ids"].reshape(-1), pa.int32())
        offsets = pa.array(np.arange(0, len(flat) + 1, seq_len, dtype=np.int32))
        n = len(packed["n_tokens"])
        tables.append(pa.table({"input_ids": pa.ListArray.from_arrays(offsets, flat),
                                "n_tokens": pa.array(packed["n_tokens"], pa.int32()),
                                "split": pa.array([split] * n, pa.string())}))
    return pa.concat_tables(tables)


def _manifest(cfg: PrepareConfig, files: list[str], counts: dict[str, int], pii_counts: dict[str, int],
              tokens: dict, tok) -> dict:
    total = sum(counts.values())
    quarantined = sum(n for r, n in counts.items() if r.startswith("quarantine:"))
    dropped = {r: n for r, n in sorted(counts.items()) if r and not r.startswith("quarantine:")}
    return {
        "documents": {"input": total, "kept": counts.get("", 0), "dropped": dropped,
                      "quarantined": quarantined,
                      "quarantine_reasons": {r: n for r, n in sorted(counts.items())
                                             if r.startswith("quarantine:")}},
        "pii": pii_counts,
        "tokens": {s: tokens[s]["tokens"] for s in tokens},
        "rows": {s: tokens[s]["rows"] for s in tokens},
        "seq_len": cfg.pack.seq_len,
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": {"pad": tok.token_to_id(PAD), "bos": tok.token_to_id("<bos>"),
                           "eos": tok.token_to_id(EOS)},
        "inputs": files,
        "tokenizer_sha256": hashlib.sha256(tok.to_str().encode()).hexdigest(),
    }
