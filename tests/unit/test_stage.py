"""What every stage shares: the identity of a finished run, and building in ``<output>.partial/``."""

import dataclasses

import yaml

from lmforge import config as cfgmod
from lmforge import stage
from lmforge.train.config import PretrainConfig


def _cfg(out, *extra):
    return cfgmod.load(PretrainConfig, None, ["data=d", f"output={out}", *extra])


def _finish(cfg, out):
    partial = stage.begin(cfg, out)
    (partial / "model").mkdir()
    return stage.publish(partial, out)


def test_force_and_ray_are_not_part_of_a_finished_run(tmp_path):
    out = tmp_path / "run"
    forced = _cfg(out, "force=true")
    _finish(forced, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["force"] is False  # a request, not the run
    assert stage.is_finished(_cfg(out), out)  # made with force=true, skipped like any other
    assert stage.is_finished(_cfg(out, "ray.address=ray://elsewhere:10001", "ray.num_cpus=8"), out)
    assert not stage.is_finished(_cfg(out, "train.lr=0.01"), out)
    assert stage.already_done(_cfg(out), "pretrain") == out
    assert stage.already_done(_cfg(out, "force=true"), "pretrain") is None


def test_unfinished_output_is_never_trusted(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out)
    partial = stage.begin(cfg, out)
    assert not out.exists() and partial.name == "run.partial"
    assert not stage.is_finished(cfg, out)
    stage.publish(partial, out)
    (out / stage.DONE_MARKER).unlink()  # as if the process died before the marker
    assert not stage.is_finished(cfg, out)


def test_begin_fresh_empties_the_partial_dir_and_keeps_the_old_output_until_publish(tmp_path):
    out = tmp_path / "run"
    _finish(_cfg(out), out)
    stale = stage.partial_dir(out)
    stale.mkdir()
    (stale / "half-written").write_text("x")
    partial = stage.begin(_cfg(out, "train.lr=0.01"), out)
    assert not (partial / "half-written").exists()
    assert (out / "model").is_dir() and stage.is_finished(_cfg(out), out)


def test_begin_resume_carries_checkpoints_over(tmp_path):
    """Training with resume: an interrupted run's partial dir is kept; else the finished output becomes the
    partial dir again (its checkpoints with it), and is published anew only when this run finishes."""
    out = tmp_path / "run"
    first = _cfg(out, "train.max_steps=80")
    partial = stage.begin(first, out)
    (partial / "checkpoints" / "step_000080").mkdir(parents=True)
    stage.publish(partial, out)
    longer = dataclasses.replace(first, train=dataclasses.replace(first.train, max_steps=120))
    partial = stage.begin(longer, out, resume=True)
    assert not out.exists() and (partial / "checkpoints" / "step_000080").is_dir()
    assert not (partial / stage.DONE_MARKER).exists()
    assert yaml.safe_load((partial / "config.yaml").read_text())["train"]["max_steps"] == 120
    (partial / "checkpoints" / "step_000100").mkdir()
    again = stage.begin(longer, out, resume=True)  # the run was interrupted: its partial dir stays
    assert (again / "checkpoints" / "step_000100").is_dir()
