"""Config of ``lmforge run``: a recipe's own keys plus one section per stage in the registry.

The sections are generated from :mod:`lmforge.stages`, so a new stage is a recipe section without an
edit here. Each section is a plain mapping here; :func:`lmforge.recipe.runner.resolve` validates it with
its stage's own config class before the first stage starts.
"""

from __future__ import annotations

import dataclasses
import keyword

from lmforge.config import check
from lmforge.stages import STAGES, UsesRay, recipe_stages


@dataclasses.dataclass(kw_only=True)
class RecipeBase(UsesRay):
    output: str  # root dir; each stage writes a sub-dir of it unless its section sets `output`
    # the stages to run, in order; each reads what the stages before it wrote
    stages: list[str] = dataclasses.field(default_factory=lambda: ["prepare", "pretrain", "export", "serve"])
    prompts: list[str] = dataclasses.field(default_factory=list)  # completed over HTTP by the `serve` stage
    questions: list[str] = dataclasses.field(default_factory=list)  # asked as chat (a user turn) by `serve`
    max_tokens: int = 32  # per prompt completion
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with this much probability
    seed: int | None = 0  # makes sampled completions reproducible

    def __post_init__(self):
        check(len(self.stages) > 0, "stages", "needs at least one stage")
        known = [s.name for s in recipe_stages()]
        for name in self.stages:
            check(name in known, "stages", f"unknown stage {name!r} (recipe stages: {', '.join(known)})")
        check(len(set(self.stages)) == len(self.stages), "stages", "lists a stage twice")
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1")


def field_name(stage: str) -> str:
    """The attribute of a stage's section: its name, with ``_`` after a Python keyword (``import_``)."""
    return f"{stage}_" if keyword.iskeyword(stage) else stage


def section(recipe, stage: str) -> dict:
    """A recipe's section for ``stage`` (a plain mapping, validated later by the stage's config class)."""
    return getattr(recipe, field_name(stage))


def _section_field(name: str) -> tuple[str, type, dataclasses.Field]:
    help_text = f"keys of `lmforge {name}` ({STAGES[name].summary.split(' (')[0]}); see `lmforge {name} --help`"
    return field_name(name), dict, dataclasses.field(default_factory=dict, metadata={"help": help_text, "key": name})


RecipeConfig = dataclasses.make_dataclass(
    "RecipeConfig", [_section_field(s.name) for s in recipe_stages()], bases=(RecipeBase,), kw_only=True)
RecipeConfig.__module__ = __name__  # for pickling and typing.get_type_hints
RecipeConfig.__doc__ = "A recipe: its own keys, then one section per stage (a mapping of that stage's keys)."
