"""Traffic statistics of request records (:mod:`lmforge.serve.request_log`) and how far a window of them
has drifted from a reference window. Pure Python, no Ray.

Drift is the population stability index (PSI, the credit-risk and ML-monitoring standard) of each
feature's distribution, current against reference: ``sum((c - r) * ln(c / r))`` over the bins' shares
(smoothed so an empty bin is finite). Features: prompt and completion length (tokens, in doubling
bins), the prompt's language, the finish reason (stop / length / empty, ``empty`` being no token
generated) and the status (ok / error). The score is the largest feature's PSI; the usual reading is
< 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.
"""

from __future__ import annotations

import math
from collections import Counter

LENGTH_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # upper bounds of the length bins (tokens)
SMOOTHING = 1e-4  # added to every bin's share: an empty bin on one side weighs ln(share / 1e-4), not infinity


def _length_bin(n: int) -> str:
    return next((f"<={edge}" for edge in LENGTH_EDGES if n <= edge), f">{LENGTH_EDGES[-1]}")


def finish(record: dict) -> str:
    if record.get("completion_tokens", 0) == 0 and record.get("endpoint") != "embeddings":
        return "empty"
    reasons = [r for r in record.get("finish_reasons") or [] if r]
    return reasons[0] if reasons else "none"


def features(record: dict) -> dict[str, str]:
    """The categorical value of each feature for one record (a refused request has a status only)."""
    if record.get("status", 200) >= 400:
        return {"status": "error"}
    return {"status": "ok", "prompt_tokens": _length_bin(record.get("prompt_tokens", 0)),
            "completion_tokens": _length_bin(record.get("completion_tokens", 0)),
            "language": record.get("language") or "und", "finish": finish(record)}


def histograms(records: list[dict]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for record in records:
        for name, value in features(record).items():
            out.setdefault(name, Counter())[value] += 1
    return out


def stats(records: list[dict]) -> dict:
    """What a window of traffic looks like: request count, error rate, mean and p95 lengths, language and
    finish-reason shares."""
    ok = [r for r in records if r.get("status", 200) < 400]
    hist = histograms(records)

    def shares(name: str) -> dict[str, float]:
        total = sum(hist.get(name, Counter()).values())
        return {k: v / total for k, v in sorted(hist[name].items())} if total else {}

    def lengths(key: str) -> dict:
        values = sorted(r.get(key, 0) for r in ok)
        if not values:
            return {"mean": 0.0, "p95": 0}
        return {"mean": sum(values) / len(values), "p95": values[min(len(values) - 1, int(0.95 * len(values)))]}

    return {"requests": len(records), "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0,
            "prompt_tokens": lengths("prompt_tokens"), "completion_tokens": lengths("completion_tokens"),
            "languages": shares("language"), "finish": shares("finish")}


def psi(reference: Counter, current: Counter) -> float:
    """Population stability index of two histograms over the union of their bins."""
    bins = set(reference) | set(current)
    r_total, c_total = sum(reference.values()), sum(current.values())
    if not r_total or not c_total:
        return 0.0
    total = 0.0
    for b in bins:
        r = reference.get(b, 0) / r_total + SMOOTHING
        c = current.get(b, 0) / c_total + SMOOTHING
        total += (c - r) * math.log(c / r)
    return total


def drift(reference: list[dict], current: list[dict]) -> dict:
    """``{"features": {name: psi}, "score": the largest}`` of the current window against the reference."""
    ref, cur = histograms(reference), histograms(current)
    scores = {name: round(psi(ref.get(name, Counter()), cur.get(name, Counter())), 4) for name in set(ref) | set(cur)}
    return {"features": dict(sorted(scores.items())), "score": max(scores.values(), default=0.0)}
