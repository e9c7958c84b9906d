"""A recipe's one-page report: ``report.md`` and a self-contained ``report.html`` in the run's output.

Read from what the stages published (``manifest.json``, ``summary.json``, ``loss.png``, ``eval.json``,
``export.json``) and from what the serve stage measured; each section names the command that reproduces
it (every stage's output holds the resolved ``config.yaml`` it ran with). A stage the recipe did not run
gets a line saying so, not an empty table.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import re
from pathlib import Path

from lmforge import stage as stage_mod
from lmforge import storage

log = logging.getLogger(__name__)

SECTIONS = ("Run", "Corpus", "Pretraining", "Fine-tuning", "Sweep", "Evaluation", "Bias audit", "Privacy audit",
            "Export", "Serving")


@dataclasses.dataclass
class Section:
    title: str
    command: str | None = None  # what reproduces it
    lines: list[str] = dataclasses.field(default_factory=list)  # prose, one paragraph each
    tables: list[tuple[list[str], list[list]]] = dataclasses.field(default_factory=list)  # (header, rows)
    images: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # (caption, PNG)


def write(recipe, stages: dict, result: dict) -> Path:
    """Write ``report.md`` and ``report.html`` for a finished recipe run; returns the html's local path
    (for a remote run, both are uploaded beside its stage outputs too)."""
    outputs = {name: cfg.output for name, cfg in stages.items() if getattr(cfg, "output", None)}
    sections = build(recipe, outputs, result, stages)
    local = stage_mod.staging(recipe.output)
    local.mkdir(parents=True, exist_ok=True)
    (local / "report.md").write_text(render_md(sections), encoding="utf-8")
    (local / "report.html").write_text(render_html(sections, recipe.output), encoding="utf-8")
    if storage.is_remote(recipe.output):
        for name in ("report.md", "report.html"):
            storage.write_remote_text(storage.join(recipe.output, name), (local / name).read_text(encoding="utf-8"))
    log.info("report: %s", local / "report.html")
    return local / "report.html"


def _read(output: str, name: str) -> bytes | None:
    """One file of a stage output (local or remote), or None."""
    return storage.read_bytes(storage.join(output, name))


def _json(output: str | None, name: str) -> dict | None:
    raw = _read(output, name) if output else None
    return json.loads(raw) if raw else None


def _rerun(stage: str, output: str) -> str:
    return f"lmforge {stage} {storage.join(output, 'config.yaml')} force=true"


def build(recipe, outputs: dict[str, str], result: dict, stages: dict | None = None) -> list[Section]:
    stages = stages or {}
    sections = [_run(recipe, result)]
    sections.append(_corpus(outputs.get("prepare")))
    sections.append(_training("Pretraining", "pretrain", outputs.get("pretrain")))
    sections.append(_training("Fine-tuning", "finetune", outputs.get("finetune")))
    sections.append(_sweep(stages.get("tune"), outputs.get("tune")))
    evaluation = _json(outputs.get("eval"), "eval.json")
    sections += _evaluation(evaluation, outputs.get("eval"))
    sections.append(_export(outputs.get("export")))
    sections.append(_serving(result.get("serve")))
    return sections


def _run(recipe, result: dict) -> Section:
    rows = [[name, result.get("seconds", {}).get(name, "-"), result.get("outputs", {}).get(name, "(serve)")]
            for name in recipe.stages]
    return Section("Run", f"lmforge run {storage.join(recipe.output, 'config.yaml')}",
                   [f"Stages in order, each output under `{recipe.output}`; a finished stage is skipped on a "
                    "rerun (its seconds are then ~0)."], [(["stage", "seconds", "output"], rows)])


def _corpus(output: str | None) -> Section:
    manifest = _json(output, "manifest.json")
    if manifest is None:
        return Section("Corpus", None, ["`prepare` is not in this recipe."])
    docs = manifest["documents"]
    rows = [["input documents", docs["input"]], ["kept", docs["kept"]]]
    rows += [[f"dropped: {reason}", n] for reason, n in sorted(docs["dropped"].items())]
    rows += [[f"quarantined: {reason}", n] for reason, n in sorted(docs.get("quarantine_reasons", {}).items())]
    rows += [["train tokens / rows", f"{manifest['tokens']['train']} / {manifest['rows']['train']}"],
             ["val tokens / rows", f"{manifest['tokens']['val']} / {manifest['rows']['val']}"]]
    pii = manifest.get("pii") or {}
    section = Section("Corpus", _rerun("prepare", output), [
        f"Every input document is kept, dropped with a reason or quarantined: {docs['input']} in = "
        f"{docs['kept']} kept + {sum(docs['dropped'].values())} dropped + {docs['quarantined']} quarantined."],
        [(["", "documents"], rows)])
    planted = manifest.get("canaries") or {}
    section.lines.append("PII redacted: " + (", ".join(f"{k} {v}" for k, v in sorted(pii.items())) or "none found")
                         + (f"; canaries: {planted.get('secrets', 0)} secrets planted {planted.get('planted', 0)} "
                            "times, before PII redaction (which, when on, scrubs them too)" if planted else "") + ".")
    if png := _read(output, "doc_lengths.png"):
        section.images.append(("Document lengths (words), kept documents", png))
    return section


def _training(title: str, stage: str, output: str | None) -> Section:
    summary = _json(output, "summary.json")
    if summary is None:
        return Section(title, None, [f"`{stage}` is not in this recipe."])
    keys = ("params", "workers", "steps", "best_step", "best_val_loss", "final_loss", "resumed_from", "seconds")
    section = Section(title, _rerun(stage, output), [f"`model/` is the checkpoint of step {summary.get('best_step')} "
                                                     "(the best val loss)."],
                      [(["", "value"], [[k, _fmt(summary.get(k))] for k in keys if k in summary])])
    if png := _read(output, "loss.png"):
        section.images.append((f"{title}: train and val loss", png))
    return section


def _sweep(cfg, output: str | None) -> Section:
    summary = _json(output, "summary.json")
    if summary is None:
        return Section("Sweep", None, ["`tune` is not in this recipe (`lmforge tune jobs/tune_tiny.yaml` runs "
                                       "a sweep on its own)."])
    metric = summary["metric"]
    counts = ", ".join(f"{summary[k]} {k.replace('_', ' ')}" for k in ("completed", "stopped_by_scheduler",
                                                                      "early_stopped", "error") if summary.get(k))
    section = Section("Sweep", _rerun("tune", output), [
        f"{summary['trials']} trials of {summary.get('stage', 'training')} ({counts}): "
        f"{summary['trial_steps']} trial steps run of {summary['trial_steps_if_all_completed']} had every trial "
        f"run to the end; {_fmt(summary['seconds'])} s."])
    best = summary.get("best")
    if best:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        applied = cfg is not None and getattr(cfg, "apply_best", False)
        section.lines.append(f"Best: {best['trial_id']}, {metric} {_fmt(best[metric])} at step {best['step']} "
                             f"({values})" + (f"; `{cfg.stage}` trained with these values." if applied else
                                              f"; `lmforge {summary.get('stage')} {storage.join(output, 'best.yaml')}` "
                                              "trains with them."))
    raw = _read(output, "trials.csv")
    if raw:
        import csv
        import io

        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
        if rows:
            section.tables.append((rows[0], [[_fmt(_number(c)) for c in r] for r in rows[1:]]))
    for name, caption in (("curves.png", f"Sweep: {metric} of every trial (short lines: stopped by the scheduler)"),
                          ("params.png", f"Sweep: best {metric} of each trial against its values")):
        if png := _read(output, name):
            section.images.append((caption, png))
    return section


def _number(cell: str):
    """A CSV cell that is a decimal number as a float (shown to 4 significant digits); ids stay text."""
    return float(cell) if re.fullmatch(r"-?\d+\.\d*(e[-+]?\d+)?", cell, re.IGNORECASE) else cell


def _evaluation(evaluation: dict | None, output: str | None) -> list[Section]:
    if evaluation is None:
        return [Section(t, None, ["`eval` is not in this recipe."]) for t in ("Evaluation", "Bias audit",
                                                                            "Privacy audit")]
    by_model = {"model": evaluation} if _is_task_table(evaluation) else evaluation
    command = _rerun("eval", output)
    metric_rows = []
    for model, tasks in by_model.items():
        for task, scores in tasks.items():
            if task in ("bias", "canary"):
                continue
            metric_rows += [[task, metric, model, _fmt(v)] for metric, v in scores.items()
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
            bias_rows.append([model, _fmt(overall.get("share")), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
                              overall.get("pairs")])
        if "canary" in tasks:
            canary_rows.append([model] + [_fmt(tasks["canary"].get(k)) for k in (
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
    from lmforge.tasks.builtin import TASKS

    return any(k in TASKS or k == "canary" for k in evaluation)


def _export(output: str | None) -> Section:
    report = _json(output, "export.json")
    if report is None:
        return Section("Export", None, ["`export` is not in this recipe."])
    rows = [["precision", report["precision"]], ["fp32 graph: max |logits - PyTorch|",
                                                 _fmt(report["parity"]["max_abs_diff"])],
            ["greedy tokens equal to transformers'", report["greedy_matches_transformers"]]]
    if "quantized_parity" in report:
        agree, q = report["quantized_agreement"], report["precision"]
        rows += [[f"{q} graph: max |logits - PyTorch|", _fmt(report["quantized_parity"]["max_abs_diff"])],
                 [f"{report['precision']} graph: same next token (teacher-forced)", _fmt(agree["top1_agreement"])],
                 [f"{report['precision']} graph: greedy tokens equal before the first difference",
                  f"{agree['greedy_prefix']} of {agree['greedy_tokens']}"]]
    rows += [[f"perplexity {k}", _fmt(v)] for k, v in (report.get("perplexity") or {}).items()]
    rows += [[f"size of {name}", f"{size / 1e6:.2f} MB"] for name, size in report["size_bytes"].items()]
    return Section("Export", _rerun("export", output), ["ONNX with KV cache, checked against PyTorch."],
                   [(["", "value"], rows)])


def _serving(answers: list[dict] | None) -> Section:
    if not answers:
        return Section("Serving", None, ["`serve` is not in this recipe."])
    rows = [[a["kind"], a["prompt"], a["completion"], _fmt(a["seconds"]), a["completion_tokens"],
             _fmt(a["tokens_per_s"])] for a in answers]
    return Section("Serving", "lmforge serve model=<export output> (then any OpenAI client)", [
        "Requests through the `openai` client to the OpenAI-compatible server (Ray Serve, onnxruntime), one at a "
        "time: latency includes the HTTP round trip. `lmforge bench serve` measures throughput under load."],
        [(["kind", "prompt", "answer", "seconds", "tokens", "tokens/s"], rows)])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_md(sections: list[Section]) -> str:
    out = ["# lmforge run report", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.command:
            out += [f"Reproduce: `{s.command}`", ""]
        out += [line + "\n" for line in s.lines]
        for header, rows in s.tables:
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        for caption, _ in s.images:
            out += [f"({caption}: in report.html)", ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f2f2f2}code{background:#f4f4f4;padding:.1em .3em}img{max-width:100%}
.cmd{color:#555;font-size:.9em}figure{margin:.8em 0}figcaption{color:#555;font-size:.9em}"""

# Marks the page once every image has decoded, so a headless browser can tell (data-images-loaded).
SCRIPT = """window.addEventListener('load',function(){var imgs=[].slice.call(document.images);
document.body.dataset.imagesLoaded=String(imgs.every(function(i){return i.complete&&i.naturalWidth>0}));
document.body.dataset.images=String(imgs.length);});"""


def render_html(sections: list[Section], output: str) -> str:
    e = html.escape
    body = [f"<h1>lmforge run report</h1><p class='cmd'>{e(output)}</p>"]
    for s in sections:
        body.append(f"<section id='{e(s.title.lower().replace(' ', '-'))}'><h2>{e(s.title)}</h2>")
        if s.command:
            body.append(f"<p class='cmd'>Reproduce: <code>{e(s.command)}</code></p>")
        body += [f"<p>{e(line)}</p>" for line in s.lines]
        for header, rows in s.tables:
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            body.append("</table>")
        for caption, png in s.images:
            data = base64.b64encode(png).decode()
            body.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                        f"<figcaption>{e(caption)}</figcaption></figure>")
        body.append("</section>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lmforge run report</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")
