"""The ``serve`` stage's entry (the contract: :mod:`lmforge.stages`); the work is :mod:`.server`.

Run: ``lmforge serve model=runs/onnx serve.port=8000``, then
``curl 127.0.0.1:8000/v1/completions -d '{"prompt": "The", "max_tokens": 16}'``.
"""

from __future__ import annotations

from lmforge.report import Section, absent, fmt
from lmforge.serve.config import ServeConfig as Config
from lmforge.stages import Input

SUMMARY = "OpenAI-compatible HTTP API on Ray Serve and onnxruntime (foreground until Ctrl-C)"
INPUTS = (Input("model", (("export", ""),)),)


def run(cfg: Config) -> None:
    from lmforge.serve import server

    return server.run(cfg)


def recipe_run(cfg: Config, recipe) -> list[dict]:
    """In a recipe: start the server, answer the recipe's prompts and questions through it, stop it."""
    from lmforge.serve import server

    return server.answer_prompts(cfg, recipe)


def report(cfg: Config | None, result: dict) -> list[Section]:
    answers = result.get("serve")
    if not answers:
        return [absent("Serving", "serve")]
    rows = [[a["kind"], a.get("model", ""), a["prompt"], a["completion"], fmt(a["seconds"]), a["completion_tokens"],
             fmt(a["tokens_per_s"])] for a in answers]
    return [Section("Serving", "lmforge serve model=<export output> (then any OpenAI client)", [
        "Requests through the `openai` client to the OpenAI-compatible server (Ray Serve, onnxruntime), one at a "
        "time: latency includes the HTTP round trip. `lmforge bench serve` measures throughput under load."],
        [(["kind", "model", "prompt", "answer", "seconds", "tokens", "tokens/s"], rows)])]
