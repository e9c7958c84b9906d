"""The ``eval`` stage's work: task metrics, the bias audit and the canary audit, for one model or several.

Run: ``lmforge eval model=runs/smollm2 tasks=[boolq,nq_open,bias] output=runs/eval``, or
``models={base: runs/smollm2, tuned: runs/xsum/model} tasks=[xsum]`` to compare side by side.

The run, step by step: load each task's held-out examples (:mod:`lmforge.tasks`); turn them into
generation and scoring requests (:mod:`.tasks`); run them batched, on Ray Data with model actors
(:mod:`.ray_eval`), in process, or through an endpoint (:mod:`.endpoint`); score them (:mod:`.metrics`)
with a 95% interval per metric and, with several models, each one's paired difference from the first
(:mod:`.intervals`); write ``eval.json`` (``{task: {metric: value, "ci95": {metric: [low, high]}}}``, or
``{model: {task: ...}, "comparisons": {"tuned vs base": {task: {metric: {difference, ci95, p_value}}}}}``
for several models), ``predictions.jsonl`` and ``report.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from lmforge import storage
from lmforge.cluster.session import ray_session
from lmforge.data import canaries
from lmforge.evaluate import intervals, report
from lmforge.evaluate.config import DEFAULT_METRICS, EvalConfig, TaskSpec
from lmforge.evaluate.endpoint import is_endpoint
from lmforge.evaluate.tasks import Task, execute, requests_for, score
from lmforge.outputs import Output
from lmforge.progress import Ticker
from lmforge.tasks.builtin import TASKS, expand
from lmforge.tasks.examples import take
from lmforge.tasks.jsonl import DataError, read_examples

log = logging.getLogger(__name__)


def run(cfg: EvalConfig) -> Path:
    out = Output("eval", cfg)
    if out.skip():
        return out.result()
    tasks = [load_task(t, cfg) for t in expand(cfg.tasks)]  # bad task data fails here, before any model loads
    models = dict(cfg.models) if cfg.models else {_model_name(cfg.model): cfg.model}
    endpoints = _checked_endpoints(models, cfg, tasks)  # a down one, or one without logprobs, fails here too
    partial = out.begin()
    results, rows, seconds, samples = {}, [], {}, {}
    local = cfg.engine == "local" or all(is_endpoint(m) for m in models.values())
    with ray_session(cfg.ray) if not local else contextlib.nullcontext():
        for name, model_dir in models.items():
            results[name], seconds[name], samples[name] = _evaluate(model_dir, tasks, cfg, rows, name,
                                                                    endpoints.get(name))
    _add_contamination(results, models, tasks)
    comparisons = _compare(samples, cfg)
    body = {**results, "comparisons": comparisons} if len(models) > 1 else next(iter(results.values()))
    (partial / "eval.json").write_text(json.dumps(body, indent=2, ensure_ascii=False))
    with (partial / "predictions.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (partial / "report.md").write_text(report.render(results, models, seconds, cfg, comparisons))
    log.info("eval: %s", json.dumps({m: {t: {k: v for k, v in s.items() if isinstance(v, (int, float))}
                                         for t, s in r.items()} for m, r in results.items()}))
    return out.publish()


def _model_name(model: str) -> str:
    return model.rstrip("/").split("://", 1)[-1].replace("/", "_") if is_endpoint(model) else Path(model).name


def load_task(spec: str | TaskSpec, cfg: EvalConfig) -> Task:
    """A built-in task's held-out examples (few-shot ones from its train split), or a JSONL task, or the
    canary audit's secrets."""
    fewshot = {"num_fewshot": cfg.num_fewshot, "seed": cfg.seed, "chat": cfg.chat}
    limit = cfg.max_examples if isinstance(spec, str) or spec.max_examples is None else spec.max_examples
    if isinstance(spec, str) or spec.data is None:
        name = spec if isinstance(spec, str) else spec.name
        if name not in TASKS:
            from lmforge.config import ConfigError

            raise ConfigError(f"tasks: unknown task {name!r} (built-in: {', '.join(TASKS)}, the group "
                              "`standard`, or {name, data, metrics})")
        d = TASKS[name]
        every = d.load()
        # shots from the train split, which evaluation never scores (with split=all: from the other examples)
        shots = (take(every, "train") if cfg.split == "test" else every) if cfg.num_fewshot else []
        return Task(d.name, d.kind, d.metrics, take(every, cfg.split, limit), d.max_tokens, d.stop,
                    description=d.description, target_delimiter=d.target_delimiter, shots=shots, **fewshot)
    if spec.name == "canary":
        data = spec.data if spec.data.endswith(".jsonl") else storage.join(spec.data, "canaries.jsonl")
        found = canaries.read(Path(storage.local_file(data)))
        return Task("canary", "canary", (), [], canaries=found)
    every = read_examples(spec.data)
    kinds = {"choice" if e.choices else "generate" for e in every}
    if len(kinds) > 1:
        raise DataError(f"{spec.data}: mixes multiple-choice rows (with \"choices\") and generation rows; "
                        "give them as two tasks")
    kind = kinds.pop()
    examples = every[:limit] if limit else every
    # shots from the rows not scored; with every row scored, from the others (never the example itself)
    shots = (every[len(examples):] or every) if cfg.num_fewshot else []
    metrics = tuple(spec.metrics or DEFAULT_METRICS[kind])
    return Task(spec.name, kind, metrics, examples, spec.max_tokens, tuple(spec.stop), description=spec.description,
                target_delimiter=spec.target_delimiter, shots=shots, **fewshot)


def _checked_endpoints(models: dict[str, str], cfg: EvalConfig, tasks: list[Task]) -> dict:
    """``{name: EndpointBackend}`` of the endpoint models, each checked to answer (with prompt logprobs
    when a task scores)."""
    from lmforge.evaluate.endpoint import EndpointBackend

    needs_scores = any(t.kind != "generate" or "perplexity" in t.metrics or t.canaries for t in tasks)
    out = {name: EndpointBackend.from_config(model, cfg) for name, model in models.items() if is_endpoint(model)}
    for backend in out.values():
        backend.check(logprobs=needs_scores)
    return out


def _evaluate(model_dir: str, tasks: list[Task], cfg: EvalConfig, rows: list[dict], name: str, endpoint=None):
    from transformers import AutoTokenizer

    start = time.perf_counter()
    if endpoint is not None:
        backend = endpoint
        requests = [r for t in tasks for r in requests_for(t, backend.tokenizer)]
        log.info("eval: %s: %d requests over %d tasks, through %s", name, len(requests), len(tasks), model_dir)
        ticker = Ticker(log, f"eval: {name}", len(requests), "requests")
        return _scored(tasks, execute(backend, requests, cfg.batch_size, ticker.update), rows, name, cfg, start)
    from lmforge.evaluate.backends import load_backend, split_adapter

    model_dir, adapter = split_adapter(model_dir)  # an exported adapter runs on its base's export
    # an s3:// model stays a URI for the actors, each of which mirrors it on its own node
    shipped = storage.absolute(model_dir)
    model_dir = storage.local_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    requests = [r for t in tasks for r in requests_for(t, tokenizer)]
    log.info("eval: %s: %d requests over %d tasks", name, len(requests), len(tasks))
    if cfg.engine == "ray":
        from lmforge.evaluate.ray_eval import execute_on_ray

        results = execute_on_ray(shipped, requests, cfg.batch_size, cfg.threads, cfg.actors, cfg.actor_cpus,
                                  label=f"eval: {name}", adapter=adapter)
    else:
        ticker = Ticker(log, f"eval: {name}", len(requests), "requests")
        results = execute(load_backend(model_dir, cfg.threads, adapter), requests, cfg.batch_size, ticker.update)
    return _scored(tasks, results, rows, name, cfg, start)


def _add_contamination(results: dict[str, dict], models: dict[str, str], tasks: list[Task]) -> None:
    """Per task, how many scored examples share a 13-gram with each model's training corpus, when its
    lineage leads to a prepare output (null: not known); models trained on the same corpus share one scan."""
    from lmforge.evaluate import contamination

    scored = [t for t in tasks if t.kind in ("generate", "choice")]
    by_corpora: dict[tuple[str, ...], dict | None] = {}
    for name, model in models.items():
        corpora = () if is_endpoint(model) else tuple(contamination.training_corpora(storage.absolute(model)))
        if corpora not in by_corpora:
            by_corpora[corpora] = contamination.report(list(corpora), scored)
        found = by_corpora[corpora]
        for task in scored:
            entry = found.get(task.name) if found else None
            results[name][task.name]["contamination"] = (
                {"contaminated": entry["contaminated"], "of": entry["examples"], "ngram": found["ngram"],
                 "corpus": found["corpus"], "ids": entry["ids"][:20]} if entry else None)

def _scored(tasks: list[Task], results: dict, rows: list[dict], name: str, cfg: EvalConfig, start: float):
    """Each task's metrics with their 95% intervals, the prediction rows, and the samples behind them."""
    scores, samples = {}, {}
    for task in tasks:
        scores[task.name], task_rows, samples[task.name] = score(task, results)
        ci = {m: intervals.interval(s, cfg.bootstrap, cfg.seed) for m, s in samples[task.name].items()}
        if any(v is not None for v in ci.values()):
            scores[task.name]["ci95"] = ci
        rows += [{"model": name, **r} for r in task_rows]
    return scores, round(time.perf_counter() - start, 1), samples


def _compare(samples: dict[str, dict], cfg: EvalConfig) -> dict:
    """Each model after the first against the first, on the same examples: ``{"tuned vs base": {task:
    {metric: {difference, ci95, p_value, test}}}}``."""
    names = list(samples)
    out = {}
    for other in names[1:]:
        pair = {}
        for task, by_metric in samples[names[0]].items():
            pair[task] = {m: intervals.paired(s, samples[other][task][m], cfg.bootstrap, cfg.seed)
                          for m, s in by_metric.items() if m in samples[other].get(task, {})}
        out[f"{other} vs {names[0]}"] = {t: v for t, v in pair.items() if v}
    return out
