"""The quickstart recipe with every input and output on ``s3://`` (a moto_server on loopback): the corpus
is read from the bucket, each stage publishes its output there (parts written by Ray tasks straight to
the bucket, the ``.done`` marker last), stages read the previous ones' outputs through node-local
mirrors, and a second run skips every finished stage without writing anything."""

from __future__ import annotations

import logging

import boto3
import pytest

from lmforge import config as cfgmod
from lmforge.recipe import runner
from lmforge.stages import STAGES
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
STAGES_ON_S3 = ("data", "train", "onnx")


def _objects(bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix``."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_quickstart_with_everything_on_s3_then_a_rerun_skips_every_stage(ray_cluster, corpus_dir, caplog):
    s3 = boto3.client("s3")
    for bucket in ("corpus", "runs"):
        s3.create_bucket(Bucket=bucket)
    for path in sorted(corpus_dir.glob("*.jsonl")):
        s3.upload_file(str(path), "corpus", f"wiki/{path.name}")
    recipe = cfgmod.load(STAGES["run"].config_class(), "jobs/quickstart.yaml", [
        "output=s3://runs/quick", "prepare.inputs=[s3://corpus/wiki/]", "prepare.text_field=text",
        "prepare.pack.seq_len=64", "prepare.tokenizer.vocab_size=1024", "pretrain.model.preset=tiny",
        "pretrain.train.max_steps=20", "pretrain.train.eval_every=10", "pretrain.train.log_every=10",
        f"serve.serve.port={free_port()}", "prompts=[The river]", "max_tokens=8"])
    first = runner.run(recipe)
    assert first["outputs"] == {"prepare": "s3://runs/quick/data", "pretrain": "s3://runs/quick/train",
                                "export": "s3://runs/quick/onnx"}
    assert first["serve"][0]["completion"]
    keys = _objects("runs", "quick/")
    for sub in STAGES_ON_S3:
        assert f"quick/{sub}/.done" in keys and f"quick/{sub}/config.yaml" in keys
    assert any(k.startswith("quick/data/train/part-") for k in keys)  # written by Ray Data tasks
    assert any(k.startswith("quick/train/checkpoints/step_") for k in keys)  # by Ray Train
    assert "quick/train/model/model.safetensors" in keys and "quick/onnx/model.onnx" in keys

    caplog.set_level(logging.INFO, logger="lmforge")
    second = runner.run(recipe)
    skipped = [r.getMessage() for r in caplog.records if "already holds this run; skipping" in r.getMessage()]
    assert [m.split(":")[0] for m in skipped] == ["prepare", "pretrain", "export"], skipped
    assert _objects("runs", "quick/") == keys  # not one object rewritten
    assert second["serve"] == first["serve"]  # the same served model, seeded sampling
