"""The ``eval`` stage's work: task metrics, the bias audit and the canary audit, for one model or several.

Run: ``lmforge eval model=runs/smollm2 tasks=[boolq,nq_open,bias] output=runs/eval``, or
``models={base: runs/smollm2, tuned: runs/xsum/model} tasks=[xsum]`` to compare side by side.

The run, step by step: load each task's held-out examples (:mod:`lmforge.tasks`); turn them into
generation and scoring requests (:mod:`.tasks`); run them batched, on Ray Data with model actors
(:mod:`.ray_eval`) or in process; score them (:mod:`.metrics`); write ``eval.json`` (``{task: {metric:
value}}``, or ``{model: {task: ...}}`` for several models), ``predictions.jsonl`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lmforge import storage
from lmforge.cluster.session import ray_session
from lmforge.data import canaries
from lmforge.evaluate import report
from lmforge.evaluate.config import EvalConfig, TaskSpec
from lmforge.evaluate.tasks import Task, execute, requests_for, score
from lmforge.outputs import Output
from lmforge.progress import Ticker
from lmforge.tasks.builtin import TASKS
from lmforge.tasks.examples import take
from lmforge.tasks.jsonl import read_examples

log = logging.getLogger(__name__)


def run(cfg: EvalConfig) -> Path:
    out = Output("eval", cfg)
    if out.skip():
        return out.result()
    tasks = [load_task(t, cfg) for t in cfg.tasks]  # bad task data fails here, before any model loads
    models = dict(cfg.models) if cfg.models else {Path(cfg.model).name: cfg.model}
    partial = out.begin()
    results, rows, seconds = {}, [], {}
    if cfg.engine == "ray":
        with ray_session(cfg.ray):
            for name, model_dir in models.items():
                results[name], seconds[name] = _evaluate(model_dir, tasks, cfg, rows, name)
    else:
        for name, model_dir in models.items():
            results[name], seconds[name] = _evaluate(model_dir, tasks, cfg, rows, name)
    body = results if len(models) > 1 else next(iter(results.values()))
    (partial / "eval.json").write_text(json.dumps(body, indent=2, ensure_ascii=False))
    with (partial / "predictions.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (partial / "report.md").write_text(report.render(results, models, seconds, cfg))
    log.info("eval: %s", json.dumps({m: {t: {k: v for k, v in s.items() if isinstance(v, (int, float))}
                                         for t, s in r.items()} for m, r in results.items()}))
    return out.publish()


def load_task(spec: str | TaskSpec, cfg: EvalConfig) -> Task:
    """A built-in task's held-out examples, or a JSONL task, or the canary audit's secrets."""
    if isinstance(spec, str):
        if spec not in TASKS:
            from lmforge.config import ConfigError

            raise ConfigError(f"tasks: unknown task {spec!r} (built-in: {', '.join(TASKS)}, or {{name, data, "
                              "metrics}})")
        d = TASKS[spec]
        return Task(d.name, d.kind, d.metrics, take(d.load(), cfg.split, cfg.max_examples), d.max_tokens, d.stop,
                    chat=cfg.chat)
    if spec.name == "canary":
        data = spec.data if spec.data.endswith(".jsonl") else storage.join(spec.data, "canaries.jsonl")
        found = canaries.read(Path(storage.local_file(data)))
        return Task("canary", "canary", (), [], canaries=found)
    examples = read_examples(spec.data, cfg.max_examples)
    return Task(spec.name, "generate", tuple(spec.metrics), examples, spec.max_tokens, tuple(spec.stop),
                chat=cfg.chat)


def _evaluate(model_dir: str, tasks: list[Task], cfg: EvalConfig, rows: list[dict], name: str):
    from transformers import AutoTokenizer

    start = time.perf_counter()
    # an s3:// model stays a URI for the actors, each of which mirrors it on its own node
    shipped = storage.absolute(model_dir)
    model_dir = storage.local_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    requests = [r for t in tasks for r in requests_for(t, tokenizer)]
    log.info("eval: %s: %d requests over %d tasks", name, len(requests), len(tasks))
    if cfg.engine == "ray":
        from lmforge.evaluate.ray_eval import execute_on_ray

        results = execute_on_ray(shipped, requests, cfg.batch_size, cfg.threads, cfg.actors, cfg.actor_cpus,
                                  label=f"eval: {name}")
    else:
        from lmforge.evaluate.backends import load_backend

        ticker = Ticker(log, f"eval: {name}", len(requests), "requests")
        results = execute(load_backend(model_dir, cfg.threads), requests, cfg.batch_size, ticker.update)
    scores = {}
    for task in tasks:
        scores[task.name], task_rows = score(task, results)
        rows += [{"model": name, **r} for r in task_rows]
    return scores, round(time.perf_counter() - start, 1)
