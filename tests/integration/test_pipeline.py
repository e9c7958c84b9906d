"""prepare -> pretrain (Ray Train, 2 workers) -> export -> serve (HTTP on loopback), on a real local Ray:
the end-to-end path ``make test-fast`` runs after the unit tier (marker ``smoke``)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pyarrow.parquet as pq
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge import config as cfgmod
from lmforge.data import prepare
from lmforge.data.config import PrepareConfig
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from lmforge.serve import server
from lmforge.serve.config import ServeConfig
from lmforge.train import stage as pretrain
from lmforge.train.config import PretrainConfig
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.smoke]
SEQ_LEN = 64
API_KEY = "sk-test-lmforge"


@pytest.fixture(scope="module")
def prepared(small_data) -> Path:
    """The session's prepared test corpus (tests/integration/conftest.py): the training, sweep and
    autoscaling tests read the same one, which the smoke path checks here."""
    return small_data


@pytest.fixture(scope="module")
def trained(prepared) -> Path:
    out = prepared.parent / "train"
    cfg = cfgmod.load(PretrainConfig, None, [
        f"data={prepared}", f"output={out}", "train.num_workers=2", "train.max_steps=30",
        "train.micro_batch_size=8", "train.lr=0.003", "train.warmup_steps=5", "train.log_every=5",
        "train.eval_every=15"])
    return pretrain.run(cfg)


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    cfg = cfgmod.from_dict(ExportConfig, {"model": str(trained / "model"), "output": str(trained.parent / "onnx")})
    return onnx_export.run(cfg)


@pytest.fixture(scope="module")
def served(exported):
    cfg = cfgmod.from_dict(ServeConfig, {"model": str(exported),
                                         "serve": {"port": free_port(), "api_keys": [API_KEY],
                                                   "replica_cpus": 0.5, "model_name": "tiny-test"}})
    url = server.start(cfg)
    yield url
    server.stop()


def test_prepare_layout_and_manifest(prepared, corpus_dir):
    for sub in ("documents", "rejected", "tokenizer", "train", "val"):
        assert (prepared / sub).is_dir(), sub
    manifest = json.loads((prepared / "manifest.json").read_text())
    docs = manifest["documents"]
    n_input = sum(1 for f in corpus_dir.glob("*.jsonl") for line in f.read_bytes().splitlines() if line.strip())
    assert docs["input"] == n_input
    assert docs["input"] == docs["kept"] + sum(docs["dropped"].values()) + docs["quarantined"]
    assert docs["quarantined"] == 3  # bad JSON, a record without `text`, invalid UTF-8
    kept = pq.read_table(prepared / "documents")
    assert kept.num_rows == docs["kept"] and set(kept.column_names) >= {"id", "text", "source"}
    assert any("서울" in t for t in kept.column("text").to_pylist())
    rejected = pq.read_table(prepared / "rejected")
    reasons = rejected.column("reason").to_pylist()
    assert sorted(r for r in reasons if r.startswith("quarantine:")) == [
        "quarantine:invalid_json", "quarantine:invalid_utf8", "quarantine:missing_field"]
    assert "exact_duplicate" in reasons  # BoolQ repeats some passages verbatim
    assert b"\xff\xfe bad bytes" in rejected.column("raw").to_pylist()
    # every document's language, in the outputs, the manifest and the report: Korean and English here;
    # the quarantined ones were never read as text (und)
    langs = manifest["languages"]
    assert sum(langs["input"].values()) == docs["input"] and sum(langs["kept"].values()) == docs["kept"]
    assert langs["kept"]["en"] > langs["kept"]["ko"] > 0 and langs["input"]["und"] >= 3
    by_text = dict(zip(kept.column("text").to_pylist(), kept.column("language").to_pylist()))
    assert all(lang == "ko" for text, lang in by_text.items() if "서울" in text)
    assert "| ko |" in (prepared / "report.md").read_text()
    # demographic terms counted over the kept text (BoolQ's Wikipedia passages name both genders)
    assert manifest["bias"]["words"] > 10_000 and manifest["bias"]["per_million_words"]["gender"]["male"] > 0
    assert "## Bias statistics" in (prepared / "report.md").read_text()


def test_prepare_rows_are_seq_len_and_tokens_add_up(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    for split in ("train", "val"):
        table = pq.read_table(prepared / split)
        assert table.num_rows == manifest["rows"][split] > 0
        assert {len(r) for r in table.column("input_ids").to_pylist()} == {SEQ_LEN}
        assert sum(table.column("n_tokens").to_pylist()) == manifest["tokens"][split]
    tok = AutoTokenizer.from_pretrained(prepared / "tokenizer")
    assert tok.vocab_size == manifest["vocab_size"] == 1024
    assert tok.decode(tok("한국어 and English").input_ids, skip_special_tokens=True) == "한국어 and English"


def _mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")}


def test_prepare_is_deterministic_and_skips_a_finished_run(prepared, corpus_dir, tmp_path):
    cfg = cfgmod.load(PrepareConfig, prepared / "config.yaml")
    before = _mtimes(prepared)
    assert prepare.run(cfg) == prepared  # skipped: same config, finished ...
    assert _mtimes(prepared) == before  # ... and nothing in it was written again
    again = prepare.run(cfgmod.load(PrepareConfig, prepared / "config.yaml", [f"output={tmp_path / 'again'}"]))
    first, second = (json.loads((p / "manifest.json").read_text()) for p in (prepared, again))
    assert first["tokenizer_sha256"] == second["tokenizer_sha256"]
    assert first["tokens"] == second["tokens"] and first["documents"] == second["documents"]
    rows = [pq.read_table(p / "train").column("input_ids").to_pylist() for p in (prepared, again)]
    assert rows[0] == rows[1]


def test_finished_pretrain_is_skipped_without_writing_anything(trained):
    before = _mtimes(trained)
    assert pretrain.run(cfgmod.load(PretrainConfig, trained / "config.yaml")) == trained
    assert _mtimes(trained) == before


def test_pretrain_on_ray_train_loss_falls_and_model_loads(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in rows)
    assert "val_loss" in rows[2] and "val_loss" in rows[-1]
    assert (trained / "loss.png").stat().st_size > 0
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["workers"] == 2
    model = AutoModelForCausalLM.from_pretrained(trained / "model")
    tok = AutoTokenizer.from_pretrained(trained / "model")
    ids = tok("The river", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert not torch.isnan(model(ids).logits).any()


def test_export_parity(exported):
    report = json.loads((exported / "export.json").read_text())
    assert report["parity"]["max_abs_diff"] <= 1e-3


def test_serve_health_models_and_auth(served):
    assert requests.get(f"{served}/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(f"{served}/v1/models", timeout=10).status_code == 401
    wrong = requests.get(f"{served}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = requests.get(f"{served}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert ok.json()["data"][0]["id"] == "tiny-test"


def test_serve_completions_with_the_openai_client(served, exported):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    resp = client.completions.create(model="tiny-test", prompt="The river", max_tokens=8, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason in ("stop", "length") and resp.usage.completion_tokens <= 8
    # The text really comes from onnxruntime: the same generator run here gives the same greedy text.
    from lmforge.generate.onnx_generator import OnnxGenerator, SamplingParams

    (local,) = OnnxGenerator(exported).generate(["The river"], SamplingParams(max_tokens=8, temperature=0))
    assert choice.text == local.text
    streamed = client.completions.create(model="tiny-test", prompt="The river", max_tokens=8, temperature=0,
                                         stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == local.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_serve_rejects_bad_requests_in_openai_shape(served):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bad = requests.post(f"{served}/v1/completions", json={"prompt": "x", "max_tokens": 0}, headers=headers,
                        timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    missing = requests.post(f"{served}/v1/completions", json={"max_tokens": 3}, headers=headers, timeout=10)
    assert missing.status_code == 400 and "prompt" in missing.json()["error"]["message"]
    other = requests.post(f"{served}/v1/completions", json={"prompt": "x", "model": "gpt-9"}, headers=headers,
                          timeout=10)
    assert other.status_code == 404
