"""``lmforge bench generate`` and ``lmforge bench kernels`` once each on tiny settings (no Ray): every
engine and shape measured, the JSON a user gets (``make bench`` runs them on SmolLM2; the figures are in
docs/benchmarks.md). The other benches need a cluster: tests/integration/test_bench.py."""

import json

from lmforge import config as cfgmod
from lmforge.bench import generate_bench, kernel_bench
from lmforge.bench.config import GenerateBenchConfig, KernelBenchConfig


def test_bench_kernels_times_both_widths_on_every_decode_shape(tmp_path):
    out = tmp_path / "kernels.json"
    result = kernel_bench.run(cfgmod.from_dict(KernelBenchConfig, {"streamed_mb": 2, "repeats": 1,
                                                                   "output": str(out)}))
    assert json.loads(out.read_text()) == result
    assert {"q_o", "k_v", "gate_up", "down", "lm_head"} <= set(result["shapes"])
    for name, shape in result["shapes"].items():
        for bits in ("int8", "int4"):
            assert shape[bits]["cached_us"] > 0 and shape[bits]["streamed_us"] > 0, (name, bits)
        assert shape["int4"]["weight_mb"] < shape["int8"]["weight_mb"], name  # really packed narrower
    assert result["decode_step_matmul_ms"]["int8"] > 0 and result["decode_step_matmul_ms"]["int4"] > 0


def test_bench_generate_measures_each_engine_at_each_batch(hf_dir, tmp_path):
    cfg = cfgmod.from_dict(GenerateBenchConfig, {
        "source": str(hf_dir), "work_dir": str(tmp_path / "work"), "precisions": ["fp32", "int8"],
        "batches": [1, 2], "repeats": 2, "new_tokens": 8, "threads": 1, "output": str(tmp_path / "generate.json")})
    result = generate_bench.run(cfg)
    assert json.loads((tmp_path / "generate.json").read_text()) == result
    for batch in ("batch_1", "batch_2"):
        row = result[batch]
        for engine in ("transformers_eager_fp32", "lmforge_fp32", "lmforge_int8"):
            runs = row[engine]["decode_tokens_per_s_runs"]
            assert len(runs) == 2 and all(r > 0 for r in runs) and row[engine]["ttft_s"] > 0, (batch, engine)
        # every timed run decoded all its tokens (end of sequence suppressed), or tokens/s would flatter
        assert row["lmforge_fp32"]["tokens"] == row["lmforge_int8"]["tokens"] == 8
        assert set(row["speedup_vs_transformers"]) == {"fp32", "int8"}
        assert abs(row["lmforge_int8"]["perplexity"]["increase"]) < 0.05  # the int8 export's own check
    # llama.cpp is a benchmark-only extra: measured when installed, else the row says how to install it
    assert isinstance(result["batch_1"]["llama_cpp"], (dict, str))
