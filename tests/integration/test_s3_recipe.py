"""The whole lifecycle in one recipe, shrunk, with every input and output on ``s3://`` (a moto_server on
loopback): prepare -> tune (1 trial of pretraining) -> pretrain with its learning rate -> import (a small HF
dir from the bucket, in SmolLM2's place) -> LoRA finetune -> export int8 with the adapter beside its base ->
eval (base, tuned adapter, scratch model; task, bias and canary audits) -> serve with requests through the
``openai`` client to the base and the adapter, then the one-page report, rendered in headless Chromium.
The corpus is read from the bucket, each stage publishes there (Ray tasks write their parts straight to
it, the ``.done`` marker last), stages read earlier outputs through node-local mirrors, and
``lmforge run --force export`` skips every stage before it without writing anything, re-runs export and
what follows it (the logic: tests/unit/test_stage.py, test_cli_help.py)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass

import boto3
import pytest
import yaml

from lmforge import cli
from lmforge import config as cfgmod
from lmforge.recipe import runner
from lmforge.stages import STAGES
from tests.conftest import make_tiny_model, require
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
OUTPUTS = {"prepare": "data", "tune": "tune", "pretrain": "train", "import": "import", "finetune": "finetune",
           "export": "onnx", "eval": "eval"}
SHRUNK = ["prepare.text_field=text", "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024",
          "prepare.canaries.count=2", "pretrain.model.preset=tiny", "pretrain.train.max_steps=20",
          "pretrain.train.eval_every=10", "pretrain.train.log_every=10", "pretrain.train.num_workers=0",
          "pretrain.train.checkpoint_every=5", "tune.num_samples=1",
          "tune.base.train.max_steps=4", "tune.base.train.eval_every=2", "tune.base.train.num_workers=0",
          "import.source=s3://corpus/model/",
          "finetune.finetune.max_examples=200", "finetune.finetune.max_seq_len=64",
          "finetune.train.max_steps=10", "finetune.train.eval_every=5", "finetune.train.checkpoint_every=5",
          "finetune.train.log_every=5", "eval.max_examples=4",
          "eval.tasks=[nq_open, bias, {name: canary, data: '{prepare}'}]",
          "prompts=[The river]", "questions=[who wrote hamlet]", "max_tokens=8"]

# every recipe stage's sections, in registry order, after the run's own
SECTIONS = ("Run", "Corpus", "Pretraining", "Fine-tuning", "Sweep", "Evaluation", "Bias audit", "Privacy audit",
            "Export", "Serving")


def _objects(bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix``."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _skipped(caplog) -> list[str]:
    return [r.getMessage().split(":")[0] for r in caplog.records
            if "already holds this run; skipping" in r.getMessage()]


@dataclass
class Lifecycle:
    overrides: list[str]
    result: dict  # what the recipe returned
    keys: dict[str, str]  # every object under the run, key -> ETag, after it
    report_html: str  # the page as this run wrote it


@pytest.fixture(scope="module")
def lifecycle(ray_cluster, corpus_dir, tmp_path_factory) -> Lifecycle:
    s3 = boto3.client("s3")
    for bucket in ("corpus", "runs"):
        s3.create_bucket(Bucket=bucket)
    for path in sorted(corpus_dir.glob("*.jsonl")):
        s3.upload_file(str(path), "corpus", f"wiki/{path.name}")
    model = make_tiny_model(tmp_path_factory.mktemp("model"))  # the model a user brings, in the bucket
    for path in sorted(model.iterdir()):
        s3.upload_file(str(path), "corpus", f"model/{path.name}")
    overrides = ["output=s3://runs/quick", "prepare.inputs=[s3://corpus/wiki/]", *SHRUNK,
                 f"serve.serve.port={free_port()}"]
    result = runner.run(cfgmod.load(STAGES["run"].config_class(), "jobs/quickstart.yaml", overrides))
    return Lifecycle(overrides, result, _objects("runs", "quick/"), open(result["report"], encoding="utf-8").read())


@pytest.mark.timeout(300)
def test_whole_lifecycle_on_s3_with_its_report(lifecycle):
    first, keys = lifecycle.result, lifecycle.keys
    assert first["outputs"] == {name: f"s3://runs/quick/{sub}" for name, sub in OUTPUTS.items()}
    # every request to the base and to its adapter (served as <model>:nq), each answered
    assert [(a["kind"], a["model"].endswith(":nq")) for a in first["serve"]] == [
        ("completion", False), ("completion", True), ("chat", False), ("chat", True)]
    assert all(a["completion"] for a in first["serve"])
    for sub in OUTPUTS.values():
        assert f"quick/{sub}/.done" in keys and f"quick/{sub}/config.yaml" in keys
    assert any(k.startswith("quick/data/train/part-") for k in keys)  # written by Ray Data tasks
    # pretrain ran bare (no Ray Train): its 4 checkpoints uploaded, then pruned to the best 3 as Ray Train
    # prunes; each whole (its state.json, uploaded last)
    steps = {k.split("/")[3] for k in keys if k.startswith("quick/train/checkpoints/step_")}
    assert len(steps) == 3 and all(f"quick/train/checkpoints/{s}/state.json" in keys for s in steps), steps
    assert any(k.startswith("quick/finetune/checkpoints/step_") for k in keys)  # by Ray Train
    assert any(k.startswith("quick/finetune/data/train/") for k in keys)  # rows every worker mirrors
    # a LoRA adapter of the imported model (from the bucket), trained on Ray Train's two workers
    finetuned = json.loads(boto3.resource("s3").Object("runs", "quick/finetune/summary.json").get()["Body"].read())
    assert finetuned["workers"] == 2 and "quick/finetune/adapter/adapter_model.safetensors" in keys
    ft_config = yaml.safe_load(boto3.resource("s3").Object("runs", "quick/finetune/config.yaml").get()["Body"].read())
    assert ft_config["model"]["init_from"] == "s3://runs/quick/import" and "quick/import/model.safetensors" in keys
    # the sweep (its trial training in its own process: Ray Train trials are the killed-sweep test's):
    # Tune's experiment and the trial's checkpoints in the bucket, not on a disk; pretrain trains with its best
    assert any(k.startswith("quick/tune/ray_tune/") and "/checkpoint_" in k for k in keys)
    best = json.loads(boto3.resource("s3").Object("runs", "quick/tune/summary.json").get()["Body"].read())["best"]
    tuned = yaml.safe_load(boto3.resource("s3").Object("runs", "quick/train/config.yaml").get()["Body"].read())
    assert tuned["train"]["lr"] == best["params"]["train.lr"] and tuned["tuned_by"] == "s3://runs/quick/tune"
    assert "quick/train/model/model.safetensors" in keys and "quick/onnx/model.onnx" in keys
    assert "quick/onnx/adapters/nq/adapter_model.safetensors" in keys  # the adapter beside its base
    assert "quick/report.html" in keys and "quick/report.md" in keys
    md = open(first["report"].replace(".html", ".md"), encoding="utf-8").read()
    for row in ("| nq_open | f1 | base |", "| nq_open | f1 | tuned |", "| nq_open | f1 | scratch |",
                "| perplexity int8 |", "| chat | smollm2:nq | who wrote", f"| {best['trial_id']} |",
                "`pretrain` trained with these values"):
        assert row in md, row  # the eval table side by side, export figures, the served requests
    for model in ("base", "tuned", "scratch"):  # a bias row and a canary row per model
        assert sum(line.startswith(f"| {model} |") for line in md.splitlines()) == 2, model
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in lifecycle.report_html, title
    assert lifecycle.report_html.count("<img ") >= 5  # document lengths, both losses, the sweep's two plots


@pytest.mark.timeout(240)
def test_run_force_export_skips_what_came_before_and_redoes_export_and_what_follows(lifecycle, caplog, capsys,
                                                                                     monkeypatch):
    """``lmforge run jobs/quickstart.yaml ... --force export`` through the CLI, on the same cluster
    (RAY_ADDRESS): the stages before export are skipped without one object rewritten; export publishes
    a new run (its marker changes), serve answers again, and the same seeded completion comes back."""
    from ray import get_runtime_context

    monkeypatch.setenv("RAY_ADDRESS", get_runtime_context().gcs_address)
    caplog.set_level(logging.INFO, logger="lmforge")
    # A handler already on the "lmforge" logger: the CLI then keeps its logging as it finds it (it installs
    # a stderr handler only where there is none, and would stop propagation to caplog for the session)
    lmforge_log, placeholder = logging.getLogger("lmforge"), logging.NullHandler()
    lmforge_log.addHandler(placeholder)
    try:
        assert cli.main(["run", "jobs/quickstart.yaml", *lifecycle.overrides, "--force", "export"]) == 0
    finally:
        lmforge_log.removeHandler(placeholder)
    skipped = [r.getMessage().split(":")[0] for r in caplog.records
               if "already holds this run; skipping" in r.getMessage()]
    assert skipped == ["prepare", "tune", "pretrain", "import", "finetune"], skipped
    after = _objects("runs", "quick/")
    before = lifecycle.keys
    # (the recipe's own config.yaml records this run's request: export.force)
    redone = ("quick/onnx/", "quick/eval/", "quick/report.", "quick/config.yaml")
    unchanged = lambda k: not k.startswith(redone)  # noqa: E731
    assert {k: v for k, v in after.items() if unchanged(k)} == {k: v for k, v in before.items() if unchanged(k)}
    assert after["quick/onnx/.done"] != before["quick/onnx/.done"]  # a new export run was published
    completion = lifecycle.result["serve"][0]["completion"]  # the same model, greedy: the same answer
    assert f"] {' '.join(('The river' + completion).split())}\n" in capsys.readouterr().out


def test_the_report_renders_in_chromium(lifecycle, tmp_path):
    """The page (as the lifecycle run wrote it) renders in headless Chromium with its sections, and every
    image decoded (the page's script marks <body data-images-loaded>); a screenshot is taken."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium, "Debian's chromium is not installed (apt-get install chromium; make test installs it when "
                      "run as root)")
    report_html = tmp_path / "report.html"
    report_html.write_text(lifecycle.report_html, encoding="utf-8")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,4000",
             "--virtual-time-budget=5000", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--user-data-dir=" + str(tmp_path / "chrome")]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", f"file://{report_html}"], check=True, capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    dom = subprocess.run([*flags, "--dump-dom", f"file://{report_html}"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert 'data-images-loaded="true"' in dom, dom[:500]
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom
