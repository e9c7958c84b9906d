"""``report.md`` of an eval run (one table of every model's scores per task, then the audits), and the
eval sections of a recipe's report."""

from __future__ import annotations

from lmforge.report import Section, absent, fmt, read_json, rerun
from lmforge.tasks.builtin import TASKS


def render(results: dict[str, dict], models: dict[str, str], seconds: dict[str, float], cfg) -> str:
    lines = ["# eval report", "", "| model | dir | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {name} | `{models[name]}` | {seconds[name]} |" for name in results]
    task_names = list(next(iter(results.values())))
    for task in task_names:
        lines += ["", f"## {task}", ""]
        flat = {name: {k: v for k, v in r[task].items() if isinstance(v, (int, float))} for name, r in results.items()}
        keys = list(next(iter(flat.values())))
        lines += ["| model | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
        lines += [f"| {name} | " + " | ".join(fmt(flat[name].get(k)) for k in keys) + " |" for name in flat]
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


def recipe_sections(cfg) -> list[Section]:
    """A recipe report's sections of an eval run: every metric, each model side by side, and the audits."""
    evaluation = read_json(cfg.output, "eval.json") if cfg else None
    if evaluation is None:
        return [absent(t, "eval") for t in ("Evaluation", "Bias audit", "Privacy audit")]
    output = cfg.output
    by_model = {"model": evaluation} if _is_task_table(evaluation) else evaluation
    command = rerun("eval", output)
    metric_rows = []
    for model, tasks in by_model.items():
        for task, scores in tasks.items():
            if task in ("bias", "canary"):
                continue
            metric_rows += [[task, metric, model, fmt(v)] for metric, v in scores.items()
                            if isinstance(v, (int, float)) and metric != "examples"]
    metric_rows.sort(key=lambda r: (r[0], r[1], r[2]))
    evaluation_section = Section("Evaluation", command, ["Held-out examples (test split), each model side by side. "
                                  "Exact match, F1, ROUGE, BLEU and chrF are percentages (0-100); accuracy is a "
                                  "fraction (0-1)."],
                                 [(["task", "metric", "model", "score"], metric_rows)])
    bias_rows, canary_rows = [], []
    for model, tasks in by_model.items():
        if "bias" in tasks:
            overall = tasks["bias"].get("overall", {})
            ci = overall.get("ci95", [None, None])
            bias_rows.append([model, fmt(overall.get("share")), f"[{fmt(ci[0])}, {fmt(ci[1])}]",
                              overall.get("pairs")])
        if "canary" in tasks:
            canary_rows.append([model] + [fmt(tasks["canary"].get(k)) for k in (
                "canaries", "reproduced", "mean_exposure", "max_exposure", "exposure_ceiling")])
    bias = Section("Bias audit", command, [
        "Share of sentence pairs (CrowS-Pairs, StereoSet) where the model prefers the stereotyped one; 0.5 is "
        "no preference."], [(["model", "stereotype preference", "95% CI", "pairs"], bias_rows)] if bias_rows else [])
    privacy = Section("Privacy audit", command, [
        "Canaries (random secrets planted in the corpus by `prepare`): reproduced = the greedy completion of the "
        "secret's prefix contains it; exposure (bits) = how far above random ones of its shape the model ranks it; "
        "near 0 means not memorized, the ceiling means ranked first. With PII redaction on, the secrets are "
        "scrubbed before training, so this checks the redaction end to end."],
        [(["model", "canaries", "reproduced", "mean exposure", "max exposure", "ceiling"], canary_rows)]
        if canary_rows else [])
    return [evaluation_section, bias, privacy]


def _is_task_table(evaluation: dict) -> bool:
    """eval.json of one model maps task -> scores; of several, model -> task -> scores."""
    return any(k in TASKS or k == "canary" for k in evaluation)
