"""The exported computation and its tracing: an HF causal LM as one ONNX graph over a caller-owned KV cache.

One graph serves prefill, chunked prefill and decode. Inputs:

- ``input_ids`` ``[B, S]``: each row's new tokens, left-aligned, right-padded to ``S``;
- ``query_seqlens`` ``[B]`` int32: how many of a row's ``S`` tokens are real (0: the row is idle);
- ``seqlens_k`` ``[B]`` int32: tokens in the row's cache after this call, minus one;
- ``total_sequence_length`` ``[]`` int32: an upper bound of ``seqlens_k + 1`` (the cache's capacity);
- ``logits_index`` ``[B, K]`` int64: which of the ``S`` positions get logits (the last real one to
  decode, every one to score a prompt);
- ``past_key_values.{i}.key/value`` ``[B, kv_heads, C, head_dim]``: the cache, ``C`` positions per row.

Outputs: ``logits`` ``[B, K, vocab]``, ``hidden_states`` ``[B, S, hidden]`` (the final normed hidden
state at every new position: what embeddings pool; generation does not ask for it, so it costs nothing
there) and ``present.{i}.key/value``, the same shape as the past; bound to
the past's own buffers (:mod:`lmforge.generate.onnx_model`), the cache is updated in place. A row's new
tokens sit at positions ``seqlens_k + 1 - query_seqlens`` onwards. Attention is onnxruntime's
``GroupQueryAttention`` (:mod:`lmforge.export.slot_attention`).

An export with LoRA targets also takes ``lora_mask`` and each target's ``lora.<module>.A/B``
(:mod:`lmforge.export.lora_graph`): adapters applied per row, the base weights unchanged.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lmforge.export import lora_graph
from lmforge.export.lora_graph import LoraInputs
from lmforge.export.slot_attention import SlotInputs, slot_attention

INPUTS = ["input_ids", "query_seqlens", "seqlens_k", "total_sequence_length", "logits_index"]


class SlotModel(torch.nn.Module):
    """The exported computation: (ids, query_seqlens, seqlens_k, total, logits_index, *past) -> (logits, *present)."""

    def __init__(self, model, io: SlotInputs, modules: list[torch.nn.Module], lora: LoraInputs | None = None,
                 lora_targets: tuple[str, ...] = ()):
        super().__init__()
        self.model, self.io, self.modules_ = model, io, modules
        self.lora, self.lora_targets = lora, list(lora_targets)
        # A new Module starts in training mode, and torch.onnx.export restores the wrapper's mode after
        # tracing, recursively: that switched GPT-2's dropout on for every later PyTorch comparison.
        self.train(model.training)

    def forward(self, input_ids, query_seqlens, seqlens_k, total_sequence_length, logits_index, *rest):
        self.io.seqlens_k, self.io.total_sequence_length, self.io.query_seqlens = (
            seqlens_k, total_sequence_length, query_seqlens)
        n_past = 2 * len(self.modules_)
        self.io.past = list(rest[:n_past])
        if self.lora_targets:  # after the past: the mask, then each target's A and B
            lora_graph.bind(self.lora, self.lora_targets, rest[n_past:])
        start = (seqlens_k + 1 - query_seqlens).to(torch.int64)  # each row's first new position
        positions = start[:, None] + torch.arange(input_ids.shape[1])[None, :]
        # padding past a row's end must still index the position table (GPT-2's; Llama's rotary is in the op)
        positions = positions.clamp(0, self.model.config.max_position_embeddings - 1)
        base = getattr(self.model, self.model.base_model_prefix)
        states = base(input_ids=input_ids, position_ids=positions, use_cache=False).last_hidden_state
        hidden = torch.gather(states, 1, logits_index[:, :, None].expand(-1, -1, states.shape[-1]))
        logits = self.model.lm_head(hidden)
        return (logits, states, *(t for m in self.modules_ for t in m.slot_present))


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


def kv_shape(config) -> tuple[int, int]:
    """(kv heads, head dim) of one layer's cache."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return heads, head_dim


def export_onnx(model, path: Path, opset: int, lora_targets: list[str] = ()) -> None:
    """Trace :class:`SlotModel` once; batch, chunk, logits and cache-capacity axes are dynamic; with
    ``lora_targets`` (module paths) LoRA inputs too, their rank axis dynamic."""
    n_layers = model.config.num_hidden_layers
    past_names, present_names = kv_names(n_layers)
    b, s, capacity = 2, 3, 8
    heads, head_dim = kv_shape(model.config)
    example = (torch.randint(3, model.config.vocab_size, (b, s)), torch.tensor([3, 1], dtype=torch.int32),
               torch.tensor([4, 5], dtype=torch.int32), torch.tensor(capacity, dtype=torch.int32),
               torch.tensor([[2], [0]]), *(torch.zeros(b, heads, capacity, head_dim) for _ in past_names),
               *(lora_graph.example_inputs(model, lora_targets, b) if lora_targets else ()))
    lora_names, lora_axes = lora_graph.names_and_axes(lora_targets) if lora_targets else ([], {})
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "query_seqlens": {0: "batch"}, "seqlens_k": {0: "batch"},
            "logits_index": {0: "batch", 1: "logits"}, "logits": {0: "batch", 1: "logits"},
            "hidden_states": {0: "batch", 1: "sequence"}}
    axes |= {n: {0: "batch", 2: "capacity"} for n in [*past_names, *present_names]} | lora_axes
    io, lora = SlotInputs(*example[1:4], past=[]), LoraInputs()
    with (torch.no_grad(), slot_attention(model, io) as modules, lora_graph.lora_modules(model, lora_targets, lora),
          warnings.catch_warnings()):
        # Tracing warns about every Python-side shape decision; the parity checks are what tell.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(SlotModel(model, io, modules, lora, lora_targets), example, str(path),
                          input_names=[*INPUTS, *past_names, *lora_names],
                          output_names=["logits", "hidden_states", *present_names],
                          dynamic_axes=axes, opset_version=opset, custom_opsets={"com.microsoft": 1}, dynamo=False)
