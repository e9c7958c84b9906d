"""How many of a task's scored examples the model saw in training: its lineage, followed back from the
model dir through each stage output's ``config.yaml`` to the ``prepare`` output whose documents it was
trained on, then the 13-gram check of :mod:`lmforge.tasks.contamination` over those documents.

A model without a ``prepare`` output in its lineage (an imported checkpoint, an endpoint, a dir of your
own) gets ``null``: its training data is not known here, not clean.
"""

from __future__ import annotations

import logging
import os

import yaml

from lmforge import storage
from lmforge.data import manifest
from lmforge.outputs import DONE_MARKER
from lmforge.tasks.contamination import TestIndex

log = logging.getLogger(__name__)


def _paths_in(value) -> list[str]:
    """Every string in a config that names an existing local dir."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and "://" not in value and os.path.isdir(value) else []


def training_corpora(model: str, depth: int = 5) -> list[str]:
    """The prepare outputs in the lineage of ``model`` (a local dir), nearest first."""
    found, seen, frontier = [], set(), [model]
    for _ in range(depth):
        upstream = []
        for path in frontier:
            if "://" in path or not os.path.isdir(path):
                continue
            run = storage.find_above(path, DONE_MARKER)
            if run is None or run[0] in seen:
                continue
            seen.add(run[0])
            if manifest.is_prepared(run[0]):
                found.append(run[0])
                continue
            config = os.path.join(run[0], "config.yaml")
            if os.path.isfile(config):
                with open(config, encoding="utf-8") as f:
                    upstream += _paths_in(yaml.safe_load(f))
        frontier = upstream
    return found


def _documents(corpus: str):
    for table in manifest.kept_documents(corpus, ["text"]):
        yield from table.column("text").to_pylist()


def report(corpora: list[str], tasks) -> dict | None:
    """``{"corpus", "ngram", task: {"examples", "contaminated", "ids"}}`` of the tasks with examples against
    the training corpora (prepare outputs), or None when there are none (the training data is not known)."""
    scored = {t.name: t.examples for t in tasks if t.examples}
    if not corpora or not scored:
        return None
    index = TestIndex(scored)
    hit = {name: set() for name in scored}
    for corpus in corpora:
        for task, ids in index.contaminated(_documents(corpus)).items():
            hit[task] |= ids
    out = {"corpus": corpora, "ngram": index.n}
    for name, examples in scored.items():
        out[name] = {"examples": len(examples), "contaminated": len(hit[name]), "ids": sorted(hit[name])}
    log.info("eval: contamination against %s: %s", ", ".join(corpora),
             {k: v["contaminated"] for k, v in out.items() if isinstance(v, dict)})
    return out
