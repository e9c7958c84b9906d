"""Our numpy MinHash against rensa's Rust MinHash (a benchmark-only extra), as ``prepare`` runs it.

Both take the same shingle hashes (character 4-grams, :func:`lmforge.data.dedup._window_hashes`'s pass),
batch by batch as curation does, so the figure is the cost of the step a compiled library could take
over; recall is of the planted near-copies with prepare's banding and verification, in one process.
"""

from __future__ import annotations

import time

import numpy as np

from lmforge.data import dedup
from lmforge.data.config import DedupConfig

CHUNK = 4096  # texts per signatures() call, as in curation


def _rensa(texts: list[str], cfg: DedupConfig, rho: bool) -> np.ndarray:
    from rensa import RMinHash

    hashes, doc = dedup._window_hashes(texts, cfg.ngram)
    offsets = np.searchsorted(doc, np.arange(len(texts) + 1)).astype(np.uint64)
    digest = RMinHash.digest_matrix_from_flat_token_hashes_rho if rho else RMinHash.digest_matrix_from_flat_token_hashes
    return np.array(digest(hashes, offsets, cfg.bands * cfg.rows, cfg.seed).to_rows(), dtype=np.uint32)


ENGINES = {
    "lmforge_numpy_one_permutation": lambda texts, cfg: dedup.signatures(texts, cfg.bands * cfg.rows, cfg.ngram,
                                                                         cfg.seed),
    "rensa_classic": lambda texts, cfg: _rensa(texts, cfg, rho=False),
    "rensa_rho": lambda texts, cfg: _rensa(texts, cfg, rho=True),
}


def _recall(sig: np.ndarray, ids: list[str], pairs: dict[str, str], cfg: DedupConfig) -> float:
    first: dict[tuple[int, int], int] = {}
    edges = set()
    for i, row in enumerate(dedup.band_keys(sig, cfg.bands, cfg.rows)):
        for band, key in enumerate(row.tolist()):
            j = first.setdefault((band, key), i)
            if j != i:
                edges.add((j, i))
    dropped = {ids[i] for i in dedup.near_duplicates(edges, {i: sig[i] for e in edges for i in e}, cfg.near_threshold)}
    return sum(copy in dropped or orig in dropped for copy, orig in pairs.items()) / max(1, len(pairs))


def compare(texts: list[str], ids: list[str], pairs: dict[str, str], repeats: int = 3) -> dict:
    """CPU microseconds per document (best of ``repeats``, one thread) and recall, per engine."""
    cfg = DedupConfig()
    out = {}
    for name, engine in ENGINES.items():
        try:
            best, sig = float("inf"), None
            for _ in range(repeats):
                start = time.process_time()
                sig = np.concatenate([engine(texts[i : i + CHUNK], cfg) for i in range(0, len(texts), CHUNK)])
                best = min(best, time.process_time() - start)
        except ImportError:
            out[name] = "not installed: pip install -e '.[bench]'"
            continue
        out[name] = {"cpu_us_per_doc": best / len(texts) * 1e6, "recall": _recall(sig, ids, pairs, cfg)}
    return out
