"""Benchmarks (``lmforge bench <name> key=value ...``): the product measured from outside, JSON out.

They call the same public functions a user does and read only the package's own data; what they
measured lives in docs/benchmarks.md with the command that produced it.
"""

import json
from pathlib import Path

from lmforge.stages import Command as Bench

BENCHES: dict[str, Bench] = {b.name: b for b in (
    Bench("prepare", "the prepare pipeline against its raw tokenizer, and near-dedup against datatrove",
          "lmforge.bench.config:PrepareBenchConfig", "lmforge.bench.prepare_bench:run"),
    Bench("train", "training tokens/s through Ray Train against a bare process (or MFU on one GPU)",
          "lmforge.bench.config:TrainBenchConfig", "lmforge.bench.train_bench:run"),
    Bench("generate", "decode tokens/s and TTFT of our ONNX exports against transformers and llama.cpp",
          "lmforge.bench.config:GenerateBenchConfig", "lmforge.bench.generate_bench:run"),
    Bench("kernels", "onnxruntime's int8 vs int4 weight-only matmul on a decode step's shapes",
          "lmforge.bench.config:KernelBenchConfig", "lmforge.bench.kernel_bench:run"),
    Bench("serve", "the server under a bounded load (TTFT, inter-token latency, tokens/s) against its engine alone",
          "lmforge.bench.config:ServeBenchConfig", "lmforge.bench.serve_bench:run"),
    Bench("eval", "multiple-choice scores and time against lm-evaluation-harness on the same rows",
          "lmforge.bench.config:EvalBenchConfig", "lmforge.bench.eval_bench:run"),
)}


def write_result(result: dict, output: str | None) -> dict:
    """Write a bench's JSON result to ``output`` (when set, creating its folder); returns the result."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2))
    return result
