"""Per-document curation: clean -> quality rules -> PII redaction -> dedup keys. Pure Python.

Takes a ledger record from :mod:`lmforge.data.sources` and returns it with the cleaned, redacted
text, a drop reason if a rule failed (``empty``, ``quality:<rule>``), per-type PII counts, the exact-
duplicate key and the MinHash signature that the global dedup step (Ray glue) compares.
"""

from __future__ import annotations

import functools

import numpy as np

from lmforge.data import clean, dedup, pii, quality
from lmforge.data.config import PrepareConfig

PII_COLUMNS = [f"pii_{t}" for t in pii.PII_TYPES]


@functools.lru_cache(maxsize=4)
def _hasher(num_perm: int, seed: int) -> dedup.MinHasher:
    return dedup.MinHasher(num_perm, seed)


def curate(rec: dict, cfg: PrepareConfig) -> dict:
    """Fill ``text``, ``reason``, ``pii_*``, ``exact_key`` and ``minhash`` of one record."""
    rec.update({c: 0 for c in PII_COLUMNS}, exact_key=0, minhash=b"")
    if rec["reason"]:  # quarantined while reading
        return rec
    text = clean.clean(rec["text"])
    if not text:
        rec.update(text="", reason="empty")
        return rec
    rule = quality.failed_rule(text, cfg.quality)
    if rule:
        rec.update(text=text, reason=f"quality:{rule}")
        return rec
    if cfg.pii.enabled:
        text, counts = pii.redact(text)
        rec.update({f"pii_{t}": n for t, n in counts.items()})
    rec["text"] = text
    rec["exact_key"] = dedup.exact_key(text)
    if cfg.dedup.near:
        hasher = _hasher(cfg.dedup.bands * cfg.dedup.rows, cfg.dedup.seed)
        rec["minhash"] = hasher.signature(dedup.shingle_hashes(text, cfg.dedup.ngram)).tobytes()
    return rec


def signature_of(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint32)
