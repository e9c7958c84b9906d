"""The ``export`` stage's entry (the contract: :mod:`lmforge.stages`); the work is :mod:`.onnx_export`.

Run: ``lmforge export model=runs/quickstart/train/model output=runs/onnx quantize=int8 ppl_text=held_out.jsonl``.
"""

from __future__ import annotations

from lmforge.export.config import ExportConfig as Config
from lmforge.report import Section, absent, fmt, read_json, rerun
from lmforge.stages import Input

SUMMARY = "HF model dir -> ONNX with KV cache (fp32, int8, int4, fp16), parity-checked against PyTorch"
# the newest model a recipe makes
INPUTS = (Input("model", (("distill", "model"), ("finetune", "model"), ("pretrain", "model"), ("import", ""))),)


def run(cfg: Config):
    from lmforge.export import onnx_export

    return onnx_export.run(cfg)


def read_paths(cfg: Config) -> dict[str, str]:
    """Adapters exported beside the model are inputs too: a re-trained one makes the export stale."""
    from lmforge.generate.adapters import adapter_name

    return {f"adapters.{name}": path for name, path in map(adapter_name, cfg.adapters)}


def report(cfg: Config | None, result: dict) -> list[Section]:
    export = read_json(cfg.output, "export.json") if cfg else None
    if export is None:
        return [absent("Export", "export")]
    rows = [["precision", export["precision"]],
            ["fp32 graph: max |logits - PyTorch|", fmt(export["parity"]["max_abs_diff"])],
            ["greedy tokens equal to transformers'", export["greedy_matches_transformers"]]]
    if "quantized_parity" in export:
        agree, q = export["quantized_agreement"], export["precision"]
        rows += [[f"{q} graph: max |logits - PyTorch|", fmt(export["quantized_parity"]["max_abs_diff"])],
                 [f"{q} graph: same next token (teacher-forced)", fmt(agree["top1_agreement"])],
                 [f"{q} graph: greedy tokens equal before the first difference",
                  f"{agree['greedy_prefix']} of {agree['greedy_tokens']}"]]
    rows += [[f"perplexity {k}", fmt(v)] for k, v in (export.get("perplexity") or {}).items()]
    rows += [[f"size of {name}", f"{size / 1e6:.2f} MB"] for name, size in export["size_bytes"].items()]
    return [Section("Export", rerun("export", cfg.output), ["ONNX with KV cache, checked against PyTorch."],
                    [(["", "value"], rows)])]
