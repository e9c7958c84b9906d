"""One probe of a deployment: its probe set evaluated through its API (``lmforge eval`` against the
endpoint), as flat ``task.metric`` figures labelled with the served model and version."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge import config as cfgmod


def served(endpoint: str, api_key_env: str) -> dict:
    """The first model ``/v1/models`` lists: ``{"model", "version", "root"}``; raises ConnectionError when
    the deployment does not answer."""
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key=os.environ.get(api_key_env) or "none", max_retries=2,
                           timeout=30)
    try:
        listed = client.models.list().data
    except openai.APIError as e:
        raise ConnectionError(f"{endpoint}: no deployment answers there ({e})") from e
    if not listed:
        raise ConnectionError(f"{endpoint}: /v1/models lists no model")
    extra = listed[0].model_extra or {}
    return {"model": listed[0].id, "version": extra.get("version"), "root": extra.get("root")}


def flat(results: dict) -> dict[str, float]:
    """``{"task.metric": value}`` of an eval.json for one model (counts and intervals left out)."""
    return {f"{task}.{metric}": float(value) for task, scores in results.items() if isinstance(scores, dict)
            for metric, value in scores.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "examples"}


def run_probe(endpoint: str, tasks: list, out: Path, *, max_examples: int, chat: bool = False, bootstrap: int = 200,
              tokenizer: str | None = None, api_key_env: str = "OPENAI_API_KEY") -> dict:
    """Evaluate ``tasks`` through ``endpoint`` into ``out``; ``{"model", "version", "metrics", "ci95",
    "eval"}``, or with ``"changed": True`` when the served version changed during the probe."""
    from lmforge.evaluate import evaluation
    from lmforge.evaluate.config import EvalConfig

    before = served(endpoint, api_key_env)
    cfg = cfgmod.from_dict(EvalConfig, {
        "model": endpoint, "tokenizer": tokenizer or before["root"], "tasks": _plain(tasks), "output": str(out),
        "max_examples": max_examples, "chat": chat, "bootstrap": bootstrap, "engine": "local",
        "api_key_env": api_key_env, "force": True})
    path = Path(str(evaluation.run(cfg)))
    results = json.loads((path / "eval.json").read_text())
    after = served(endpoint, api_key_env)
    ci = {f"{t}.{m}": v for t, s in results.items() if isinstance(s, dict)
          for m, v in (s.get("ci95") or {}).items()}
    return {**after, "metrics": flat(results), "ci95": ci, "eval": str(path),
            "changed": before["version"] != after["version"]}


def _plain(tasks: list) -> list:
    return [t if isinstance(t, str) else cfgmod.to_dict(t) for t in tasks]
