"""A sweep as a recipe stage: it sweeps the recipe's own section of a stage that trains (by default the
last one the recipe runs), and that stage, when it runs after the sweep, trains with the best trial's
values. No Ray.

``prepare -> pretrain -> tune -> finetune``: the sweep's base is the recipe's ``finetune`` section (its
``model.init_from`` already wired to the pretrained model), with the sweep section's ``base`` mapping
laid over it (fewer steps, one worker per trial); ``finetune`` then runs in full with, say, the best
``train.lr``. The values come from the sweep's ``summary.json``, so a rerun that skips the finished
sweep feeds the same values, and a sweep that picks other values makes the swept stage run again (its
config changed).
"""

from __future__ import annotations

import copy
import json
import logging

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.config import ConfigError
from lmforge.stages import training_stages
from lmforge.tune import space
from lmforge.tune.config import TuneConfig
from lmforge.tune.results import short

log = logging.getLogger("lmforge.tune")

NOT_SWEPT = ("output", "ray", "force", "tuned_by")  # the sweep sets these for its trials itself


def wire(section: dict, sections: dict[str, dict]) -> dict:
    """The sweep's section with ``stage`` and ``base`` filled from the recipe: a ``base`` path is used as
    is; a ``base`` mapping (or none) is laid over the swept stage's section."""
    if isinstance(section.get("base"), str):
        return section
    trains = [s.name for s in training_stages()]
    swept = section.get("stage") or next((s for s in reversed(sections) if s in trains), None)
    if swept not in sections or swept not in trains:
        raise ConfigError(f"tune.stage: the recipe has no {swept or 'training'} stage to sweep (stages that "
                          f"train: {', '.join(trains)}); add it to `stages`, or give tune.base (a config, or a "
                          "path to one)")
    own = {k: v for k, v in copy.deepcopy(sections[swept]).items() if k not in NOT_SWEPT}
    return {**section, "stage": swept, "base": cfgmod.merge(own, section.get("base") or {})}


def feed(cfg: TuneConfig, later: dict) -> dict:
    """The stages still to run, the swept one (if among them) with the best trial's values set."""
    swept = cfg.stage
    if not cfg.apply_best or swept not in later:
        return later
    summary = storage.read_text(storage.join(cfg.output, "summary.json"))
    best = (json.loads(summary) if summary else {}).get("best")
    if not best:
        log.warning("tune: no trial reported %s; %s runs with its own values", cfg.metric, swept)
        return later
    target = later[swept]
    values = cfgmod.to_dict(target)
    tuned = cfgmod.from_dict(type(target), space.trial_dict(values, best["params"], {"tuned_by": cfg.output}), swept)
    log.info("tune: %s trains with the best trial's values (%s, %s %.4g): %s", swept, best["trial_id"], cfg.metric,
             best[cfg.metric], ", ".join(f"{k}={short(v)}" for k, v in best["params"].items()))
    return {**later, swept: tuned}
