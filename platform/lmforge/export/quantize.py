"""Reduced-precision variants of an exported graph: weight-only int8 / int4 (``MatMulNBits``) and fp16.

Activations stay fp32 in the weight-only variants; every rewrite of the quantized graph (merged
projections, int8 embedding table, the int4 offset term) lives in :mod:`lmforge.export.rewrites`.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.export.rewrites import integer_kernel_with_offsets, merge_shared_input_matmuls, quantize_embeddings

QUANT_BITS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = {8: 64, 4: 32}


def to_fp16(fp32_path: Path, out_path: Path) -> str:
    """Every float initializer and op in fp16; graph inputs and outputs stay fp32 (casts inside), so the
    generator and server feed it like the fp32 graph. Meant for GPU execution providers; it also runs
    on onnxruntime's CPU provider, which is where its perplexity is checked."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(out_path))
    return "fp16 weights and activations, fp32 inputs/outputs"


def quantize_weights(fp32_path: Path, out_path: Path, bits: int, block_size: int = 32) -> str:
    """Weight-only block-wise quantization of every MatMul (``MatMulNBits``); activations stay fp32.
    Returns a description of what was done, for ``export.json``.

    - int8: symmetric round-to-nearest per block.
    - int4: HQQ, which fits a float zero point per block (weights imported from a GGUF such as SmolLM2's
      are Q4_1, a float minimum per block of 32, which an integer zero point cannot represent), with
      lm_head at 8 bits; then rewritten by :func:`~lmforge.export.rewrites.integer_kernel_with_offsets`
      to run on onnxruntime's integer kernel.
    Why these choices (block sizes, HQQ over round-to-nearest): docs/benchmarks.md, "Export".
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    # It logs one INFO line per graph node it leaves alone (~400 for the demo's model): warnings only.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    def rtn(model, nbits: int, exclude: list[str]):
        algo = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=nbits)
        q = MatMulNBitsQuantizer(model, bits=nbits, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                 algo_config=algo, nodes_to_exclude=exclude)
        q.process()
        return q.model.model

    model = onnx.load(str(fp32_path))
    if bits == 8:
        model, how = rtn(model, 8, []), f"weight-only MatMulNBits int8, block {block_size}, symmetric"
        merged = merge_shared_input_matmuls(model)
    else:
        lm_head = [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
        q = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits),
                                 nodes_to_exclude=lm_head)
        q.process()
        model = rtn(q.model.model, 8, [])
        merged = merge_shared_input_matmuls(model)
        model = integer_kernel_with_offsets(model)
        how = (f"weight-only MatMulNBits int{bits} by HQQ, block {block_size}, run as the symmetric integer "
               f"kernel plus an exact per-block offset; lm_head int8 (round-to-nearest)")
    if merged:
        how += f"; {merged} groups of projections reading one input merged into one matmul each"
    if quantize_embeddings(model):
        how += "; embedding table int8 (GatherBlockQuantized, block 32)"
    onnx.save(model, str(out_path))
    return how
