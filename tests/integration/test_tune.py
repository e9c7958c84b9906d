"""Sweeps on the session's real Ray cluster: ASHA stops trials, best.yaml runs as is, and a sweep whose
process is SIGKILLed mid-run finishes on the next run without redoing its finished trials."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml

from lmforge import config as cfgmod
from lmforge.train import stage as pretrain
from lmforge.train.config import PretrainConfig
from lmforge.tune import stage as tune
from lmforge.tune.config import TuneConfig
from tests.integration import procs
from tests.integration.conftest import registered_steps

pytestmark = pytest.mark.integration
STEPS, EVAL = 40, 10


@pytest.fixture(scope="module")
def data(small_data) -> Path:
    return small_data


def sweep_yaml(data: Path, out: Path, num_samples: int, workers: int = 1, steps: int = STEPS) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"data": str(data), "model": {"preset": "tiny"},
                 "train": {"num_workers": workers, "max_steps": steps, "micro_batch_size": 8, "warmup_steps": 5,
                           "eval_every": EVAL, "eval_batches": 2, "log_every": EVAL}},
        "space": {"train.lr": {"loguniform": [1e-4, 3e-2]}, "model.hidden_size": {"choice": [32, 64]}},
        "num_samples": num_samples, "output": str(out), "asha": {"reduction_factor": 2}}))
    return path


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trial_events.jsonl").read_text().splitlines()]


def test_asha_sweep_stops_trials_and_best_yaml_runs_as_is(data, tmp_path):
    """Trials that train in their own process (train.num_workers=0: no trainer to start, seconds each),
    one at a time: which trials ASHA stops then depends only on the seeded samples and the
    (deterministic) training, not on which of two concurrent trials reaches a rung first. (Trials on
    Ray Train trainers: the killed sweep below.)"""
    out = tune.run(cfgmod.load(TuneConfig, sweep_yaml(data, tmp_path / "sweep", 3, workers=0),
                               ["max_concurrent_trials=1"]))
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"completed", "stopped_by_scheduler"}
    stopped = [r for r in rows if r["status"] == "stopped_by_scheduler"]
    assert stopped and any(r["status"] == "completed" for r in rows)  # ASHA acted, and let the best finish
    assert all(int(r["steps"]) < STEPS for r in stopped)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial_steps"] == sum(int(r["steps"]) for r in rows) < 3 * STEPS
    best = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert summary["best"]["trial_id"] == best["trial_id"]
    # every trial reported at each evaluation it reached, with val_loss from its own model
    assert len({r["best_val_loss"] for r in rows}) == 3
    assert (out / "curves.png").stat().st_size > 0 and (out / "params.png").stat().st_size > 0

    best_cfg = cfgmod.load(PretrainConfig, out / "best.yaml", [f"output={tmp_path / 'best-run'}"])
    assert best_cfg.train.lr == pytest.approx(float(best["train.lr"]))
    assert best_cfg.model.hidden_size == int(best["model.hidden_size"])
    assert (best_cfg.train.max_steps, best_cfg.data) == (STEPS, str(data))
    run = pretrain.run(best_cfg)
    rerun = json.loads((run / "summary.json").read_text())
    # the same config and seed as the trial: the full run reaches the trial's best val_loss again
    assert rerun["best_val_loss"] == pytest.approx(float(best["best_val_loss"]), rel=0.02)


def _registered_steps(trial_id: str) -> list[int]:
    """The steps of trial ``trial_id``'s checkpoints that Ray Train has registered on S3."""
    return registered_steps(f"s3://sweeps/tiny/trials/{trial_id}/checkpoints")


@pytest.mark.timeout(420)
def test_killed_sweep_resumes_from_s3_without_rerunning_finished_trials(data, tmp_path, session_cluster):
    """The sweep (two trials on Ray Train trainers, one after the other: one worker each, with
    ``train.max_failures``, which keeps a one-worker trial on a trainer) is SIGKILLed, its process and every
    Ray process it started (trials, trainers, workers), as when the machine running it dies, once the first
    trial has finished and the second is mid-way; the same command finishes the rest. Tune's experiment and
    the trials' checkpoints live on the S3 server, as on a cluster without a shared disk; the Optuna
    searcher's state comes back with the experiment (2 trials, not more); the trial cut off mid-way goes
    on from its newest registered checkpoint."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="sweeps")
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "lmforge", "tune", str(sweep_yaml(data, out, 2)), "base.train.max_failures=1",
           f"ray.address={session_cluster.address}", "max_concurrent_trials=1", "scheduler=none", "search=optuna",
           "tune.storage=s3://sweeps/tiny"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    partial = Path(f"{out}.partial")
    started = time.time()
    proc = procs.start(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no trial finished while another was mid-way, in 5 minutes"
            seen = events(partial) if (partial / "trial_events.jsonl").is_file() else []
            done = {e["trial_id"] for e in seen if e["event"] == "complete"}
            running = {e["trial_id"] for e in seen if e["event"] == "start"} - done
            if done and any(0 < max(_registered_steps(t), default=0) < STEPS - EVAL for t in running):
                break
            time.sleep(0.1)
    finally:
        # the driver, then this sweep's Ray workers (the session cluster's processes started since):
        # nothing trains on after the "crash" and registers checkpoints the test would not know of
        procs.stop_session(proc.pid, sig=signal.SIGKILL)
        procs.kill(procs.started_since(session_cluster.sid, started))
        proc.wait(timeout=30)
    # what each unfinished trial had registered when it died: where its restart must go on from
    cut = {t: max(_registered_steps(t), default=0) for t in running}
    before = events(partial)
    finished = {e["trial_id"] for e in before if e["event"] == "complete"}
    assert len(finished) == 1
    assert not out.exists()  # nothing published by the killed run

    def checkpoints(trial_id: str = "") -> dict:
        listing = s3.list_objects_v2(Bucket="sweeps", Prefix=f"tiny/trials/{trial_id}/" if trial_id else "tiny/trials/")
        return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}

    kept = {t: checkpoints(t) for t in finished}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming the sweep" in rerun.stderr
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 2 and all(r["status"] == "completed" and int(r["steps"]) == STEPS for r in rows), (
        rows, cut, before, rerun.stderr[-3000:])
    after = events(out)[len(before):]
    assert {e["trial_id"] for e in after if e["event"] == "complete"} >= {r["trial_id"] for r in rows} - finished
    # A finished trial may be started again if Tune had not saved its end yet (it saves every 10 s or
    # more), but it trains no further: not one checkpoint object of it changed.
    assert {t: checkpoints(t) for t in finished} == kept
    assert {k.split("/")[2] for k in checkpoints()} - {""} == {r["trial_id"] for r in rows}
    # a trial cut off mid-way went on from its own newest registered checkpoint in S3, not from step 0
    # (its final checkpoint's loop state records where the run restarted)
    midway = {t: step for t, step in cut.items() if 0 < step < STEPS}
    assert midway, cut
    for trial_id, step in midway.items():
        key = f"tiny/trials/{trial_id}/checkpoints/step_{STEPS:06d}/state.json"
        state = json.loads(s3.get_object(Bucket="sweeps", Key=key)["Body"].read())
        assert state["resumed_from"] == [step], (trial_id, step, state["resumed_from"])


@pytest.mark.timeout(300)
def test_a_killed_trial_that_trains_in_its_own_process_resumes_from_its_tune_checkpoint(data, tmp_path,
                                                                                         session_cluster):
    """A one-worker trial trains in the Tune trial's own process and checkpoints through Tune (no
    trainer): SIGKILLed mid-way with every Ray process the sweep started, once Tune's saved experiment
    state records the trial and a checkpoint of it (saved at every step here, instead of every 10 s or
    more), the same command goes on from that checkpoint, not from step 0."""
    steps = 300
    out = tmp_path / "inproc"
    cmd = [sys.executable, "-m", "lmforge", "tune", str(sweep_yaml(data, out, 1, steps=steps)),
           f"ray.address={session_cluster.address}", "scheduler=none"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    experiment = Path(f"{out}.partial") / "ray_tune"
    started = time.time()
    proc = procs.start(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (len(list(experiment.glob("*/checkpoint_*"))) >= 3 and _recorded(experiment)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoints in 2 minutes"
            time.sleep(0.05)
    finally:
        procs.stop_session(proc.pid, sig=signal.SIGKILL)
        procs.kill(procs.started_since(session_cluster.sid, started))
        proc.wait(timeout=30)
    assert not out.exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming the sweep" in rerun.stderr
    assert [int(r["steps"]) for r in read_csv(out / "trials.csv")] == [steps]
    last = max((out / "ray_tune").glob("*/checkpoint_*"), key=lambda p: p.name)
    resumed = json.loads((last / "state.json").read_text())["resumed_from"]
    assert len(resumed) == 1 and 0 < resumed[0] < steps, resumed


def _recorded(experiment: Path) -> bool:
    """Whether Tune's saved experiment state names the trial's sampled values and a checkpoint of it."""
    text = "".join(p.read_text(errors="ignore") for p in experiment.glob("experiment_state-*.json"))
    return "train.lr" in text and "checkpoint_0000" in text
