"""What every stage shares: the identity of a finished run, and building in ``<output>.partial/``."""

import dataclasses

import yaml

from lmforge import config as cfgmod
from lmforge.outputs import DONE_MARKER, Marker, Output
from lmforge.stages import STAGES
from lmforge.train.config import PretrainConfig


def out_of(cfg) -> Output:
    """The output of the stage whose config ``cfg`` is."""
    return Output(next(s.name for s in STAGES.values() if s.config_class() is type(cfg)), cfg)


def _done(cfg):
    out = out_of(cfg)
    out.begin()
    return out.publish()


def _cfg(out, *extra):
    return cfgmod.load(PretrainConfig, None, ["data=d", f"output={out}", *extra])


def _finish(cfg, out):
    partial = out_of(cfg).begin()
    (partial / "model").mkdir()
    return out_of(cfg).publish()


def test_force_and_ray_are_not_part_of_a_finished_run(tmp_path):
    out = tmp_path / "run"
    forced = _cfg(out, "force=true")
    _finish(forced, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["force"] is False  # a request, not the run
    assert out_of(_cfg(out)).finished()  # made with force=true, skipped like any other
    assert out_of(_cfg(out, "ray.address=ray://elsewhere:10001", "ray.num_cpus=8")).finished()
    assert not out_of(_cfg(out, "train.lr=0.01")).finished()
    assert out_of(_cfg(out)).skip() and out_of(_cfg(out)).result() == out
    assert not out_of(_cfg(out, "force=true")).skip()


def test_unfinished_output_is_never_trusted(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out)
    partial = out_of(cfg).begin()
    assert not out.exists() and partial.name == "run.partial"
    assert not out_of(cfg).finished()
    out_of(cfg).publish()
    (out / DONE_MARKER).unlink()  # as if the process died before the marker
    assert not out_of(cfg).finished()


def test_begin_fresh_empties_the_partial_dir_and_keeps_the_old_output_until_publish(tmp_path):
    out = tmp_path / "run"
    _finish(_cfg(out), out)
    stale = out_of(_cfg(out)).partial
    stale.mkdir()
    (stale / "half-written").write_text("x")
    partial = out_of(_cfg(out, "train.lr=0.01")).begin()
    assert not (partial / "half-written").exists()
    assert (out / "model").is_dir() and out_of(_cfg(out)).finished()


def test_begin_resume_carries_checkpoints_over(tmp_path):
    """Training with resume: an interrupted run's partial dir is kept; else the finished output becomes the
    partial dir again (its checkpoints with it), and is published anew only when this run finishes."""
    out = tmp_path / "run"
    first = _cfg(out, "train.max_steps=80")
    partial = out_of(first).begin()
    (partial / "checkpoints" / "step_000080").mkdir(parents=True)
    out_of(first).publish()
    longer = dataclasses.replace(first, train=dataclasses.replace(first.train, max_steps=120))
    partial = out_of(longer).begin(resume=True)
    assert not out.exists() and (partial / "checkpoints" / "step_000080").is_dir()
    assert not (partial / DONE_MARKER).exists()
    assert yaml.safe_load((partial / "config.yaml").read_text())["train"]["max_steps"] == 120
    (partial / "checkpoints" / "step_000100").mkdir()
    again = out_of(longer).begin(resume=True)  # the run was interrupted: its partial dir stays
    assert (again / "checkpoints" / "step_000100").is_dir()


def _prepared(out):
    from lmforge.data.config import PrepareConfig

    cfg = cfgmod.load(PrepareConfig, None, ["inputs=[corpus]", f"output={out}"])
    partial = out_of(cfg).begin()
    (partial / "train").mkdir()
    return out_of(cfg).publish()


def test_a_rerun_upstream_unfinishes_everything_downstream(tmp_path):
    """pretrain's config names the same data dir before and after prepare ran again, so config alone
    would skip it on stale data; the marker's record of the upstream run does not."""
    from lmforge.export.config import ExportConfig

    data, train, onnx = tmp_path / "data", tmp_path / "train", tmp_path / "onnx"
    _prepared(data)
    pre = cfgmod.load(PretrainConfig, None, [f"data={data}", f"output={train}"])
    _finish(pre, train)
    export = cfgmod.from_dict(ExportConfig, {"model": str(train / "model"), "output": str(onnx)})
    out_of(export).begin()
    out_of(export).publish()
    marker = Marker.parse((onnx / DONE_MARKER).read_text())
    assert marker.inputs == {"model": Marker.parse((train / ".done").read_text()).run}  # train/model
    assert out_of(pre).finished() and out_of(export).finished()
    _prepared(data)  # prepare again: a new run
    assert not out_of(pre).finished()
    _finish(pre, train)  # and pretrain after it: a new run, so export is stale
    assert not out_of(export).finished()


def test_inputs_outside_any_stage_output_do_not_unfinish_a_run(tmp_path):
    """An input that is no stage's output (a user's own model dir) has no run id to compare."""
    from lmforge.export.config import ExportConfig

    (tmp_path / "mine").mkdir()
    export = cfgmod.from_dict(ExportConfig, {"model": str(tmp_path / "mine"), "output": str(tmp_path / "onnx")})
    _done(export)
    assert out_of(export).input_runs() == {"model": None} and out_of(export).finished()


def test_an_old_marker_without_inputs_is_not_trusted_downstream_of_a_stage(tmp_path):
    """Outputs published before markers recorded their inputs ("" in .done): such a pretrain output may
    have been trained on an older prepare run, so it runs again; one that read no stage output is kept."""
    data, train = tmp_path / "data", tmp_path / "train"
    _prepared(data)
    pre = cfgmod.load(PretrainConfig, None, [f"data={data}", f"output={train}"])
    _finish(pre, train)
    (train / DONE_MARKER).write_text("")  # as an older lmforge wrote it
    assert not out_of(pre).finished()
    from lmforge.export.config import ExportConfig

    (tmp_path / "mine").mkdir()  # a user's own model dir: no stage output upstream
    export = cfgmod.from_dict(ExportConfig, {"model": str(tmp_path / "mine"), "output": str(tmp_path / "onnx")})
    _done(export)
    (tmp_path / "onnx" / DONE_MARKER).write_text("")
    assert out_of(export).finished()


def test_training_resumes_only_work_made_from_the_same_upstream_runs(tmp_path):
    """A pretrain output (or an interrupted partial dir) trained on an older prepare run is not resumed:
    its checkpoints would continue a model of other data (and, at max_steps already, finish at once)."""
    data, train = tmp_path / "data", tmp_path / "train"
    _prepared(data)
    pre = cfgmod.load(PretrainConfig, None, [f"data={data}", f"output={train}"])
    assert out_of(pre).resumable()  # nothing there yet
    _finish(pre, train)
    assert out_of(pre).resumable()
    _prepared(data)  # a new prepare run
    assert not out_of(pre).resumable()
    out_of(pre).begin()  # a run started from the new data, then interrupted
    assert out_of(pre).resumable()
    _prepared(data)
    assert not out_of(pre).resumable()


def test_only_an_interrupted_run_of_the_same_config_counts_as_one_to_finish(tmp_path):
    """A sweep restores Tune's experiment from the partial dir only when that dir was started with this
    very config: a finished output, or a partial dir of another config, is started over."""
    out = tmp_path / "train"
    pre = _cfg(out)
    assert not out_of(pre).interrupted()  # nothing there
    _finish(pre, out)
    assert not out_of(pre).interrupted()  # finished: nothing to finish off
    out_of(pre).begin()  # started again, then killed
    assert out_of(pre).interrupted()
    assert out_of(dataclasses.replace(pre, force=True)).interrupted()  # run control aside
    assert not out_of(_cfg(out, "train.lr=0.01")).interrupted()


def test_an_edited_corpus_file_makes_prepare_run_again(tmp_path):
    """prepare's identity holds its corpus files' state (path, size, modification time), not only its
    config: editing, adding or removing a file re-runs it (and, through its new run id, what follows). A
    corpus deleted after the run is not held against it."""
    import os

    from lmforge.data.config import PrepareConfig

    corpus, out = tmp_path / "corpus", tmp_path / "data"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "one"}\n')
    cfg = cfgmod.load(PrepareConfig, None, [f"inputs=[{corpus}]", f"output={out}"])
    _done(cfg)
    assert out_of(cfg).finished()
    marker = Marker.parse((out / DONE_MARKER).read_text())
    assert marker.inputs["files:inputs"].startswith("1 files, sha256:")
    (corpus / "a.jsonl").write_text('{"text": "two"}\n')  # same size, edited in place
    os.utime(corpus / "a.jsonl", ns=(1, 1))
    assert not out_of(cfg).finished()
    _done(cfg)
    (corpus / "b.jsonl").write_text('{"text": "three"}\n')  # a new file
    assert not out_of(cfg).finished()
    _done(cfg)
    (corpus / "notes.md").write_text("not a corpus file")  # not read by prepare: no change
    assert out_of(cfg).finished()
    for f in corpus.iterdir():
        f.unlink()
    corpus.rmdir()
    assert out_of(cfg).finished()  # the corpus is gone: the finished run is kept, not failed
