"""Next-token choice from logits: greedy, temperature, top-k, top-p. Pure numpy."""

from __future__ import annotations

import numpy as np


def sample_next(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                rng: np.random.Generator) -> np.ndarray:
    """One token id per row of ``logits[B, V]``; temperature 0 is greedy (argmax)."""
    if temperature <= 0.0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        probs = _top_p(probs, top_p)
    return np.array([rng.choice(len(p), p=p) for p in probs])


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    order = np.argsort(-probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p  # always keeps the top token
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum(axis=-1, keepdims=True)


def sample_row(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """One token id from one row of logits ``[V]``."""
    if temperature <= 0.0:
        return int(logits.argmax())
    return int(sample_next(logits[None, :], temperature, top_k, top_p, rng)[0])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from logits along the last axis, in float64 (exact to ~1e-12 for scoring)."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
