"""Uncertainty of every metric: 95% intervals by bootstrap over examples, and paired differences between
two models on the same examples. Numpy only; no model, no Ray.

A metric is kept as a :class:`Sample`, what it is computed from per example: the values whose mean it is
(accuracy, ROUGE, exact match), or per-example sufficient statistics and the function of their sum that
gives the metric (corpus BLEU and chrF, perplexity, macro F1). One resampling of the examples is then one
row of indices, and the same rows serve both models of a paired comparison (Koehn 2004; the paired
bootstrap lm-evaluation-harness and sacrebleu use). Accuracy differences get McNemar's exact test, the
usual one for two classifiers on the same examples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

LEVEL = 0.95


@dataclasses.dataclass
class Sample:
    values: np.ndarray | None = None  # [n]: the metric is their mean
    stats: np.ndarray | None = None  # [n, k]: the metric is from_stats(their sum over examples)
    from_stats: Callable[[np.ndarray], np.ndarray] | None = None  # [r, k] summed stats -> [r] metric

    @classmethod
    def mean(cls, values) -> Sample:
        return cls(values=np.asarray(values, dtype=np.float64))

    @classmethod
    def of_stats(cls, stats, from_stats) -> Sample:
        return cls(stats=np.asarray(stats, dtype=np.float64), from_stats=from_stats)

    def __len__(self) -> int:
        return len(self.values if self.values is not None else self.stats)

    def at(self, idx: np.ndarray) -> np.ndarray:
        """The metric on each row of example indices ``idx`` [r, n] -> [r]."""
        if self.values is not None:
            return self.values[idx].mean(axis=1)
        return np.asarray(self.from_stats(self.stats[idx].sum(axis=1)), dtype=np.float64)

    def binary(self) -> bool:
        """Right or wrong per example: 0/1 (accuracy) or 0/100 (exact match, a percentage)."""
        return self.values is not None and (bool(np.isin(self.values, (0.0, 1.0)).all())
                                            or bool(np.isin(self.values, (0.0, 100.0)).all()))


def _rows(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def interval(sample: Sample, resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """The 95% percentile-bootstrap interval of the metric; None with fewer than two examples."""
    if len(sample) < 2 or resamples <= 0:
        return None
    return _percentiles(sample.at(_rows(len(sample), resamples, seed)))


def paired(base: Sample, other: Sample, resamples: int = 1000, seed: int = 0) -> dict:
    """``other - base`` on the same examples: the difference, its 95% interval, and a two-sided p-value
    (McNemar's exact test for 0/1 metrics, the paired bootstrap otherwise)."""
    if len(base) != len(other):
        raise ValueError(f"paired comparison needs the same examples ({len(base)} vs {len(other)})")
    full = np.arange(len(base))[None, :]
    diff = float(other.at(full)[0] - base.at(full)[0])
    out = {"difference": diff, "ci95": None, "p_value": None, "examples": len(base)}
    if len(base) < 2 or resamples <= 0:
        return out
    idx = _rows(len(base), resamples, seed)
    deltas = other.at(idx) - base.at(idx)
    out["ci95"] = _percentiles(deltas)
    if base.binary() and other.binary():
        out["p_value"], out["test"] = mcnemar(base.values, other.values), "mcnemar"
    else:
        # the share of resampled differences on the far side of 0, both tails (at least 1/resamples)
        tail = min(np.mean(deltas <= 0), np.mean(deltas >= 0))
        out["p_value"], out["test"] = float(min(1.0, max(2 * tail, 1 / resamples))), "paired bootstrap"
    return out


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two right/wrong vectors (nonzero = right): a binomial test on the
    discordant pairs."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))
