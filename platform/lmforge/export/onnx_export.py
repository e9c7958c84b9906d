"""``lmforge export``: an HF causal LM -> ``model.onnx`` (full-sequence logits), checked for parity.

Run: ``lmforge export model=runs/model/model output=runs/onnx``.

The graph takes ``input_ids``, ``attention_mask`` and ``position_ids`` (explicit, so left-padded batches
get correct positions) with dynamic batch and sequence axes, and returns ``logits``. After export the
same inputs go through PyTorch and onnxruntime; the max absolute logits difference is recorded in
``export.json`` and the stage fails when it exceeds ``parity_atol``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from lmforge import stage
from lmforge.export.config import ExportConfig
from lmforge.generate.onnx_generator import position_ids_for

log = logging.getLogger(__name__)

INPUT_NAMES = ["input_ids", "attention_mask", "position_ids"]
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")


class LogitsModel(torch.nn.Module):
    """The exported computation: logits of every position, no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False)
        return out.logits


def run(cfg: ExportConfig) -> Path:
    """Export, verify parity, write ``export.json``; returns the output dir."""
    stage.require_local(cfg.output, "output")
    if not cfg.force and stage.is_finished(cfg, cfg.output):
        log.info("export: %s already holds this run; skipping (force=true to redo)", cfg.output)
        return Path(cfg.output)
    model = load_model(cfg.model)
    partial = stage.begin(cfg, cfg.output)
    onnx_path = partial / "model.onnx"
    export_onnx(model, onnx_path, cfg.opset)
    for name in COPY_FILES:
        if (Path(cfg.model) / name).exists():
            shutil.copy(Path(cfg.model) / name, partial / name)
    diff = parity(model, onnx_path, cfg.parity_batch, cfg.parity_seq_len)
    report = {"precision": "fp32", "opset": cfg.opset, "kv_cache": False,
              "parity": {"max_abs_diff": diff, "atol": cfg.parity_atol, "passed": diff <= cfg.parity_atol},
              "size_bytes": {p.name: p.stat().st_size for p in partial.iterdir() if p.is_file()}}
    (partial / "export.json").write_text(json.dumps(report, indent=2))
    log.info("export: logits max abs diff %.2e (atol %.0e)", diff, cfg.parity_atol)
    if diff > cfg.parity_atol:
        raise RuntimeError(f"export: ONNX logits differ from PyTorch by {diff:.3e} > {cfg.parity_atol:.0e}"
                           f" (see {partial / 'export.json'})")
    return stage.publish(partial, cfg.output)


def load_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"model: {model_dir} is not an HF model dir (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def export_onnx(model, path: Path, opset: int) -> None:
    """Trace ``LogitsModel`` with the TorchScript exporter (dynamic batch and sequence axes)."""
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones_like(ids)
    pos = torch.arange(8).expand(2, 8).contiguous()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic["logits"] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(LogitsModel(model), (ids, mask, pos), str(path), input_names=INPUT_NAMES,
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=opset,
                          dynamo=False)


def parity(model, onnx_path: Path, batch: int, seq_len: int, seed: int = 0) -> float:
    """Max abs logits difference, PyTorch vs onnxruntime, on random ids with one left-padded row."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, model.config.vocab_size, size=(batch, seq_len), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, : seq_len // 4] = 0  # a left-padded row exercises the mask and position ids
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask)}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = LogitsModel(model)(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
    real = mask.astype(bool)  # padded positions' logits are meaningless in both
    return float(np.abs(got[real] - want[real]).max())
