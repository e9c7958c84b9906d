"""A recipe's one-page report: ``report.md`` and a self-contained ``report.html`` in the run's output.

The run's own section (stages, seconds, outputs), then each recipe stage's sections in registry order,
built by the stage itself from what it published (its ``report`` hook: :mod:`lmforge.stages`), with a
line for a stage the recipe did not run. Rendering is :mod:`lmforge.report`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge import storage, uploads
from lmforge.report import Section, render_html, render_md
from lmforge.stages import recipe_stages

log = logging.getLogger(__name__)


def write(recipe, stages: dict, result: dict) -> Path:
    """Write ``report.md`` and ``report.html`` for a finished recipe run; returns the html's local path
    (for a remote run, both are uploaded beside its stage outputs too)."""
    sections = build(recipe, stages, result)
    local = storage.staging(recipe.output)
    local.mkdir(parents=True, exist_ok=True)
    texts = {"report.md": render_md(sections), "report.html": render_html(sections, recipe.output)}
    for name, text in texts.items():
        (local / name).write_text(text, encoding="utf-8")
        uploads.mirror_back(local / name, storage.join(recipe.output, name))
    log.info("report: %s", local / "report.html")
    return local / "report.html"


def build(recipe, stages: dict, result: dict) -> list[Section]:
    """The run's section, then every recipe stage's (``stages``: the typed configs of those it ran)."""
    sections = [_run(recipe, result)]
    for stage in recipe_stages():
        if report := stage.hook("report"):
            sections += report(stages.get(stage.name), result)
    return sections


def _run(recipe, result: dict) -> Section:
    rows = [[name, result.get("seconds", {}).get(name, "-"), result.get("outputs", {}).get(name, "(serve)")]
            for name in recipe.stages]
    return Section("Run", f"lmforge run {storage.join(recipe.output, 'config.yaml')}",
                   [f"Stages in order, each output under `{recipe.output}`; a finished stage is skipped on a "
                    "rerun (its seconds are then ~0)."], [(["stage", "seconds", "output"], rows)])
