"""``lmforge bench eval``: lmforge's multiple-choice scores against lm-evaluation-harness's on the same rows,
and both timed in one run.

lm-eval runs its *own* task templates (its piqa, openbookqa, social_iqa, commonsense_qa, mmlu and boolq
YAMLs, included as they ship) on the rows lmforge scores, handed over in the field names of lm-eval's
datasets (:class:`lmforge.tasks.benchmarks.Benchmark`): the prompts are the harness's, not a copy of ours.
Per task: both accuracies, the share of examples where both pick the same choice, and seconds.

Run: ``lmforge bench eval`` (imports SmolLM2-135M-Instruct and exports int8 under ``work_dir`` the first
time); needs ``pip install lm-eval`` (a dev extra).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lmforge import config as cfgmod
from lmforge.bench import write_result
from lmforge.bench.config import EvalBenchConfig
from lmforge.tasks.benchmarks import STANDARD, Benchmark
from lmforge.tasks.examples import take

log = logging.getLogger(__name__)


def chosen_docs(bench: Benchmark, split: str, rows: int | None) -> list[dict]:
    """The rows lmforge's eval scores (the same split and limit), in lm-eval's field names."""
    ids = {e.id for e in take(bench.examples(), split, rows)}
    return [d for d in bench.docs() if d["id"] in ids]


def write_lm_eval_tasks(names: list[str], split: str, rows: int | None, work: Path) -> tuple[Path, dict]:
    """A folder of lm-eval task YAMLs, each including lm-eval's own task and pointing it at our rows:
    ``(include_path, {our name: lm-eval task name})``."""
    import lm_eval

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    yamls = {"piqa": "piqa/piqa.yaml", "openbookqa": "openbookqa/openbookqa.yaml", "social_iqa": "siqa/siqa.yaml",
             "commonsense_qa": "commonsense_qa/default.yaml", "mmlu": "mmlu/default/_default_template_yaml",
             "boolq": "super_glue/boolq/default.yaml"}
    work.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in STANDARD}
    names_out = {}
    for name in names:
        bench = by_name[name]
        data = work / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in chosen_docs(bench, split, rows)))
        task = f"lmforge_{name}"
        lines = [f"include: {tasks_root / yamls[bench.lm_eval_task]}", f"task: {task}", "tag: []",
                 "dataset_path: json", "dataset_name: null", f"dataset_kwargs: {{data_files: {{test: '{data}'}}}}",
                 "training_split: null", "validation_split: null", "fewshot_split: null", "test_split: test"]
        if bench.description:
            lines.append(f"description: {json.dumps(bench.description)}")
        (work / f"{task}.yaml").write_text("\n".join(lines) + "\n")
        names_out[name] = task
    return work, names_out


def lm_eval_choices(model_dir: str, names: list[str], split: str, rows: int | None, work: Path,
                    batch_size: int) -> tuple[dict, float]:
    """lm-eval's hf backend on our rows: ``({task: {doc id: each choice's log-likelihood}}, seconds)``
    (loading included)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    include, tasks = write_lm_eval_tasks(names, split, rows, work)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                  tasks=list(tasks.values()), task_manager=TaskManager(include_path=str(include)),
                                  num_fewshot=0, batch_size=batch_size, log_samples=True, device="cpu")
    seconds = time.perf_counter() - start
    chosen = {}
    for name, task in tasks.items():
        chosen[name] = {}
        for sample in out["samples"][task]:
            chosen[name][sample["doc"]["id"]] = [r[0] for r in sample["filtered_resps"]]
    return chosen, seconds


def lmforge_choices(model: str, names: list[str], split: str, rows: int | None, work: Path, batch_size: int,
                    **extra) -> tuple[dict, dict, float]:
    """``lmforge eval`` of the same rows: ``({task: {id: each choice's log-likelihood}}, eval.json, seconds)``."""
    from lmforge.evaluate import evaluation
    from lmforge.evaluate.config import EvalConfig

    start = time.perf_counter()
    out = evaluation.run(cfgmod.from_dict(EvalConfig, {
        "model": model, "tasks": names, "split": split, "max_examples": rows, "engine": "local",
        "batch_size": batch_size, "output": str(work), "force": True, **extra}))
    seconds = time.perf_counter() - start
    chosen: dict[str, dict] = {name: {} for name in names}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        chosen[row["task"]][row["id"]] = row["logprobs"]
    return chosen, json.loads((out / "eval.json").read_text()), seconds


def _pick(lls: list[float], lengths: list[int] | None = None) -> int:
    scores = [ll / n for ll, n in zip(lls, lengths)] if lengths else lls
    return max(range(len(scores)), key=scores.__getitem__)


def agreement(ours: dict, theirs: dict, gold: dict) -> dict:
    """Per task: both accuracies (acc and acc_norm) and the share of examples where both chose the same
    choice, by log-likelihood and by log-likelihood per character."""
    out = {}
    for name, mine in ours.items():
        ids = sorted(mine)
        answer = {i: gold[name][i][0] for i in ids}
        lengths = {i: [len(c) for c in gold[name][i][1]] for i in ids}
        a = {i: _pick(mine[i]) for i in ids}
        b = {i: _pick(theirs[name][i]) for i in ids}
        a_norm = {i: _pick(mine[i], lengths[i]) for i in ids}
        b_norm = {i: _pick(theirs[name][i], lengths[i]) for i in ids}
        n = len(ids)
        out[name] = {"examples": n, "same_choice": sum(a[i] == b[i] for i in ids) / n,
                     "same_choice_norm": sum(a_norm[i] == b_norm[i] for i in ids) / n,
                     "acc_lmforge": sum(a[i] == answer[i] for i in ids) / n,
                     "acc_lm_eval": sum(b[i] == answer[i] for i in ids) / n,
                     "acc_norm_lmforge": sum(a_norm[i] == answer[i] for i in ids) / n,
                     "acc_norm_lm_eval": sum(b_norm[i] == answer[i] for i in ids) / n,
                     "max_abs_loglikelihood_diff": max(abs(x - y) for i in ids
                                                       for x, y in zip(mine[i], theirs[name][i]))}
    return out


def gold_answers(names: list[str], split: str, rows: int | None) -> dict:
    """``{task: {id: (gold index, choices)}}``."""
    by_name = {b.name: b for b in STANDARD}
    return {n: {e.id: (e.answer, e.choices) for e in take(by_name[n].examples(), split, rows)} for n in names}


def run(cfg: EvalBenchConfig) -> dict:
    from lmforge.bench.models import prepare_models

    hf, exports = prepare_models(cfg.source, cfg.work_dir, ["int8"] if cfg.export else [], cfg.ppl_text)
    work = Path(cfg.work_dir) / "eval"
    theirs, lm_eval_s = lm_eval_choices(str(hf), cfg.tasks, cfg.split, cfg.rows, work / "lm_eval", cfg.batch_size)
    ours, _, ours_s = lmforge_choices(str(hf), cfg.tasks, cfg.split, cfg.rows, work / "hf", cfg.batch_size)
    gold = gold_answers(cfg.tasks, cfg.split, cfg.rows)
    result = {"model": str(hf), "rows_per_task": cfg.rows, "split": cfg.split,
              "seconds": {"lm_eval_hf": round(lm_eval_s, 1), "lmforge_hf": round(ours_s, 1)},
              "agreement_hf": agreement(ours, theirs, gold)}
    if cfg.export:
        on_export, _, export_s = lmforge_choices(str(exports["int8"]), cfg.tasks, cfg.split, cfg.rows,
                                                 work / "int8", cfg.batch_size)
        result["seconds"]["lmforge_int8"] = round(export_s, 1)
        result["agreement_int8_vs_lm_eval_hf"] = agreement(on_export, theirs, gold)
    log.info("bench eval: %s", json.dumps(result))
    return write_result(result, cfg.output)
