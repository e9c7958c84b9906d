"""The one registry of lmforge's stages, and the contract every stage keeps.

A stage is a package whose entry module ``<package>/stage.py`` holds, as plain names:

- ``SUMMARY``: one line, for ``lmforge --help`` and the stage's own help;
- ``Config``: its config class, a :class:`StageConfig` when it writes an output, :class:`UsesRay` when it
  reaches Ray;
- ``run(config)``: does the work; returns the output (or a result to print);
- ``INPUTS``: the :class:`Input` keys a recipe fills from earlier stages' outputs (default: none);

and, only where the stage needs them (each is looked up by name; absent means "nothing special"):

- ``read_paths(config) -> {key: path}``: the stage outputs it reads beyond ``INPUTS`` (eval's ``models``);
- ``raw_inputs(config) -> {"files:<key>": state}``: files it reads that are no stage's output (a raw
  corpus), as they are now; recorded in the ``.done`` marker, so editing one re-runs it;
- ``dry_run(config)``: what ``--dry-run`` prints instead of the config (a sweep or recipe resolved);
- ``recipe_run(config, recipe)``: in a recipe, called instead of ``run`` (serve: start, answer, stop);
- ``wire(section, sections) -> section``: in a recipe, given every stage's section with its inputs wired;
- ``feed(config, later) -> later``: in a recipe, after it ran, with the typed configs still to run;
- ``report(config | None, result) -> [lmforge.report.Section]``: its part of a recipe's report
  (``config`` is None when the recipe did not run it);
- a stage that trains on the shared worker (:func:`lmforge.train.launch.run_training` runs it, and
  ``tune`` can sweep it): ``check_inputs(config)`` (before anything is written);
  ``training_context(config, partial, root, reuse=False) -> dict`` (what the run, or every trial of a
  sweep, shares, made once; ``reuse``: a resumed sweep keeps what it made before);
  ``worker_spec(config, context, checkpoint_root) -> lmforge.train.config.WorkerSpec`` (the job for the
  worker, its own loss included); optionally ``finish(config, partial, context)`` (after training:
  finetune merges its LoRA adapter) and ``SHARED_BY_TRIALS`` (keys a sweep cannot vary because the
  context is made from them once).

The entry module imports nothing heavy at the top (``lmforge --help`` imports every one of them); the
work is imported inside ``run``. Adding a stage is its package plus one line in :data:`STAGES`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any


@dataclasses.dataclass(kw_only=True)
class RayConfig:
    """How to reach Ray. No address (and no RAY_ADDRESS) means a local cluster for this command."""

    address: str | None = None  # e.g. ray://head:10001 or auto; default: $RAY_ADDRESS, else a local cluster
    num_cpus: int | None = None  # local cluster only; default: all cores
    # local cluster only: where each node serves Prometheus metrics (lmforge's and Ray Serve's, at
    # http://127.0.0.1:<port>/metrics); default: a free port, logged at start
    metrics_export_port: int | None = None
    # Stream Ray's own worker, Train and Serve logs to this terminal; by default they stay in Ray's
    # session log dir (its path is logged at start) and only lmforge's progress lines are shown.
    log_to_driver: bool = False


@dataclasses.dataclass(kw_only=True)
class UsesRay:
    """A stage that reaches Ray: its ``ray`` section (a recipe sets it from its own, for every stage)."""

    ray: RayConfig = dataclasses.field(default_factory=RayConfig)


@dataclasses.dataclass(kw_only=True)
class StageConfig:
    """A stage that writes an output dir (local or ``s3://``), skipped when it holds a finished run of the
    same config (:class:`lmforge.outputs.Output`)."""

    output: str  # the stage's output dir (local) or s3:// URI
    force: bool = False  # redo even when output holds a finished run of the same config


RUN_CONTROL = ("force", "ray")  # keys that say how to run, not what: a finished run is the same without them


@dataclasses.dataclass(frozen=True)
class Input:
    """A config key that a recipe fills from an earlier stage's output, unless the recipe sets it. The run
    id of the stage output it names is recorded in the ``.done`` marker (no sources: recorded only)."""

    key: str  # dotted key in this stage's config, e.g. "data" or "model"
    sources: tuple[tuple[str, str], ...] = ()  # (stage, path below its output), the first the recipe runs wins


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # the command: lmforge <name>
    package: str  # its entry module is <package>.stage
    subdir: str | None = None  # where it writes in a recipe; None: not a recipe stage
    # where the name, the package and the recipe folder differ, and why
    why: str = ""

    def entry(self) -> ModuleType:
        return _entry(self.package)

    def hook(self, name: str) -> Callable[..., Any] | None:
        """One of the entry module's optional hooks (module docstring), or None."""
        return getattr(self.entry(), name, None)

    @property
    def summary(self) -> str:
        return self.entry().SUMMARY

    @property
    def inputs(self) -> tuple[Input, ...]:
        return getattr(self.entry(), "INPUTS", ())

    def config_class(self) -> type:
        return self.entry().Config

    def run_fn(self) -> Callable[..., Any]:
        return self.entry().run

    def writes_output(self) -> bool:
        return issubclass(self.config_class(), StageConfig)

    def trains(self) -> bool:
        """Whether it trains on the shared training worker (and so ``tune`` can sweep it)."""
        return self.hook("worker_spec") is not None


@dataclasses.dataclass(frozen=True)
class Command:
    """A command that is no stage (a benchmark, ``lmforge models list``): a config class and
    ``run(config) -> result``, named by import path so that its ``--help`` imports nothing heavier than
    the config."""

    name: str
    summary: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function"

    def config_class(self) -> type:
        return _load(self.config)

    def run_fn(self) -> Callable[..., Any]:
        return _load(self.run)

    def hook(self, name: str) -> None:
        return None  # a command has none of a stage's hooks


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _entry(package: str) -> ModuleType:
    return importlib.import_module(f"{package}.stage")


_DATA = "the package holds the data tools (readers, cleaning, dedup, packing) that eval and bench use too"
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "lmforge.data", "data", why=f"package data: {_DATA}; folder data: what it holds"),
    Stage("pretrain", "lmforge.train", "train", why="package train: the shared training worker, loop and "
          "checkpoints that finetune and tune train with; folder train: its checkpoints and model"),
    Stage("import", "lmforge.model", "import", why="package model: `import` is a Python keyword; it also holds "
          "the presets"),
    Stage("finetune", "lmforge.finetune", "finetune"),
    Stage("distill", "lmforge.distill", "distill"),
    Stage("tune", "lmforge.tune", "tune"),
    Stage("eval", "lmforge.evaluate", "eval", why="package evaluate: a package named eval would shadow the builtin"),
    Stage("export", "lmforge.export", "onnx", why="folder onnx: what it holds, the ONNX graphs"),
    Stage("serve", "lmforge.serve", "", why="folder: none of its own (it writes nothing; '' marks a recipe stage)"),
    Stage("monitor", "lmforge.monitor", why="not a recipe stage: it runs beside a deployment until stopped"),
    Stage("update", "lmforge.update", why="not a recipe stage: a recipe of its own over a live deployment"),
    Stage("run", "lmforge.recipe", why="package recipe: what `run` runs; not itself a recipe stage"),
)}


def recipe_stages() -> list[Stage]:
    """The stages a recipe can hold, in registry order."""
    return [s for s in STAGES.values() if s.subdir is not None]


def training_stages() -> list[Stage]:
    """The stages that train on the shared worker, in registry order: what ``tune`` can sweep."""
    return [s for s in recipe_stages() if s.trains()]
