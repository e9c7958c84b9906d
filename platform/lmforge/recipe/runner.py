"""``lmforge run RECIPE.yaml``: run a recipe's stages in order, in one Ray session.

Run: ``lmforge run jobs/quickstart.yaml pretrain.train.max_steps=50``.

Every stage's config is resolved and validated (by its own config class) before the first stage starts.
A stage writes to ``<output>/<subdir>`` (the registry's default) and reads what the stages before it wrote
(its entry module's ``INPUTS``); any section can set those keys itself, and ``{stage}`` in a section's
strings names that stage's output (``models: {base: "{pretrain}/model"}``). A finished stage with an unchanged
config is skipped, as when it runs alone. A ``tune`` stage sweeps the recipe's section of the stage it
sweeps (finetune, when the recipe has one), and that stage, run after it, trains with the best values.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from typing import Any

from lmforge import config as cfgmod
from lmforge import storage, uploads
from lmforge.cluster.session import ray_session
from lmforge.recipe.config import section as recipe_section
from lmforge.stages import STAGES, Input, StageConfig, UsesRay, recipe_stages

log = logging.getLogger(__name__)


def resolve(recipe) -> dict[str, Any]:
    """``{stage: its typed config}`` for the recipe's stages, in order, with paths wired between them."""
    outputs = {s.name: _default_output(recipe, s.name, recipe.output) for s in recipe_stages()}
    sections = {}
    for name in recipe.stages:
        stage = STAGES[name]
        section = _fill(copy.deepcopy(recipe_section(recipe, name)), outputs)
        cls = stage.config_class()
        if issubclass(cls, StageConfig):
            section.setdefault("output", outputs[name])
        for needed in stage.inputs:
            if cfgmod.get_dotted(section, needed.key) is None and (source := _source(needed, recipe)):
                cfgmod.set_dotted(section, needed.key, storage.join(outputs[source[0]], source[1]) if source[1]
                                  else outputs[source[0]])
        if issubclass(cls, UsesRay):
            section["ray"] = cfgmod.to_dict(recipe.ray)
        sections[name] = section
    for name in recipe.stages:  # keys a stage takes from other stages' sections (a sweep's base)
        if wire := STAGES[name].hook("wire"):
            sections[name] = wire(sections[name], sections)
    return {name: cfgmod.from_dict(STAGES[name].config_class(), sections[name], name) for name in recipe.stages}


def dry_run(recipe) -> dict:
    """The recipe as ``--dry-run`` prints it: each stage's section fully resolved, as the stage's own
    ``--dry-run`` shows it (a sweep's space checked against the stage it sweeps)."""
    out = cfgmod.to_dict(recipe)
    for name, cfg in resolve(recipe).items():
        shown = STAGES[name].hook("dry_run")
        out[name] = cfgmod.to_dict(shown(cfg) if shown else cfg)
    return out


def run(recipe) -> dict:
    """Run the recipe's stages in order; returns each stage's output, seconds and the served completions."""
    stages = resolve(recipe)
    written = cfgmod.write(recipe, storage.staging(recipe.output))
    uploads.mirror_back(written, storage.join(recipe.output, "config.yaml"))
    result: dict = {"outputs": {}, "seconds": {}}
    with ray_session(recipe.ray):
        names = list(stages)
        for i, name in enumerate(names):
            stage, cfg = STAGES[name], stages[name]
            start = time.perf_counter()
            log.info("run: stage %s", name)
            if recipe_run := stage.hook("recipe_run"):
                result[name] = recipe_run(cfg, recipe)
            else:
                result["outputs"][name] = str(stage.run_fn()(cfg))
            if feed := stage.hook("feed"):  # what this stage's result changes in the stages after it
                stages.update(feed(cfg, {n: stages[n] for n in names[i + 1:]}))
            result["seconds"][name] = round(time.perf_counter() - start, 1)
    from lmforge.recipe import report

    result["report"] = str(report.write(recipe, stages, result))
    return result


def _fill(value: Any, outputs: dict[str, str]) -> Any:
    """``{stage}`` in a section's strings -> that stage's output in this recipe (``{pretrain}/model``), for
    keys the registry does not wire (an eval's ``models: {base: "{pretrain}/model"}``)."""
    if isinstance(value, dict):
        return {k: _fill(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, outputs) for v in value]
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: outputs.get(m.group(1), m.group(0)), value)
    return value


def _default_output(recipe, name: str, root: str) -> str:
    return str(recipe_section(recipe, name).get("output") or storage.join(root, STAGES[name].subdir or name))


def _source(needed: Input, recipe) -> tuple[str, str] | None:
    """The stage that provides ``needed``: the first listed source the recipe runs, else the first one
    whose section the recipe sets (its output from an earlier run), else the last one listed."""
    for stage, path in needed.sources:
        if stage in recipe.stages:
            return stage, path
    for stage, path in needed.sources:
        if recipe_section(recipe, stage):
            return stage, path
    return needed.sources[-1] if needed.sources else None

