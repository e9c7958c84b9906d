"""The ``run`` command's entry (the contract: :mod:`lmforge.stages`): a recipe, several stages in order in
one Ray session (:mod:`.runner`)."""

from __future__ import annotations

from lmforge.recipe.config import RecipeConfig as Config

SUMMARY = "a recipe: several stages in order in one Ray session (e.g. jobs/quickstart.yaml)"


def run(recipe: Config) -> dict:
    from lmforge.recipe import runner

    return runner.run(recipe)


def dry_run(recipe: Config) -> dict:
    from lmforge.recipe import runner

    return runner.dry_run(recipe)
