"""``report.md`` of an eval run (one table of every model's scores per task, then the audits), and the
eval sections of a recipe's report."""

from __future__ import annotations

from lmforge.report import Section, absent, fmt, md_table, read_json, rerun
from lmforge.tasks.builtin import TASKS


def with_ci(value, ci) -> str:
    """``0.352 [0.286, 0.418]``, or the value alone when it has no interval."""
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(value)


COMPARISON_HEADER = ["comparison", "task", "metric", "difference [95% CI]", "p-value"]


def signed(value) -> str:
    return ("+" if isinstance(value, (int, float)) and value > 0 else "") + fmt(value)


def comparison_rows(comparisons: dict) -> list[list]:
    """``[comparison, task, metric, difference [95% CI], p-value (test)]`` per paired difference."""
    rows = []
    for pair, tasks in comparisons.items():
        for task, by_metric in tasks.items():
            for metric, c in by_metric.items():
                ci = c.get("ci95")
                diff = signed(c["difference"]) + (f" [{signed(ci[0])}, {signed(ci[1])}]" if ci else "")
                rows.append([pair, task, metric, diff, f"{fmt(c.get('p_value'))} ({c.get('test', '-')})"])
    return rows


def contamination_rows(by_model: dict[str, dict]) -> list[list]:
    """``[model, task, "k of n", corpus]`` per task whose model's training corpus is known."""
    return [[model, task, f"{c['contaminated']} of {c['of']}", ", ".join(c["corpus"])]
            for model, tasks in by_model.items() for task, scores in tasks.items()
            if isinstance(scores, dict) and (c := scores.get("contamination"))]


def render(results: dict[str, dict], models: dict[str, str], seconds: dict[str, float], cfg,
           comparisons: dict | None = None) -> str:
    lines = ["# eval report", "", "| model | dir | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {name} | `{models[name]}` | {seconds[name]} |" for name in results]
    task_names = list(next(iter(results.values())))
    for task in task_names:
        lines += ["", f"## {task}", ""]
        flat = {name: {k: v for k, v in r[task].items() if isinstance(v, (int, float))} for name, r in results.items()}
        keys = list(next(iter(flat.values())))
        cis = {name: r[task].get("ci95", {}) for name, r in results.items()}
        lines += ["| model | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
        lines += [f"| {name} | " + " | ".join(with_ci(flat[name].get(k), cis[name].get(k)) for k in keys) + " |"
                  for name in flat]
        for name, r in results.items():
            if "by_category" in r[task]:
                lines += ["", f"{name}: share of pairs where the stereotyped sentence is preferred (0.5: none), "
                          "with 95% intervals", "", "| category | share | 95% CI | pairs |",
                          "| --- | ---: | --- | ---: |"]
                lines += [f"| {c} | {s['share']:.3f} | {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f} | {s['pairs']} |"
                          for c, s in [("overall", r[task]["overall"]), *r[task]["by_category"].items()]]
    if contamination := contamination_rows(results):
        lines += ["", "## contamination", "", "Scored examples that share a 13-word sequence with the training "
                  "corpus in the model's lineage (GPT-3's and lm-eval's rule).", ""]
        lines += md_table(["model", "task", "contaminated", "corpus"], contamination)
    if comparisons:
        lines += ["", "## paired differences", "",
                  "Each model against the first on the same examples: the difference, its 95% interval (paired "
                  "bootstrap) and a two-sided p-value (McNemar's exact test for accuracy).", ""]
        lines += md_table(COMPARISON_HEADER, comparison_rows(comparisons))
    lines += ["", f"split: {cfg.split}, at most {cfg.max_examples} examples per task, {cfg.num_fewshot}-shot; "
              f"intervals: 95%, {cfg.bootstrap} bootstrap resamples of the examples; predictions.jsonl has every "
              "answer.", ""]
    return "\n".join(lines)


def recipe_sections(cfg) -> list[Section]:
    """A recipe report's sections of an eval run: every metric, each model side by side, and the audits."""
    evaluation = read_json(cfg.output, "eval.json") if cfg else None
    if evaluation is None:
        return [absent(t, "eval") for t in ("Evaluation", "Bias audit", "Privacy audit")]
    output = cfg.output
    comparisons = {} if _is_task_table(evaluation) else evaluation.get("comparisons", {})
    by_model = ({"model": evaluation} if _is_task_table(evaluation)
                else {k: v for k, v in evaluation.items() if k != "comparisons"})
    command = rerun("eval", output)
    metric_rows = []
    for model, tasks in by_model.items():
        for task, scores in tasks.items():
            if task in ("bias", "canary"):
                continue
            ci = scores.get("ci95", {})
            metric_rows += [[task, metric, model, with_ci(v, ci.get(metric))] for metric, v in scores.items()
                            if isinstance(v, (int, float)) and metric != "examples"]
    metric_rows.sort(key=lambda r: (r[0], r[1], r[2]))
    tables = [(["task", "metric", "model", "score [95% CI]"], metric_rows)]
    if contaminated := [[task, model, found] for model, task, found, _ in contamination_rows(by_model)]:
        tables.append((["task", "model", "examples in the training corpus (13-gram)"], contaminated))
    if comparisons:
        tables.append((COMPARISON_HEADER, comparison_rows(comparisons)))
    evaluation_section = Section("Evaluation", command, [
        "Held-out examples (test split), each model side by side, with 95% intervals (bootstrap over the examples). "
        "Exact match, F1, ROUGE, BLEU and chrF are percentages (0-100); acc and acc_norm are fractions (0-1). "
        "With several models, each is compared with the first on the same examples: a difference whose interval "
        "excludes 0 is not noise."], tables)
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
    return "comparisons" not in evaluation and any(k in TASKS or k == "canary" for k in evaluation)
