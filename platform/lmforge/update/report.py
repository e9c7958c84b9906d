"""The update's report (``<output>/report.md``): what it did, the gate's checks, the probes around the
switch, and the model registry as it stands after it."""

from __future__ import annotations

from lmforge.report import Section, fmt, render_md
from lmforge.update.registry import VERSION_COLUMNS, Registry, version_rows


def render(result: dict, registry: Registry, output: str) -> str:
    update = Section("Update", f"lmforge update {output}/update.yaml", [
        f"Outcome: **{result.get('outcome')}** (deployed {result.get('deployed')}"
        + (f", candidate {result['candidate']}" if result.get("candidate") else "") + ")."])
    if data := result.get("data"):
        update.lines.append(f"New data: {data['kept']} of {data['examples']} examples kept "
                            f"({data['already_trained_on']} trained on before, {data['repeated']} repeated).")
    if gate := result.get("gate"):
        update.tables.append((["gated", "candidate - deployed", "95% interval", "margin", "passed", "why"],
                              [[c["metric"], fmt(_difference(c)), _interval(c.get("ci95")), fmt(c.get("margin")),
                                "yes" if c["passed"] else "**no**", c["why"]] for c in gate["checks"]]))
    if probes := result.get("probes"):
        update.tables.append((["probe", "before the switch", "after"],
                              [[k, fmt(v), fmt(probes["after"].get(k))] for k, v in probes["before"].items()]))
    registry_section = Section("Model registry", f"lmforge models list registry={registry.uri}",
                               tables=[(VERSION_COLUMNS, version_rows(registry.versions()))])
    return render_md([update, registry_section], "lmforge update report")


def _difference(check: dict) -> float | None:
    """A gated metric's paired difference, or an audit's candidate - deployed."""
    if "difference" in check:
        return check["difference"]
    return check["candidate"] - check["deployed"] if "candidate" in check else None


def _interval(ci: list | None) -> str:
    return f"[{fmt(float(ci[0]))}, {fmt(float(ci[1]))}]" if ci else "-"
