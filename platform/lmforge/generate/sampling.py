"""Next-token choice from logits: greedy, temperature, top-k, top-p; log-probabilities. Pure numpy.

Per decode step this runs for every row, so nothing sorts the whole vocabulary: top-k and top-p look
at the best candidates found by ``argpartition`` (widening the search only when a flat distribution
needs more of them to reach ``top_p``), and the draw itself is one inverse-CDF lookup.
"""

from __future__ import annotations

import numpy as np

_FIRST_CANDIDATES = 64  # top-p's first look; a peaked distribution reaches top_p well within it


def sample_next(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                rng: np.random.Generator) -> np.ndarray:
    """One token id per row of ``logits[B, V]``; temperature 0 is greedy (argmax)."""
    if temperature <= 0.0:
        return logits.argmax(axis=-1)
    return np.array([sample_row(row, temperature, top_k, top_p, rng) for row in logits])


def sample_row(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """One token id from one row of logits ``[V]``."""
    if temperature <= 0.0:
        return int(logits.argmax())
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        candidates = np.argpartition(logits, vocab - top_k)[vocab - top_k:]
    else:
        candidates = None
    scaled = (logits if candidates is None else logits[candidates]).astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        keep = _nucleus(probs, top_p)
        probs = probs[keep] / probs[keep].sum()
        candidates = keep if candidates is None else candidates[keep]
    choice = min(int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right")), len(probs) - 1)
    return int(choice if candidates is None else candidates[choice])


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of tokens whose probability reaches ``top_p`` (always the top one)."""
    n = len(probs)
    k = min(_FIRST_CANDIDATES, n)
    while True:
        best = np.argpartition(-probs, k - 1)[:k] if k < n else np.arange(n)
        best = best[np.argsort(-probs[best], kind="stable")]
        mass = np.cumsum(probs[best])
        if mass[-1] >= top_p or k == n:
            return best[: min(int(np.searchsorted(mass, top_p)) + 1, k)]
        k = min(4 * k, n)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from logits along the last axis, in float64 (exact to ~1e-12 for scoring)."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_logprobs(logp: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely tokens of one row of log-probabilities, best first, without a full sort."""
    if k <= 0:
        return []
    k = min(k, len(logp))
    best = np.argpartition(-logp, k - 1)[:k]
    best = best[np.argsort(-logp[best], kind="stable")]
    return [(int(t), float(logp[t])) for t in best]


def token_logprob(logits: np.ndarray, token: int, top: int | None):
    """``token``'s logprob under ``logits`` and the ``top`` most likely alternatives, as a TokenLogprob."""
    from lmforge.generate.requests import TokenLogprob

    logp = log_softmax(logits)
    return TokenLogprob(int(token), float(logp[token]), top_logprobs(logp, top or 0))
