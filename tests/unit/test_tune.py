"""The sweep's pure parts: the space checked against the stage's config, trial resources that always fit,
and the tables a sweep leaves. The sweeps themselves run in tests/integration/test_tune.py."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lmforge import config as cfgmod
from lmforge.config import ConfigError
from lmforge.train.config import PretrainConfig
from lmforge.tune import plan, results, space
from lmforge.tune.config import TuneConfig

BASE = {"data": "runs/data", "model": {"preset": "tiny"}, "train": {"max_steps": 100, "eval_every": 25}}
SET = {"output": "runs/t/trial"}


def parse(sp: dict, cls=PretrainConfig, stage="pretrain", base=BASE):
    return space.parse(sp, cls, stage, base, SET)


def test_space_accepts_each_kind_and_both_spellings():
    params = parse({"train.lr": {"loguniform": [1e-4, 1e-2]}, "train": {"weight_decay": {"uniform": [0, 0.2]}},
                    "model.hidden_size": {"choice": [32, 64, 128]}, "model.num_layers": {"randint": [1, 3]}})
    assert [(p.key, p.kind) for p in params] == [
        ("train.lr", "loguniform"), ("train.weight_decay", "uniform"), ("model.hidden_size", "choice"),
        ("model.num_layers", "randint")]
    values = {"train.lr": 0.001, "model.hidden_size": 32}
    trial = cfgmod.from_dict(PretrainConfig, space.trial_dict(BASE, values, SET))
    assert (trial.train.lr, trial.model.hidden_size, trial.train.max_steps, trial.output) == (
        0.001, 32, 100, "runs/t/trial")


@pytest.mark.parametrize("sp, message", [
    ({"train.lrr": {"uniform": [0.1, 0.2]}},
     "space.train.lrr: not a key of the pretrain config (did you mean train.lr?)"),
    ({"train.lr": {"loguniform": [0, 0.1]}}, "space.train.lr: loguniform needs 0 < lo"),
    ({"train.lr": {"loguniform": [-1e-3, 0.1]}}, "space.train.lr: loguniform needs 0 < lo"),
    ({"train.lr": {"uniform": [0.2, 0.1]}}, "space.train.lr: uniform needs lo < hi"),
    ({"model.preset": {"choice": []}}, "space.model.preset: choice needs a non-empty list"),
    ({"model.num_layers": {"randint": [1.5, 3]}}, "space.model.num_layers: randint needs [lo, hi], two integers"),
    ({"train.lr": 0.1}, "space.train.lr: expected one of"),
    ({"train.lr": {"normal": [0, 1]}}, "space.train.lr: expected one of"),
    ({"model.preset": {"choice": ["tiny", "huge"]}}, "space.model.preset: 'huge' is refused by the pretrain config"),
    ({"model.hidden_size": {"choice": [30, 64]}}, "space.model.hidden_size: 30 is refused"),
    ({"train.max_steps": {"randint": [0, 10]}}, "space.train.max_steps: 0 is refused"),
    ({"train.num_workers": {"choice": [1, 2]}}, "space.train.num_workers: cannot be swept"),
    ({"output": {"choice": ["a", "b"]}}, "space.output: cannot be swept"),
    ({"ray.num_cpus": {"choice": [1, 2]}}, "space.ray.num_cpus: cannot be swept"),
])
def test_bad_space_is_refused_naming_the_key(sp, message):
    with pytest.raises(ConfigError) as err:
        parse(sp)
    assert message in str(err.value)


def test_finetune_space_cannot_change_the_shared_rows():
    """finetune renders its rows once for every trial (its SHARED_BY_TRIALS): a sweep of what they are
    made from would train every trial on the same rows."""
    from lmforge.tune.stage import Sweep

    base = {"data": "xsum", "model": {"init_from": "runs/smollm2"}}
    sweep = {"base": base, "stage": "finetune", "output": "runs/t"}
    Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "space": {"finetune.lora.r": {"choice": [8, 16]}}}))
    with pytest.raises(ConfigError, match="space.finetune.max_seq_len: cannot be swept: what every trial trains"):
        Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "space": {"finetune.max_seq_len": {"choice": [256, 512]}}}))


def test_tune_config_from_yaml_and_cli_overrides(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "output": "runs/t", "space": {"train.lr": {"uniform": [0.1, 0.2]}}}))
    cfg = cfgmod.load(TuneConfig, path, ["tune.resume=never", "search=optuna", "num_samples=3"])
    assert (cfg.tune.resume, cfg.search, cfg.num_samples, cfg.scheduler, cfg.metric) == ("never", "optuna", 3, "asha",
                                                                                          "val_loss")
    with pytest.raises(ConfigError, match="scheduler: must be one of"):
        cfgmod.load(TuneConfig, path, ["scheduler=hyperband"])


@pytest.mark.parametrize("cpus, workers, samples, limit, concurrent", [
    (2, 1, 6, None, 2), (2, 2, 6, None, 1), (2, 1, 1, None, 1), (16, 2, 6, None, 6), (16, 2, 6, 3, 3),
    (2, 1, 6, 4, 4),  # more than one CPU per worker fits: workers get a fraction each
])
def test_trials_at_once_always_fit_their_workers_and_drivers(cpus, workers, samples, limit, concurrent):
    p = plan.plan(cpus, 0, workers=workers, use_gpu=False, num_samples=samples, max_concurrent=limit)
    assert p.concurrent == concurrent
    assert p.concurrent * (p.driver_cpus + p.workers * p.worker_cpus) <= 0.95 * cpus + 1e-9
    assert 0.1 <= p.worker_cpus <= 1.0 and p.driver_cpus > 0


def test_plan_refuses_what_cannot_fit():
    with pytest.raises(ConfigError, match="max_concurrent_trials"):
        plan.plan(2, 0, workers=2, use_gpu=False, num_samples=20, max_concurrent=20)
    with pytest.raises(ConfigError, match="GPU"):
        plan.plan(16, 1, workers=2, use_gpu=True, num_samples=4)
    assert plan.plan(32, 8, workers=2, use_gpu=True, num_samples=8).concurrent == 4


def test_trials_that_train_in_their_own_process_get_the_cpus_a_worker_would():
    """No trainer, so no driver sliver beside it: the trial itself holds the CPUs its one worker would,
    and as many run at once as one-worker trials would."""
    for cpus, samples, limit in ((2, 6, None), (2, 6, 1), (16, 4, None)):
        own = plan.plan(cpus, 0, workers=0, use_gpu=False, num_samples=samples, max_concurrent=limit)
        one = plan.plan(cpus, 0, workers=1, use_gpu=False, num_samples=samples, max_concurrent=limit)
        assert (own.concurrent, own.workers) == (one.concurrent, 0)
        assert own.trial_resources() == {"CPU": one.worker_cpus + one.driver_cpus}
        assert own.concurrent * own.driver_cpus <= 0.95 * cpus + 1e-9
    gpu = plan.plan(8, 2, workers=0, use_gpu=True, num_samples=4)
    assert gpu.trial_resources()["GPU"] == 1 and gpu.concurrent == 2
    assert "in its own process" in gpu.describe()


def _trial(tid, lr, curve, **kw):
    return results.Trial(tid, {"train.lr": lr}, [{"step": 25 * (i + 1), "val_loss": v} for i, v in enumerate(curve)],
                         **kw)


def test_trials_table_best_and_summary(tmp_path):
    trials = [_trial("a", 0.01, [3.0, 2.5, 2.4, 2.3]), _trial("b", 0.1, [3.5]),
              _trial("c", 0.001, [2.9, 2.2, 2.6, 2.7]),  # best at step 50, then overfits
              results.Trial("d", {"train.lr": 0.5}, [], error="RuntimeError: boom")]
    trials[1].history[-1]["stopped_early"] = False
    params = [space.Param("train.lr", "loguniform", (1e-4, 1.0))]
    rows = results.table(trials, params, "val_loss", "min", 100)
    assert [(r["trial_id"], r["status"], r["steps"], r["best_val_loss"], r["best_step"]) for r in rows] == [
        ("a", "completed", 100, 2.3, 100), ("b", "stopped_by_scheduler", 25, 3.5, 25),
        ("c", "completed", 100, 2.2, 50), ("d", "error", 0, None, None)]
    assert results.best_trial(trials, "val_loss", "min").trial_id == "c"
    assert results.best_trial(trials, "val_loss", "max").trial_id == "b"
    results.write_csv(rows, tmp_path / "trials.csv")
    read = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["train.lr"] for r in read] == ["0.01", "0.1", "0.001", "0.5"] and read[3]["error"] == "RuntimeError: boom"
    s = results.summary(trials, "val_loss", "min", 100, 12.0)
    assert (s["trial_steps"], s["trial_steps_if_all_completed"], s["completed"], s["stopped_by_scheduler"],
            s["error"]) == (225, 400, 2, 1, 1)
    assert s["best"] == {"trial_id": "c", "val_loss": 2.2, "step": 50, "params": {"train.lr": 0.001}}
    results.plot_curves(trials, "val_loss", tmp_path / "curves.png", results.best_trial(trials, "val_loss", "min"))
    results.plot_params(trials, params, "val_loss", "min", tmp_path / "params.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "params.png").stat().st_size > 0


def test_patience_stop_is_not_counted_as_the_schedulers():
    t = _trial("a", 0.01, [3.0, 3.1, 3.2])
    t.history[-1]["stopped_early"] = True
    assert t.status(100) == "early_stopped"


# ---------------------------------------------------------------- the sweep as a recipe stage

def _recipe(tmp_path, *extra):
    from lmforge.recipe.config import RecipeConfig

    recipe = Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"
    return cfgmod.load(RecipeConfig, str(recipe), [f"output={tmp_path / 'q'}", *extra])


def test_recipe_sweep_takes_the_swept_stages_section_as_its_base(tmp_path):
    """The quickstart's tune stage sweeps the recipe's own pretrain section (data wired to prepare's output),
    shortened by the sweep's `base` mapping; the pretrain stage itself is not changed by it. Without
    `tune.stage`, the last training stage the recipe runs is swept (finetune, model wired as the recipe wires it)."""
    from lmforge.recipe.runner import resolve

    stages = resolve(_recipe(tmp_path))
    assert list(stages) == ["prepare", "tune", "pretrain", "import", "finetune", "export", "eval", "serve"]
    sweep, pre = stages["tune"], stages["pretrain"]
    assert sweep.stage == "pretrain" and sweep.output == str(tmp_path / "q" / "tune")
    assert sweep.base["data"] == pre.data == str(tmp_path / "q" / "data")
    assert sweep.base["train"]["max_steps"] == 40 and pre.train.max_steps == 300  # the overlay is the sweep's only
    assert sweep.base["train"]["micro_batch_size"] == pre.train.micro_batch_size  # the rest is pretrain's
    assert not {"output", "ray", "force", "tuned_by"} & set(sweep.base)
    assert pre.tuned_by is None  # set only once the sweep has run
    default = resolve(_recipe(tmp_path, "stages=[prepare,pretrain,tune,finetune]", "tune.stage=null",
                              "finetune.model.init_from=null"))
    assert default["tune"].stage == "finetune"
    assert default["tune"].base["model"]["init_from"] == default["finetune"].model.init_from == str(
        tmp_path / "q" / "train" / "model")


def test_recipe_sweep_needs_a_stage_to_sweep(tmp_path):
    from lmforge.recipe.runner import resolve

    with pytest.raises(ConfigError, match="tune.stage: the recipe has no training stage to sweep"):
        resolve(_recipe(tmp_path, "stages=[prepare,tune,export]", "export.model=m", "tune.stage=null"))
    with pytest.raises(ConfigError, match="tune.stage: the recipe has no pretrain stage to sweep"):
        resolve(_recipe(tmp_path, "stages=[prepare,tune,export]", "export.model=m"))
    own = resolve(_recipe(tmp_path, "stages=[tune]", f"tune.base={tmp_path / 'ft.yaml'}"))  # a path: as given
    assert own["tune"].base == str(tmp_path / "ft.yaml")


def _summary(out, best):
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"metric": "val_loss", "best": best}))


def test_finished_sweep_feeds_its_best_values_to_the_swept_stage(tmp_path):
    from lmforge.recipe.runner import resolve
    from lmforge.tune import recipe

    stages = resolve(_recipe(tmp_path))
    sweep = stages["tune"]
    _summary(Path(sweep.output), {"trial_id": "t1", "val_loss": 3.2, "step": 40, "params": {"train.lr": 0.0012}})
    later = {n: stages[n] for n in ("pretrain", "eval")}
    fed = recipe.feed(sweep, later)
    assert fed["pretrain"].train.lr == 0.0012 and fed["pretrain"].tuned_by == sweep.output
    assert fed["pretrain"].train.max_steps == 300 and fed["eval"] is later["eval"]  # nothing else changed
    off = recipe.feed(dataclasses.replace(sweep, apply_best=False), later)
    assert off["pretrain"].train.lr == later["pretrain"].train.lr == 0.003
    assert recipe.feed(sweep, {"eval": later["eval"]}) == {"eval": later["eval"]}  # pretrain already ran


def test_sweep_without_a_best_trial_leaves_the_stage_as_configured(tmp_path, caplog):
    from lmforge.recipe.runner import resolve
    from lmforge.tune import recipe

    stages = resolve(_recipe(tmp_path))
    _summary(Path(stages["tune"].output), None)  # every trial failed
    fed = recipe.feed(stages["tune"], {"pretrain": stages["pretrain"]})
    assert fed["pretrain"] is stages["pretrain"] and "runs with its own values" in caplog.text


def test_a_rerun_sweep_makes_the_tuned_stage_run_again(tmp_path):
    """The swept stage records the sweep's run among its inputs (tuned_by), so `--force tune` re-runs
    pretrain too, even when the sweep picks the same values again."""
    from lmforge.outputs import DONE_MARKER, Output
    from lmforge.recipe.runner import resolve
    from lmforge.tune import recipe

    stages = resolve(_recipe(tmp_path))
    sweep_out = Path(stages["tune"].output)
    _summary(sweep_out, {"trial_id": "t1", "val_loss": 3.2, "step": 40, "params": {"train.lr": 0.0012}})
    (sweep_out / DONE_MARKER).write_text(json.dumps({"run": "sweep-1", "inputs": {}}))
    ft = Output("pretrain", recipe.feed(stages["tune"], {"pretrain": stages["pretrain"]})["pretrain"])
    assert ft.input_runs()["tuned_by"] == "sweep-1"
    ft.begin()
    ft.publish()
    assert ft.finished()
    (sweep_out / DONE_MARKER).write_text(json.dumps({"run": "sweep-2", "inputs": {}}))  # forced again
    assert not ft.finished()


def test_progress_counts_trial_steps_and_takes_stopped_trials_off_the_total(tmp_path, caplog):
    """Each report line says where the sweep stands; a trial ASHA stops at step 10 of 40 no longer counts
    its 30 unrun steps as work left."""
    import logging
    from types import SimpleNamespace

    from lmforge.tune.ray_tune import Progress

    progress = Progress(tmp_path / "events.jsonl", "val_loss", max_steps=40, num_samples=2)
    a, b = SimpleNamespace(trial_id="a", config={"train.lr": 0.001}), SimpleNamespace(trial_id="b", config={})
    caplog.set_level(logging.INFO, logger="lmforge.tune")
    for trial in (a, b):
        progress.on_trial_start(0, [], trial)
        progress.on_trial_result(0, [], trial, {"step": 10, "val_loss": 3.0})
    assert "0/2 trials done; 20/80 trial steps" in caplog.records[-1].getMessage()
    a.last_result = {"step": 10}
    progress.on_trial_complete(0, [], a)
    assert "1/2 trials done; 20/50 trial steps" in caplog.records[-1].getMessage()
    assert "at most" in caplog.records[-1].getMessage()
    progress.on_trial_result(0, [], b, {"step": 40, "val_loss": 2.0})
    b.last_result = {"step": 40}
    progress.on_trial_complete(0, [], b)
    assert "2/2 trials done; 50/50 trial steps" in caplog.records[-1].getMessage()
    assert [e["event"] for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())] == [
        "start", "start", "complete", "complete"]


def test_a_resumed_trial_reads_only_what_ray_train_registered(tmp_path):
    """A sweep killed while a trial uploaded its step-30 checkpoint leaves that dir half-written: whether
    the trial had finished is read from Ray Train's snapshot of registered checkpoints (step 20 here),
    never from the newest dir (a trial that read it failed on the restart)."""
    from lmforge.train.ray_trainer import registered_report

    root = tmp_path / "trials" / "t1"
    assert registered_report(str(root)) is None  # nothing registered yet: train from the start
    ckpts = root / "checkpoints"
    (ckpts / "step_000030" / "model").mkdir(parents=True)  # cut off mid-upload: no state.json
    metrics = {"step": 20, "val_loss": 5.1, "loss": 5.0, "stopped_early": False}
    result = {"version": 0, "checkpoint_dir_name": "step_000020", "metrics": metrics}
    (ckpts / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [result], "latest_checkpoint_result": result}))
    assert registered_report(str(root)) == metrics


def test_a_sweep_takes_a_stage_that_trains_and_finds_which_from_its_base():
    from lmforge.tune.stage import Sweep

    space = {"train.lr": {"uniform": [0.1, 0.2]}}
    sweep = {"output": "runs/t", "space": space}
    with pytest.raises(ConfigError, match="stage: 'export' is no stage that trains"):
        Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "base": {"data": "d"}, "stage": "export"}))
    assert Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "base": {"data": "d"}})).stage == "pretrain"
    finetune_base = {"data": "xsum", "model": {"init_from": "m"}, "finetune": {"method": "full"}}
    assert Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "base": finetune_base})).stage == "finetune"
    with pytest.raises(ConfigError, match="base is no config of a stage that trains"):
        Sweep.of(cfgmod.from_dict(TuneConfig, {**sweep, "base": {"nonsense": 1}}))


def test_a_trial_of_one_worker_trains_in_its_own_process_unless_it_asks_for_restarts():
    """Starting a Ray Train trainer per trial cost ~15 s against seconds of training: one worker trains in
    the trial's process; a trial that asks Ray Train to restart it (max_failures) keeps its trainer."""
    from lmforge.train.config import TrainConfig
    from lmforge.tune.stage import trial_workers

    assert trial_workers(TrainConfig(num_workers=1)) == trial_workers(TrainConfig(num_workers=0)) == 0
    assert trial_workers(TrainConfig(num_workers=1, max_failures=1)) == 1
    assert trial_workers(TrainConfig(num_workers=2)) == 2
