"""The whole lifecycle in one recipe, shrunk, with every input and output on ``s3://`` (a moto_server on
loopback): prepare -> pretrain -> tune (1 trial) -> finetune with its learning rate -> eval (task,
bias and canary audits) -> export int8 -> serve
with requests through the ``openai`` client, then the one-page report, rendered in headless Chromium.
The corpus is read from the bucket, each stage publishes there (Ray tasks write their parts straight to
it, the ``.done`` marker last), stages read earlier outputs through node-local mirrors, and a second
run skips every finished stage without writing anything (``--force STAGE`` and the re-running of what
follows a re-run stage are unit tests: tests/unit/test_stage.py, test_cli_help.py)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import boto3
import pytest
import yaml

from lmforge import config as cfgmod
from lmforge.recipe import runner
from lmforge.stages import STAGES
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
OUTPUTS = {"prepare": "data", "pretrain": "train", "tune": "tune", "finetune": "finetune", "eval": "eval",
           "export": "onnx"}
SHRUNK = ["prepare.text_field=text", "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024",
          "prepare.canaries.count=2", "pretrain.model.preset=tiny", "pretrain.train.max_steps=20",
          "pretrain.train.eval_every=10", "pretrain.train.log_every=10", "tune.num_samples=1",
          "tune.base.train.max_steps=4", "tune.base.train.eval_every=2", "finetune.finetune.max_examples=200",
          "finetune.train.max_steps=10", "finetune.train.eval_every=5", "finetune.train.checkpoint_every=5",
          "finetune.train.log_every=5", "finetune.train.micro_batch_size=8", "eval.max_examples=4",
          "prompts=[The river]", "questions=[who wrote hamlet]", "max_tokens=8"]


def _objects(bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix``."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _skipped(caplog) -> list[str]:
    return [r.getMessage().split(":")[0] for r in caplog.records
            if "already holds this run; skipping" in r.getMessage()]


def test_whole_lifecycle_on_s3_reported_then_rerun_skips_every_stage(ray_cluster, corpus_dir, caplog, tmp_path):
    s3 = boto3.client("s3")
    for bucket in ("corpus", "runs"):
        s3.create_bucket(Bucket=bucket)
    for path in sorted(corpus_dir.glob("*.jsonl")):
        s3.upload_file(str(path), "corpus", f"wiki/{path.name}")
    overrides = ["output=s3://runs/quick", "prepare.inputs=[s3://corpus/wiki/]", *SHRUNK,
                 f"serve.serve.port={free_port()}"]
    recipe = cfgmod.load(STAGES["run"].config_class(), "jobs/quickstart.yaml", overrides)
    first = runner.run(recipe)
    assert first["outputs"] == {name: f"s3://runs/quick/{sub}" for name, sub in OUTPUTS.items()}
    assert [a["kind"] for a in first["serve"]] == ["completion", "chat"]
    assert all(a["completion"] for a in first["serve"])
    keys = _objects("runs", "quick/")
    for sub in OUTPUTS.values():
        assert f"quick/{sub}/.done" in keys and f"quick/{sub}/config.yaml" in keys
    assert any(k.startswith("quick/data/train/part-") for k in keys)  # written by Ray Data tasks
    assert any(k.startswith("quick/train/checkpoints/step_") for k in keys)  # by Ray Train
    assert any(k.startswith("quick/finetune/checkpoints/step_") for k in keys)
    assert any(k.startswith("quick/finetune/data/train/") for k in keys)  # rows every worker mirrors
    # the sweep: Tune's experiment, the trials' checkpoints and their rows in the bucket, not on a disk
    for sub in ("ray_tune/", "trials/", "data/train/"):
        assert any(k.startswith(f"quick/tune/{sub}") for k in keys), sub
    best = json.loads(boto3.resource("s3").Object("runs", "quick/tune/summary.json").get()["Body"].read())["best"]
    tuned = yaml.safe_load(boto3.resource("s3").Object("runs", "quick/finetune/config.yaml").get()["Body"].read())
    assert tuned["train"]["lr"] == best["params"]["train.lr"] and tuned["tuned_by"] == "s3://runs/quick/tune"
    assert "quick/train/model/model.safetensors" in keys and "quick/onnx/model.onnx" in keys
    assert "quick/report.html" in keys and "quick/report.md" in keys
    md = open(first["report"].replace(".html", ".md"), encoding="utf-8").read()
    for row in ("| nq_open | f1 | base |", "| nq_open | f1 | tuned |", "| perplexity int8 |", "| chat | who wrote",
                f"| {best['trial_id']} |", "`finetune` trained with these values"):
        assert row in md, row  # the eval table side by side, export figures, the served requests
    for model in ("base", "tuned"):  # a bias row and a canary row per model
        assert sum(line.startswith(f"| {model} |") for line in md.splitlines()) == 2, model
    report_html = open(first["report"], encoding="utf-8").read()

    caplog.set_level(logging.INFO, logger="lmforge")
    second = runner.run(recipe)
    assert _skipped(caplog) == list(OUTPUTS), _skipped(caplog)
    stage_keys = {k: v for k, v in _objects("runs", "quick/").items() if not k.startswith("quick/report.")}
    assert stage_keys == {k: v for k, v in keys.items() if not k.startswith("quick/report.")}  # none rewritten
    assert second["serve"][0]["completion"] == first["serve"][0]["completion"]  # the same model, seeded

    _check_report_in_chromium(first["report"], report_html, tmp_path)  # last: it skips without chromium


def _check_report_in_chromium(path: str, text: str, tmp_path) -> None:
    """The page (as the first run wrote it) renders in headless Chromium with its sections, and every
    image decoded (the page's script marks <body data-images-loaded>); a screenshot is taken."""
    from lmforge.recipe.report import SECTIONS

    report_html = tmp_path / "report.html"
    report_html.write_text(text, encoding="utf-8")
    assert path.endswith("report.html")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text, title
    assert text.count("<img ") >= 5  # document lengths, pretrain and finetune loss, the sweep's two plots
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the report's HTML was "
                    "checked, not its rendering")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,4000",
             "--virtual-time-budget=5000", "--user-data-dir=" + str(tmp_path / "chrome")]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", f"file://{report_html}"], check=True, capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    dom = subprocess.run([*flags, "--dump-dom", f"file://{report_html}"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert 'data-images-loaded="true"' in dom, dom[:500]
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom
