"""The ``export`` stage's work: an HF causal LM -> ``model.onnx`` with KV cache, verified; int8 / int4 / fp16 variants.

Run: ``lmforge export model=runs/quickstart/train/model output=runs/onnx quantize=int8 ppl_text=held_out.jsonl``.

The run, step by step: load the HF model; trace the fp32 graph (:mod:`.graph`); copy the tokenizer
and configs beside it; verify it against PyTorch: logits at prefill and decode, greedy text, perplexity
on held-out text (:mod:`.verify`); make the reduced-precision variant if asked (:mod:`.quantize`),
check its perplexity against fp32 and measure its logits and greedy tokens against PyTorch; write
``export.json``; fail with every out-of-bounds figure named, or publish the dir as ``output``.

Route chosen: our own ``torch.onnx`` (TorchScript exporter) wrapper around the HF model rather than
onnxruntime-genai's builder: it exports any causal LM whose forward takes ``cache=`` with no extra
dependency, and its logits match PyTorch's to float rounding.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from lmforge import storage
from lmforge.export import lora_graph, quantize, verify
from lmforge.export.config import ExportConfig
from lmforge.export.graph import export_onnx, load_model
from lmforge.generate.adapters import adapter_name
from lmforge.outputs import Output

log = logging.getLogger(__name__)

COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")


def run(cfg: ExportConfig) -> Path:
    """Export, verify, quantize if asked, write ``export.json``; returns the output dir."""
    out = Output("export", cfg)
    if out.skip():
        return out.result()
    model_dir = storage.local_dir(cfg.model)  # an s3:// model: this node's mirror of it
    model = load_model(model_dir)
    text = verify.held_out_text(cfg.ppl_text, cfg.ppl_docs) if cfg.ppl_text else None
    partial = out.begin()
    reduced = cfg.quantize != "none" or cfg.kv_cache != "float32"
    fp32 = partial / ("model.fp32.onnx" if reduced else "model.onnx")
    adapters = {name: storage.local_dir(path) for name, path in map(adapter_name, cfg.adapters)}
    targets = lora_graph.resolve_targets(model, cfg.lora_targets, list(adapters.values()))
    export_onnx(model, fp32, cfg.opset, targets)
    copy_model_files(Path(model_dir), partial)
    for name, path in adapters.items():
        lora_graph.copy_adapter(path, partial / "adapters" / name)
    report = {"precision": "fp32", "opset": cfg.opset, "kv_cache": "float32", "parity": verify.parity(model, fp32, cfg)}
    report["greedy_matches_transformers"] = verify.greedy_matches(model, partial, fp32, cfg.parity_greedy_tokens)
    if text is not None:
        report["perplexity"] = {"fp32": verify.perplexity(fp32, partial, text, cfg.ppl_window)}
    if reduced:
        shipped = partial / "model.onnx"
        if cfg.quantize != "none":
            report.update(precision=cfg.quantize, quantization=reduce_precision(fp32, shipped, cfg))
            report["perplexity"][cfg.quantize] = verify.perplexity(shipped, partial, text, cfg.ppl_window)
        if cfg.kv_cache == "int8":
            report.update(kv_cache="int8", kv_quantization=int8_kv_cache(shipped if cfg.quantize != "none" else fp32,
                                                                         shipped, cfg))
            report["perplexity"]["kv_int8"] = verify.perplexity(shipped, partial, text, cfg.ppl_window)
        ppl = report["perplexity"]["kv_int8" if cfg.kv_cache == "int8" else cfg.quantize]
        report["perplexity"]["increase"] = ppl / report["perplexity"]["fp32"] - 1
        # the shipped graph itself against PyTorch: logits over prefill + decode, and the tokens it picks
        report["quantized_parity"] = verify.parity(model, shipped, cfg)
        report["quantized_parity"].pop("atol")  # reported, not gated: perplexity is the gate
        report["quantized_agreement"] = verify.agreement(model, partial, shipped, cfg.parity_greedy_tokens)
        if not cfg.keep_fp32:
            fp32.unlink()
    if targets:
        shipped = partial / "model.onnx"
        report["adapters"] = {"targets": len(targets), "modules": sorted({t.rsplit(".", 1)[-1] for t in targets}),
                              "parity": verify.adapter_parity(model, shipped, {n: str(partial / "adapters" / n)
                                                                               for n in adapters}, cfg)}
    report["size_bytes"] = {p.name: p.stat().st_size for p in partial.iterdir() if p.suffix == ".onnx"}
    (partial / "export.json").write_text(json.dumps(report, indent=2))
    verify.gate(report, cfg, partial)
    return out.publish()


def copy_model_files(model_dir: Path, out: Path) -> None:
    """The tokenizer and configs the generator and server need, beside the graph."""
    for name in COPY_FILES:
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, out / name)


def int8_kv_cache(src: Path, out: Path, cfg: ExportConfig) -> str:
    """``src`` with an int8 KV cache, written to ``out`` (which may be ``src``): scales calibrated on the
    ppl_text records after those perplexity is measured on, one row of up to ``ppl_window`` tokens each."""
    from transformers import AutoTokenizer

    from lmforge.export import kv_quant

    docs = verify.held_out_text(cfg.ppl_text, cfg.kv_calibration_docs, skip=cfg.ppl_docs).split("\n\n")
    tokenizer = AutoTokenizer.from_pretrained(str(out.parent))
    rows = [ids[: cfg.ppl_window] for ids in tokenizer(docs, verbose=False).input_ids if len(ids) > 1]
    if not rows:
        raise ValueError(f"kv_cache=int8: {cfg.ppl_text} has no records after the first {cfg.ppl_docs} to calibrate on")
    scales = kv_quant.calibrate(out.parent, src.name, rows)
    return kv_quant.quantize_kv_cache(src, out, scales) + f" ({len(rows)} records of {cfg.ppl_text})"


def reduce_precision(fp32: Path, out: Path, cfg: ExportConfig) -> str:
    """Write the ``cfg.quantize`` variant of the fp32 graph; returns what was done, for export.json."""
    if cfg.quantize == "fp16":
        return quantize.to_fp16(fp32, out)
    bits = quantize.QUANT_BITS[cfg.quantize]
    block_size = cfg.block_size or quantize.DEFAULT_BLOCK_SIZE[bits]
    return quantize.quantize_weights(fp32, out, bits=bits, block_size=block_size)
