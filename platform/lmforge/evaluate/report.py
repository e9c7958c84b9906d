"""``report.md`` of an eval run: one table of every model's scores per task, then the audits."""

from __future__ import annotations


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(results: dict[str, dict], models: dict[str, str], seconds: dict[str, float], cfg) -> str:
    lines = ["# eval report", "", "| model | dir | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {name} | `{models[name]}` | {seconds[name]} |" for name in results]
    task_names = list(next(iter(results.values())))
    for task in task_names:
        lines += ["", f"## {task}", ""]
        flat = {name: {k: v for k, v in r[task].items() if isinstance(v, (int, float))} for name, r in results.items()}
        keys = list(next(iter(flat.values())))
        lines += ["| model | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
        lines += [f"| {name} | " + " | ".join(_fmt(flat[name].get(k)) for k in keys) + " |" for name in flat]
        for name, r in results.items():
            if "by_category" in r[task]:
                lines += ["", f"{name}: share of pairs where the stereotyped sentence is preferred (0.5: none), "
                          "with 95% intervals", "", "| category | share | 95% CI | pairs |",
                          "| --- | ---: | --- | ---: |"]
                lines += [f"| {c} | {s['share']:.3f} | {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f} | {s['pairs']} |"
                          for c, s in [("overall", r[task]["overall"]), *r[task]["by_category"].items()]]
    lines += ["", f"split: {cfg.split}, at most {cfg.max_examples} examples per task; predictions.jsonl has "
              "every answer.", ""]
    return "\n".join(lines)
