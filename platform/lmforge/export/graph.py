"""The exported computation and its tracing: an HF causal LM as one ONNX graph with a KV cache.

One graph serves prefill and decode: inputs ``input_ids``, ``attention_mask`` (past + new),
``position_ids`` and ``past_key_values.{i}.key/value`` (sequence length 0 at prefill); outputs
``logits`` and ``present.{i}.key/value``. Batch and every sequence axis are dynamic. Any causal LM whose
forward takes ``cache=`` exports (Llama presets, SmolLM2, GPT-2); Llama-family attention is traced
through :mod:`lmforge.export.lean_attention` (the same maths in fewer nodes).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lmforge.export.lean_attention import lean_attention


class KVModel(torch.nn.Module):
    """The exported computation: (ids, mask, positions, *past) -> (logits, *present)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # A new Module starts in training mode, and torch.onnx.export restores the wrapper's mode after
        # tracing, recursively: that switched GPT-2's dropout on for every later PyTorch comparison.
        self.train(model.training)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def kv_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    return past, present


def load_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"model: {model_dir} is not an HF model dir (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def past_shape(model, batch: int, past_len: int) -> tuple[int, ...]:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (batch, heads, past_len, head_dim)


def export_onnx(model, path: Path, opset: int) -> None:
    """Trace ``KVModel`` once with a non-empty past; every batch/sequence axis is dynamic."""
    n_layers = model.config.num_hidden_layers
    past_names, present_names = kv_names(n_layers)
    b, t, p = 2, 3, 4
    ids = torch.randint(3, model.config.vocab_size, (b, t))
    mask = torch.ones((b, p + t), dtype=torch.long)
    pos = torch.arange(p, p + t).expand(b, t).contiguous()
    past = [torch.randn(past_shape(model, b, p)) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes |= {n: {0: "batch", 2: "past_sequence"} for n in past_names}
    axes |= {n: {0: "batch", 2: "total_sequence"} for n in present_names}
    with torch.no_grad(), lean_attention(model), warnings.catch_warnings():
        # Tracing warns about every Python-side shape decision; the parity checks are what tell.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(KVModel(model), (ids, mask, pos, *past), str(path),
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes, opset_version=opset,
                          custom_opsets={"com.microsoft": 1}, dynamo=False)
