"""The benchmarks that need a cluster, once each on tiny settings, on the session's cluster: ``lmforge
bench prepare``, ``bench serve`` and ``bench train`` (which, without a cluster to join, starts and stops
one of its own). What they measured at full size lives in docs/benchmarks.md; here, that each runs and
reports what it says."""

from __future__ import annotations

import json

import pytest

from lmforge import config as cfgmod
from lmforge.bench import prepare_bench, serve_bench, train_bench
from lmforge.bench.config import PrepareBenchConfig, ServeBenchConfig, TrainBenchConfig
from lmforge.export import onnx_export
from lmforge.export.config import ExportConfig
from tests.conftest import make_lora_adapter, make_tiny_model, merge_lora_adapter
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_bench_prepare_reports_the_pipeline_its_raw_tokenizer_and_near_dedup(ray_cluster, tmp_path):
    result = prepare_bench.run(cfgmod.from_dict(PrepareBenchConfig, {
        "docs": 300, "datatrove": False, "work_dir": str(tmp_path / "work"), "output": str(tmp_path / "p.json")}))
    assert json.loads((tmp_path / "p.json").read_text()) == result
    docs = result["pipeline_documents"]
    assert docs["input"] == result["corpus"]["documents"] and result["corpus"]["near_pairs"] > 0
    assert docs["input"] == docs["kept"] + sum(docs["dropped"].values()) + docs["quarantined"]
    assert result["pipeline"]["tokens_per_s"] > 0 and result["raw_encode_batch"]["tokens_per_s"] > 0
    assert 0 < result["ratio_pipeline_over_raw"] and 0 < result["ratio_bound"]["max_ratio"]
    bound = result["ratio_bound"]  # the steps language ID and bias statistics add, per document
    assert 0 < bound["language_id_cpu_us_per_doc"] < bound["curation_cpu_us_per_doc"]
    assert bound["bias_count_cpu_us_per_doc"] > 0
    assert result["near_dedup"]["lmforge"]["recall"] > 0.5  # the planted near-copies are found


def test_bench_serve_measures_the_server_against_its_engine_alone(ray_cluster, tmp_path):
    """On an export with two LoRA adapters beside it: the levels, the same top level spread over the
    adapters, and against one of them merged and served alone (tokens/s and replica memory)."""
    hf = make_tiny_model(tmp_path / "hf")
    adapters = {n: make_lora_adapter(hf, tmp_path / n, 4, ["q_proj", "v_proj"], seed=i) for i, n in enumerate("ab")}
    model = onnx_export.run(ExportConfig(model=str(hf), output=str(tmp_path / "onnx"),
                                         adapters=[f"{n}={d}" for n, d in adapters.items()]))
    merged = onnx_export.run(ExportConfig(model=str(merge_lora_adapter(hf, adapters["a"], tmp_path / "merged")),
                                          output=str(tmp_path / "merged-onnx")))
    result = serve_bench.run(cfgmod.from_dict(ServeBenchConfig, {
        "model": str(model), "port": free_port(), "concurrency": [1, 2], "duration_s": 2, "max_tokens": 8,
        "threads": 1, "short_requests": 3, "output": str(tmp_path / "s.json"), "adapters": ["a", "b"],
        "merged_model": str(merged)}))
    assert json.loads((tmp_path / "s.json").read_text()) == result
    for level in ("concurrency_1", "concurrency_2"):
        row = result["levels"][level]
        assert row["errors"] == 0 and row["requests"] > 0 and row["tokens_per_s"] > 0, row
        assert row["ttft_s"]["p50"] > 0 and row["inter_token_latency_s"]["p50"] > 0
    alone = result["generator_alone"]
    assert alone["batch_2_tokens_per_s"] > 0 and alone["one_token_latency_s"]["p50"] > 0
    assert result["tokens_per_s_2_streams_over_1"] > 0 and "server_overhead_p50_ms" in result
    mixed = result["adapters"]["concurrency_2"]
    for row in mixed.values():
        assert row["errors"] == 0 and row["requests"] > 0, row
    versus = result["adapters"]["vs_merged"]
    assert versus["tokens_per_s_ratio_mixed_over_merged"] > 0 and versus["merged"]["errors"] == 0
    assert 0 < versus["memory"]["ratio_over_merged_plus_adapters"] < 10


def test_bench_train_measures_ray_train_against_a_bare_process(ray_cluster, tmp_path):
    result = train_bench.run(cfgmod.from_dict(TrainBenchConfig, {
        "preset": "tiny", "seq_len": 32, "vocab_size": 512, "global_batch": 8, "steps": 4, "warmup": 1,
        "workers": 2, "output": str(tmp_path / "t.json")}))
    assert json.loads((tmp_path / "t.json").read_text()) == result
    assert result["bare"]["tokens_per_s"] > 0 and result["ray"]["tokens_per_s"] > 0
    assert result["ray"]["workers"] == 2 and result["ray"]["cluster"] == "joined"
    assert result["ray"]["fixed_overhead_s"] > 0
    ratio = result["ray"]["tokens_per_s"] / result["bare"]["tokens_per_s"]
    assert result["ratio_ray_over_bare"] == pytest.approx(ratio)
