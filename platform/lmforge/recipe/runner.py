"""``lmforge run RECIPE.yaml``: run a recipe's stages in order, in one Ray session.

Run: ``lmforge run jobs/quickstart.yaml pretrain.train.max_steps=50``.

Every stage's config is resolved and validated (by its own config class) before the first stage starts.
A stage writes to ``<output>/<subdir>`` (the registry's default) and reads what the stages before it wrote
(the registry's ``inputs``); any section can set those keys itself, and ``{stage}`` in a section's
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
from lmforge import stage as stage_mod
from lmforge import storage
from lmforge.cluster.session import ray_session
from lmforge.recipe.config import section as recipe_section
from lmforge.stages import STAGES, Input, load, recipe_stages

log = logging.getLogger(__name__)


def resolve(recipe) -> dict[str, Any]:
    """``{stage: its typed config}`` for the recipe's stages, in order, with paths wired between them."""
    outputs = {s.name: _default_output(recipe, s.name, recipe.output) for s in recipe_stages()}
    sections = {}
    for name in recipe.stages:
        stage = STAGES[name]
        section = _fill(copy.deepcopy(recipe_section(recipe, name)), outputs)
        cls = stage.config_class()
        fields = {f for f in cls.__dataclass_fields__}
        if "output" in fields and stage.subdir:
            section.setdefault("output", outputs[name])
        for needed in stage.inputs:
            if _get(section, needed.key) is None:
                source = _source(needed, recipe)
                if source:
                    _set(section, needed.key, storage.join(outputs[source[0]], source[1]) if source[1]
                         else outputs[source[0]])
        if "ray" in fields:
            section["ray"] = cfgmod.to_dict(recipe.ray)
        sections[name] = section
    for name in recipe.stages:  # keys a stage takes from other stages' sections (a sweep's base)
        if STAGES[name].recipe_wire:
            sections[name] = load(STAGES[name].recipe_wire)(sections[name], sections)
    return {name: cfgmod.from_dict(STAGES[name].config_class(), sections[name], name) for name in recipe.stages}


def resolved_dict(recipe) -> dict:
    """The recipe as ``--dry-run`` prints it: each stage's section fully resolved."""
    stages = resolve(recipe)
    out = cfgmod.to_dict(recipe)
    out.update({name: cfgmod.to_dict(cfg) for name, cfg in stages.items()})
    return out


def run(recipe) -> dict:
    """Run the recipe's stages in order; returns each stage's output, seconds and the served completions."""
    stages = resolve(recipe)
    cfgmod.write(recipe, stage_mod.staging(recipe.output))
    if storage.is_remote(recipe.output):
        storage.write_remote_text(storage.join(recipe.output, "config.yaml"), cfgmod.dump(recipe))
    result: dict = {"outputs": {}, "seconds": {}}
    with ray_session(recipe.ray):
        names = list(stages)
        for i, name in enumerate(names):
            stage, cfg = STAGES[name], stages[name]
            start = time.perf_counter()
            log.info("run: stage %s", name)
            if stage.recipe_run:
                result[name] = load(stage.recipe_run)(cfg, recipe)
            else:
                result["outputs"][name] = str(stage.run_fn()(cfg))
            if stage.recipe_feed:  # what this stage's result changes in the stages after it
                stages.update(load(stage.recipe_feed)(cfg, {n: stages[n] for n in names[i + 1:]}))
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


def _get(tree: dict, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value
