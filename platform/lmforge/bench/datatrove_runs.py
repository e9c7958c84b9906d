"""datatrove's pipelines, run on the prepare bench's corpus for comparison (benchmark-only extra: ``.[bench]``).

- :func:`near_dedup`: its 4-stage MinHash deduplication alone (its defaults: 14 buckets x 8 hashes over
  word 5-grams, spaCy's word tokenizer);
- :func:`whole_pipeline`: the equivalent of ``lmforge prepare``: reader -> Gopher repetition and quality
  filters (set to prepare's thresholds where they map) -> PII formatter (emails, public IPs) -> the MinHash
  stages -> the same BPE tokenizer, with ``workers`` processes on the same cores.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter


def _recall(dropped: set[str], pairs: dict[str, str]) -> float:
    return sum(c in dropped or o in dropped for c, o in pairs.items()) / max(1, len(pairs))


def _ids(folder: Path) -> set[str]:
    ids = set()
    for f in folder.glob("*.jsonl*"):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            ids.update(json.loads(line)["id"] for line in fh)
    return ids


def _run(stages: list[LocalPipelineExecutor]) -> float:
    start = time.perf_counter()
    for executor in stages:
        executor.run()
    return time.perf_counter() - start


def _dedup_stages(sigs: Path, work: Path, mh: MinhashConfig, workers: int, first: list, last: list) -> list:
    """The four MinHash stages, the first and last with the given pipeline steps around them."""
    logs = str(work / "logs")
    dedup_filter = MinhashDedupFilter(str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed")))
    return [
        LocalPipelineExecutor(pipeline=[*first, MinhashDedupSignature(str(sigs), config=mh)], tasks=workers,
                              workers=workers, logging_dir=f"{logs}/1"),
        LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(sigs), str(work / "buckets"), config=mh)],
                              tasks=mh.num_buckets, workers=workers, logging_dir=f"{logs}/2"),
        LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)],
                              tasks=1, workers=1, logging_dir=f"{logs}/3"),
        LocalPipelineExecutor(pipeline=[last[0], dedup_filter, *last[1:]], tasks=workers, workers=workers,
                              logging_dir=f"{logs}/4"),
    ]


def near_dedup(corpus_dir: Path, work: Path, pairs: dict, workers: int) -> dict:
    """datatrove's 4-stage MinHash pipeline alone, with its defaults."""
    mh = MinhashConfig()
    reader = lambda: JsonlReader(str(corpus_dir), glob_pattern="*.jsonl", text_key="text", id_key="id")
    last = [reader(), JsonlWriter(str(work / "kept"))]
    seconds = _run(_dedup_stages(work / "sigs", work, mh, workers, [reader()], last))
    dropped = _ids(work / "removed")
    n = sum(1 for f in corpus_dir.glob("*.jsonl") for _ in open(f, encoding="utf-8"))
    return {"engine": "datatrove MinHash (4 stages)", "bands": mh.num_buckets, "rows": mh.hashes_per_bucket,
            "docs": n, "seconds": seconds, "docs_per_s": n / seconds, "recall": _recall(dropped, pairs),
            "removed": len(dropped)}


def whole_pipeline(corpus_dir: Path, work: Path, tokenizer_file: Path, workers: int) -> dict:
    """The equivalent of ``lmforge prepare``; returns timings, token count and the ids it keeps."""
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.tokens import DocumentTokenizer

    mh = MinhashConfig()
    filtered = work / "filtered"
    first = [JsonlReader(str(corpus_dir), glob_pattern="*.jsonl", text_key="text", id_key="id"),
             GopherRepetitionFilter(),
             # prepare's thresholds where they map: 5+ words, mean word length 2-12, 70% words with a letter,
             # no stop-word rule (prepare has none: it would drop all Korean)
             GopherQualityFilter(min_doc_words=5, min_avg_word_length=2, max_avg_word_length=12,
                                 max_non_alpha_words_ratio=0.7, min_stop_words=0),
             PIIFormatter(), JsonlWriter(str(filtered))]
    last = [JsonlReader(str(filtered), text_key="text", id_key="id"), JsonlWriter(str(work / "kept")),
            DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=str(tokenizer_file), eos_token="<eos>",
                              shuffle_documents=False)]
    seconds = _run(_dedup_stages(work / "sigs", work, mh, workers, first, last))
    tokens = sum(f.stat().st_size for f in (work / "tokens").glob("*.ds")) // 2  # uint16 ids (vocab < 65536)
    n = sum(1 for f in corpus_dir.glob("*.jsonl") for _ in open(f, encoding="utf-8"))
    return {"pipeline": "JsonlReader > GopherRepetitionFilter > GopherQualityFilter > PIIFormatter > MinHash x4 "
                        "> DocumentTokenizer", "docs": n, "seconds": seconds, "docs_per_s": n / seconds,
            "tokens": tokens, "tokens_per_s": tokens / seconds, "kept_ids": _ids(work / "kept")}
