"""Exact and near-duplicate detection: keys, vectorised MinHash, LSH bands, clustering. Pure numpy.

Why our own numpy MinHash rather than datasketch or datatrove: signatures are computed for a whole
batch at once (one pass over the concatenated code points, one hash per shingle by one-permutation
hashing), several times faster per core than either, and the banding is ours to choose (24 x 5 pairs
Jaccard 0.75 with p=0.998, where the 9 x 13 that a 0.8 threshold suggests for 128 permutations misses
near-copies). The shingles are character 4-grams of the case-folded text with punctuation dropped and
words single-spaced: script-agnostic (Korean has no reliable word segmentation), and a changed comma or
full stop is not an edit of the content (datatrove's near-dedup drops punctuation too).

Why 4-grams and 0.75 rather than 5-grams and 0.8: Korean paragraphs are short, and there one edited
word costs ~0.07 of 5-gram Jaccard, so copies with two or three words changed fell below 0.8. The
measurements behind both choices (speed, recall per edit kind, false positives on real text) are in
docs/benchmarks.md, "Near-duplicate removal".
LSH candidates are verified by estimated Jaccard before anything is dropped.

The ``order`` of a document (file index << 32 | record number) decides which copy is kept: the first
one in input order, whatever the sharding.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_ROLL = np.uint64(0x100000001B3)  # FNV-64 prime as the polynomial base
_EMPTY = np.uint64(1 << 32)  # above every uint32 bin value
_DENSIFY_STEP = np.uint64(0x9E3779B1)  # odd 32-bit constant: a borrowed bin differs per distance


def canonical(text: str) -> str:
    """What "the same text" means for dedup: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


_NOT_WORD = re.compile(r"[\W_]+")


def near_canonical(text: str) -> str:
    """What near-dedup shingles: case-folded, punctuation and symbols removed, words single-spaced."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def exact_key(text: str) -> int:
    """64-bit key of the canonical text (signed, to fit an int64 column)."""
    digest = hashlib.blake2b(canonical(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """Unique 64-bit hashes of the character k-grams of :func:`near_canonical` text (what MinHash estimates)."""
    hashes, _ = _window_hashes([text], k)
    return np.unique(_mix(hashes))


def _window_hashes(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial 64-bit hashes (unmixed) of every character k-gram of every near-canonical text + its index.

    One pass over the concatenated code points of the whole batch (no per-text numpy calls); windows that
    would cross from one text into the next are left out. Texts shorter than k are padded to one k-gram.
    """
    canon = [near_canonical(t) for t in texts]
    canon = [c + "\0" * (k - len(c)) if len(c) < k else c for c in canon]
    lengths = np.fromiter((len(c) for c in canon), dtype=np.int64, count=len(canon))
    cps = np.frombuffer("".join(canon).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    counts = lengths - k + 1  # windows per text
    doc = np.repeat(np.arange(len(canon)), counts)
    # Window w of text d starts at starts[d] + (w - first_window[d]).
    starts = np.cumsum(lengths) - lengths
    first_window = np.cumsum(counts) - counts
    pos = np.arange(len(doc)) + np.repeat(starts - first_window, counts)
    n_windows = len(cps) - k + 1
    h = cps[:n_windows].copy()
    with np.errstate(over="ignore"):
        for j in range(1, k):  # polynomial hash of every window of the concatenation, then keep the valid
            h *= _ROLL
            h += cps[j : j + n_windows]
    return h[pos], doc


def signatures(texts: list[str], num_perm: int, k: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures ``uint32[len(texts), num_perm]`` by one-permutation hashing, for a whole batch.

    Each k-gram hash picks one of ``num_perm`` bins (its high bits) and competes for that bin's minimum
    (its low bits), so a signature costs one hash per k-gram instead of ``num_perm``, with the same
    collision probability (P[bin equal] = Jaccard) for texts
    that fill their bins. Empty bins (texts with few k-grams) borrow the next filled bin to the right,
    offset by the distance ("rotation" densification, Shrivastava & Li 2014), which keeps that property.
    """
    n = len(texts)
    sig = np.full(n * num_perm, _EMPTY, dtype=np.uint64)
    if n == 0:
        return sig.reshape(0, num_perm).astype(np.uint32)
    hashes, doc = _window_hashes(texts, k)
    salt = _mix(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        hashes = _mix(hashes ^ salt)
        bins = ((hashes >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
        np.minimum.at(sig, doc * num_perm + bins.astype(np.int64), hashes & _MASK32)
    return _densify(sig.reshape(n, num_perm)).astype(np.uint32)


def _densify(sig: np.ndarray) -> np.ndarray:
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    filled, out = ~empty, sig.copy()
    todo = empty & filled.any(axis=1, keepdims=True)
    for shift in range(1, sig.shape[1]):
        if not todo.any():
            break
        src, src_filled = np.roll(sig, -shift, axis=1), np.roll(filled, -shift, axis=1)
        take = todo & src_filled
        with np.errstate(over="ignore"):
            out[take] = (src[take] + np.uint64(shift) * _DENSIFY_STEP) & _MASK32
        todo &= ~take
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One int64 key per LSH band (band index mixed in, so equal keys mean the same band matched).

    ``sig`` is one signature (-> ``[bands]``) or a matrix of them (-> ``[n, bands]``).
    """
    sig = np.asarray(sig)
    parts = sig[..., : bands * rows].astype(np.uint64).reshape(*sig.shape[:-1], bands, rows)
    with np.errstate(over="ignore"):
        h = np.broadcast_to(np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15),
                            parts.shape[:-1]).copy()
        for j in range(rows):
            h = _mix(h ^ parts[..., j])
    return h.view(np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


class UnionFind:
    """Disjoint sets over arbitrary hashable keys; the smallest key is each set's root."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def near_duplicates(edges: set[tuple[int, int]], signatures: dict[int, np.ndarray],
                    threshold: float) -> dict[int, int]:
    """Verify candidate pairs, cluster them; returns ``{order: order of the kept copy}`` for the others."""
    uf = UnionFind()
    for a, b in sorted(edges):
        if estimated_jaccard(signatures[a], signatures[b]) >= threshold:
            uf.union(a, b)
    return {x: uf.find(x) for x in list(uf.parent) if uf.find(x) != x}
