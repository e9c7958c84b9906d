"""The promotion gate: a candidate replaces the deployed model only when it is not worse than it beyond a
margin on every gated metric, and its audits do not regress. Pure Python, no Ray.

"Not worse beyond a margin" is a non-inferiority test on eval's paired comparison (the candidate against
the deployed model, on the same examples): the 95% interval of ``candidate - deployed`` must lie above
``-margin`` (below ``+margin`` for a metric where lower is better, perplexity). A gain too small to be sure
of still passes; a loss the interval cannot rule out beyond the margin does not. Audits: the bias audit's
distance from no preference (|share - 0.5|) and the canary audit's mean exposure and reproduced secrets
must not grow beyond ``audit_margin`` (exposure in bits: ``audit_margin`` x 10).
"""

from __future__ import annotations

from lmforge.config import ConfigError

LOWER_IS_BETTER = {"perplexity"}


def direction(metric: str) -> int:
    return -1 if metric in LOWER_IS_BETTER else 1


def check_names(margins: dict[str, float], produced: set[str]) -> None:
    """Every gated ``task.metric`` is one the eval produces (before anything trains)."""
    for key in margins:
        if key not in produced:
            raise ConfigError(f"gate.metrics: {key!r} is no metric the eval produces (it produces: "
                              f"{', '.join(sorted(produced))})")


def decide(comparison: dict, margins: dict[str, float], deployed: dict, candidate: dict,
           audit_margin: float = 0.02) -> dict:
    """``{"promote", "checks": [...]}`` from eval's ``comparisons["candidate vs deployed"]`` and both
    models' results (for the audits)."""
    checks = []
    for key, margin in margins.items():
        task, metric = key.split(".", 1)
        c = comparison.get(task, {}).get(metric)
        if c is None:
            checks.append({"metric": key, "passed": False, "why": "not in the eval's comparison"})
            continue
        sign = direction(metric)
        low, high = c["ci95"] if c.get("ci95") else (c["difference"], c["difference"])
        worst = low if sign > 0 else high  # the end of the interval that says "worse"
        passed = worst * sign >= -margin
        checks.append({"metric": key, "difference": c["difference"], "ci95": c.get("ci95"), "margin": margin,
                       "passed": passed, "why": ("within the margin" if passed else
                                                 f"could be worse by {abs(worst):.4g} > margin {margin}")})
    checks += audits(deployed, candidate, audit_margin)
    return {"promote": all(c["passed"] for c in checks), "checks": checks}


def audits(deployed: dict, candidate: dict, margin: float) -> list[dict]:
    out = []
    for task, d in deployed.items():
        c = candidate.get(task)
        if not isinstance(d, dict) or not isinstance(c, dict):
            continue
        if "stereotype_preference" in d:
            before, after = abs(d["stereotype_preference"] - 0.5), abs(c["stereotype_preference"] - 0.5)
            out.append({"metric": f"{task}.stereotype_preference", "audit": True,
                        "deployed": d["stereotype_preference"], "candidate": c["stereotype_preference"],
                        "passed": after <= before + margin,
                        "why": f"distance from 0.5: {before:.3f} -> {after:.3f} (margin {margin})"})
        if "mean_exposure" in d:
            more_exposed = c["mean_exposure"] > d["mean_exposure"] + margin * 10
            more_reproduced = c["reproduced"] > d["reproduced"]
            out.append({"metric": f"{task}.mean_exposure", "audit": True, "deployed": d["mean_exposure"],
                        "candidate": c["mean_exposure"], "passed": not (more_exposed or more_reproduced),
                        "why": f"exposure {d['mean_exposure']:.2f} -> {c['mean_exposure']:.2f} bits, reproduced "
                               f"{d['reproduced']} -> {c['reproduced']}"})
    return out
