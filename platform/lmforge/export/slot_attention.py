"""Attention exported as onnxruntime's ``GroupQueryAttention`` over a KV cache the caller owns.

Why: the graph used to concatenate past and new keys/values and return the whole cache every call, so
each decode step copied the cache twice and every row was padded to the longest. ``GroupQueryAttention``
(com.microsoft) reads and writes the cache in place when the caller binds the same buffer as its past
input and its present output (onnxruntime-genai's layout): a buffer of ``C`` positions per row, each row
attending over its own length (``seqlens_k``), a right-padded chunk of new tokens per row
(``query_seqlens``, 0 for an idle row), rotary applied inside from cos/sin tables. Nothing is copied per
step and no row waits on another's length.

Used only while exporting: each supported attention module's forward is swapped for one that emits the
op (its PyTorch forward only gives the shapes for the trace); the export's parity checks compare the
resulting graph with the stock PyTorch model. Llama-family attention (SmolLM2, our presets) and GPT-2's
are supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_MAX_TABLE_POSITIONS = 65_536  # the cos/sin tables are stored in the graph: 2 x positions x head_dim/2 floats


@dataclass
class SlotInputs:
    """What every attention layer reads besides its own past: set by the exported wrapper per call."""

    seqlens_k: torch.Tensor  # [B] int32: tokens in each row's cache after this call, minus one
    total_sequence_length: torch.Tensor  # [] int32: an upper bound of seqlens_k + 1 (the buffer's capacity)
    query_seqlens: torch.Tensor  # [B] int32: valid (left-aligned) tokens of each row in this call
    past: list[torch.Tensor]  # [B, kv_heads, C, head_dim] per layer: key, value, key, value, ...


class _GroupQueryAttention(torch.autograd.Function):
    """(query, key, value, past_key, past_value, seqlens_k, total, cos, sin, query_seqlens) -> (out, k, v).

    ``key``/``value`` None: ``query`` is packed q|k|v. ``cos``/``sin`` None: no rotary."""

    @staticmethod
    def forward(ctx, query, key, value, past_key, past_value, seqlens_k, total, cos, sin, query_seqlens,
                num_heads, kv_heads, scale):
        b, s = query.shape[:2]
        head_dim = past_key.shape[-1]
        # shapes for the trace only: the graph's op does the maths, compared with PyTorch by the parity checks
        return query.new_zeros(b, s, num_heads * head_dim), past_key.clone(), past_value.clone()

    @staticmethod
    def symbolic(g, query, key, value, past_key, past_value, seqlens_k, total, cos, sin, query_seqlens,
                 num_heads, kv_heads, scale):
        from torch.onnx._internal.torchscript_exporter.symbolic_helper import _optional_input_placeholder_tensor

        def opt(x):
            return _optional_input_placeholder_tensor(g) if x is None else x

        absent = [opt(None) for _ in range(7)]  # position_ids .. k_norm_weight (inputs 9-15)
        out, present_key, present_value = g.op(
            "com.microsoft::GroupQueryAttention", query, opt(key), opt(value), past_key, past_value, seqlens_k,
            total, opt(cos), opt(sin), *absent, query_seqlens, num_heads_i=num_heads, kv_num_heads_i=kv_heads,
            scale_f=scale, do_rotary_i=int(cos is not None), rotary_interleaved_i=0, outputs=3)
        out.setType(query.type().with_sizes([None, None, None]))
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


def _attend(module, query, key, value, heads: int, kv_heads: int, scale: float, rotary: bool):
    io: SlotInputs = module.slot_inputs
    cos, sin = module.slot_rope if rotary else (None, None)
    past_key, past_value = io.past[2 * module.slot_layer], io.past[2 * module.slot_layer + 1]
    out, present_key, present_value = _GroupQueryAttention.apply(
        query, key, value, past_key, past_value, io.seqlens_k, io.total_sequence_length, cos, sin,
        io.query_seqlens, heads, kv_heads, float(scale))
    module.slot_present = (present_key, present_value)
    return out


def llama_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    """LlamaAttention.forward with the cache in place; position comes from the cache lengths."""
    heads = self.config.num_attention_heads
    kv_heads = heads // self.num_key_value_groups
    out = _attend(self, self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states),
                  heads, kv_heads, self.scaling, rotary=True)
    return self.o_proj(out), None


def gpt2_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """GPT2Attention.forward (self-attention) with the cache in place: packed q|k|v, no rotary."""
    out = _attend(self, self.c_attn(hidden_states), None, None, self.num_heads, self.num_heads, self.scaling,
                  rotary=False)
    return self.resid_dropout(self.c_proj(out)), None


def _forwards() -> dict[type, object]:
    """Attention classes whose forward is reproduced here. Mistral and Qwen2 look like Llama but may slide
    their attention window; Qwen3 normalises q and k per head: neither is done here."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.models.llama.modeling_llama import LlamaAttention

    return {LlamaAttention: llama_forward, GPT2Attention: gpt2_forward}


def attention_modules(model) -> list[torch.nn.Module]:
    """The model's attention modules in layer order; raises when one is not supported."""
    forwards = _forwards()
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and "Attention" in type(m).__name__]
    if not layers:
        raise ValueError(f"export: no attention layers found in {type(model).__name__}")
    bad = sorted({type(m).__name__ for m in layers if type(m) not in forwards or hasattr(m, "q_norm")
                  or getattr(m, "is_cross_attention", False)})
    if bad:
        raise ValueError(f"export: attention {bad} is not supported (supported: Llama-family and GPT-2 attention)")
    return sorted(layers, key=lambda m: m.layer_idx)


@contextlib.contextmanager
def slot_attention(model, io: SlotInputs) -> Iterator[list[torch.nn.Module]]:
    """Swap in the in-place forward on every attention module of ``model`` while tracing; ``io`` is what
    they read. Yields the modules (each holds ``slot_present`` after a forward)."""
    modules = attention_modules(model)
    rope = rope_tables(model) if type(modules[0]).__name__ != "GPT2Attention" else None
    if type(modules[0]).__name__ != "GPT2Attention" and rope is None:
        raise ValueError("export: the model's rotary embedding is not the rotate-half layout with at most "
                         f"{_MAX_TABLE_POSITIONS} positions that onnxruntime's attention implements")
    forwards = _forwards()
    for m in modules:
        m.forward = forwards[type(m)].__get__(m)
        m.slot_inputs, m.slot_rope, m.slot_layer = io, rope, m.layer_idx
    try:
        yield modules
    finally:
        for m in modules:
            for name in ("forward", "slot_inputs", "slot_rope", "slot_layer", "slot_present"):
                m.__dict__.pop(name, None)


def rope_tables(model) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos/sin for every position (max_positions, head_dim / 2), from the model's own rotary module, so
    scaled variants (llama3, yarn, ...) and their attention scaling come out exactly as it computes them."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        return None
    n = model.config.max_position_embeddings
    if n > _MAX_TABLE_POSITIONS:
        return None
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(n)[None])
    half = cos.shape[-1] // 2
    if not (torch.equal(cos[0, :, :half], cos[0, :, half:]) and torch.equal(sin[0, :, :half], sin[0, :, half:])):
        return None  # not the rotate-half layout the fused op implements
    return cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous()
