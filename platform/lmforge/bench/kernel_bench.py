"""``lmforge bench kernels``: onnxruntime's weight-only matmul (``MatMulNBits``) at batch 1, int8 vs int4,
on the shapes of a decode step of SmolLM2-135M, with the weights in cache and streamed from memory.

Why it exists: it bounds what int4 can buy on a CPU. A decode step reads every weight once, so in a
real model the weights come from DRAM, not cache; if the int4 kernel is no faster than int8 there, no
graph or generator change makes an int4 model much faster than an int8 one.

Run: ``lmforge bench kernels output=runs/bench/kernels.json``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from lmforge.bench import write_result
from lmforge.bench.config import KernelBenchConfig

# (K, N, count per decode step) for SmolLM2-135M: q, o; k, v; gate, up; down (x 30 layers); lm_head.
SMOLLM2_SHAPES = {"q_o": (576, 576, 60), "k_v": (576, 192, 60), "gate_up": (576, 1536, 60),
                  "down": (1536, 576, 30), "lm_head": (576, 49152, 1)}


def _session(k: int, n: int, bits: int, block: int, copies: int, threads: int):
    """A graph of ``copies`` independent MatMulNBits nodes reading one input (random weights: the
    kernel's speed does not depend on the values)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []
    for c in range(copies):
        packed, scales = random_weights(k, n, bits, block, rng)
        inits += [numpy_helper.from_array(packed, f"w{c}"), numpy_helper.from_array(scales, f"s{c}")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"w{c}", f"s{c}"], [f"y{c}"], domain="com.microsoft",
                                      K=k, N=n, bits=bits, block_size=block, accuracy_level=4))
        outputs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, [1, n]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_weights(k: int, n: int, bits: int, block: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' layout: ``[N, K/block, block*bits/8]`` packed codes (low nibble first for 4 bits)
    and one float scale per block; no zero points, so the kernel's default (2^(bits-1)) applies."""
    blocks = -(-k // block)
    packed = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
    return packed, ((rng.random(n * blocks, dtype=np.float32) + 0.5) / 64)


def _us_per_matmul(sess, k: int, copies: int, repeats: int) -> float:
    x = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
    sess.run(None, x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, x)
        best = min(best, time.perf_counter() - start)
    return best / copies * 1e6


def run(cfg: KernelBenchConfig) -> dict:
    result: dict = {"threads": cfg.threads, "cores": os.cpu_count(), "op": "com.microsoft.MatMulNBits, M=1, "
                    "accuracy_level 4", "shapes": {}, "decode_step_matmul_ms": {}}
    for name, (k, n, count) in SMOLLM2_SHAPES.items():
        row = {}
        for bits in cfg.bits:
            block = cfg.int8_block if bits == 8 else cfg.int4_block
            weight_bytes = n * -(-k // block) * (block * bits // 8 + 4)
            streamed = max(1, cfg.streamed_mb * 2**20 // weight_bytes)
            row[f"int{bits}"] = {
                "cached_us": _us_per_matmul(_session(k, n, bits, block, 1, cfg.threads), k, 1, cfg.repeats * 20),
                "streamed_us": _us_per_matmul(_session(k, n, bits, block, streamed, cfg.threads), k, streamed,
                                              cfg.repeats),
                "weight_mb": weight_bytes / 2**20,
            }
        result["shapes"][name] = {"K": k, "N": n, "per_step": count, **row}
    for bits in cfg.bits:
        # A decode step reads each weight once, so the streamed figure is the one a real model sees.
        result["decode_step_matmul_ms"][f"int{bits}"] = sum(
            s["per_step"] * s[f"int{bits}"]["streamed_us"] for s in result["shapes"].values()) / 1e3
    return write_result(result, cfg.output)
