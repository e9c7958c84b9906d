"""A stage added from its own package and one registry line shows up everywhere a stage does: ``lmforge
--help``, its own ``--help``, a recipe section wired to the stages before it, the recipe's report, and
as a base ``tune`` can sweep. Nothing else in lmforge is edited (the registry line is added in the child
process, before anything reads the registry, as an edit of ``stages.py`` would be)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TOY = '''
"""A throw-away stage that trains on prepared rows with its own loss."""

import dataclasses

from lmforge.report import Section, absent, read
from lmforge.stages import Input
from lmforge.train.config import TrainingConfig, WorkerSpec

SUMMARY = "a toy stage from outside lmforge"
INPUTS = (Input("data", (("prepare", ""),)),)


@dataclasses.dataclass(kw_only=True)
class Config(TrainingConfig):
    data: str  # a prepare output
    smoothing: float = 0.1  # label smoothing of its loss


def run(cfg):
    from lmforge.train.launch import run_training

    return run_training("toy", cfg)


def check_inputs(cfg):
    pass


def training_context(cfg, partial, root, reuse=False):
    return {"data": cfg.data}


def worker_spec(cfg, context, checkpoint_root):
    return WorkerSpec(train_rows=context["data"] + "/train", val_rows=context["data"] + "/val", seq_len=16,
                      pad_id=0, tokenizer=context["data"] + "/tokenizer", vocab_size=64, train=cfg.train,
                      checkpoint_root=checkpoint_root, stage="toy", loss="toystage.stage:smoothed")


def report(cfg, result):
    if cfg is None:
        return [absent("Toy", "toy")]
    return [Section("Toy", None, [f"toy note: {read(cfg.output, 'note.txt').decode()}"])]
'''

CHECKS = '''
import sys, yaml
from lmforge import stages
stages.STAGES["toy"] = stages.Stage("toy", "toystage", "toy")  # the one registry line
from lmforge import cli
from lmforge.recipe import report, runner
from lmforge.recipe.config import RecipeConfig
from lmforge import config as cfgmod

section = sys.argv[1]
if section == "help":
    cli.main(["--help"])
elif section == "own-help":
    cli.main(["toy", "--help"])
elif section == "recipe":
    cli.main(["run", "recipe.yaml", "--dry-run"])
elif section == "report":
    recipe = cfgmod.load(RecipeConfig, "recipe.yaml")
    typed = runner.resolve(recipe)
    out = __import__("pathlib").Path(typed["toy"].output)
    out.mkdir(parents=True)
    (out / "note.txt").write_text("it ran")
    print(report.__name__, [s.title for s in report.build(recipe, typed, {})])
    print("\\n".join(line for s in report.build(recipe, typed, {}) for line in s.lines if "toy note" in line))
elif section == "sweep":
    cli.main(["run", "sweep.yaml", "--dry-run"])
elif section == "bad-sweep":
    sys.exit(cli.main(["run", "sweep.yaml", "tune.space={smoothin: {uniform: [0, 1]}}", "--dry-run"]))
'''


def _child(tmp_path: Path, section: str, status: int = 0) -> str:
    done = subprocess.run([sys.executable, "-c", CHECKS, section], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == status, done.stderr
    return done.stdout + done.stderr


def test_a_new_stage_needs_its_package_and_one_registry_line(tmp_path):
    (tmp_path / "toystage").mkdir()
    (tmp_path / "toystage" / "__init__.py").write_text("")
    (tmp_path / "toystage" / "stage.py").write_text(TOY)
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent("""
        output: runs/r
        stages: [prepare, toy]
        prepare: {inputs: [corpus.jsonl]}
        toy: {smoothing: 0.2}
        """))
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent("""
        output: runs/s
        stages: [prepare, tune, toy]
        prepare: {inputs: [corpus.jsonl]}
        tune: {space: {smoothing: {uniform: [0.0, 0.3]}}, base: {train: {max_steps: 5}}}
        toy: {}
        """))
    assert "  toy       a toy stage from outside lmforge" in _child(tmp_path, "help")
    own = _child(tmp_path, "own-help")
    assert own.startswith("usage: lmforge toy ") and "  smoothing " in own and "label smoothing" in own
    resolved = __import__("yaml").safe_load(_child(tmp_path, "recipe"))
    assert resolved["toy"]["output"] == "runs/r/toy" and resolved["toy"]["data"] == "runs/r/data"  # wired
    assert resolved["toy"]["smoothing"] == 0.2
    reported = _child(tmp_path, "report")
    assert "'Toy'" in reported and "toy note: it ran" in reported
    sweep = __import__("yaml").safe_load(_child(tmp_path, "sweep"))
    assert sweep["tune"]["stage"] == "toy" and sweep["tune"]["base"]["train"]["max_steps"] == 5
    assert sweep["tune"]["base"]["data"] == "runs/s/data"  # the toy's own section, its inputs wired
    assert sweep["tune"]["base"]["smoothing"] == 0.1  # resolved by the toy's config class
    assert "space.smoothin: not a key of the toy config (did you mean smoothing?)" in _child(tmp_path, "bad-sweep", 2)
