"""An export-time attention forward for Llama-family models that traces to a lean ONNX graph.

Why: transformers' attention, traced, computes every reshape target from the runtime shape (Shape ->
Gather -> Unsqueeze -> Concat -> Reshape), and ``repeat_kv`` copies each K/V head to its query group
through another ~15 such nodes: most of a layer's nodes, and at batch 1 on a CPU onnxruntime spends
about as long dispatching them as on the matrix products (docs/benchmarks.md, "Export").

This forward computes the same function with static reshapes (ONNX ``Reshape`` keeps a dimension
where the target says 0, so no shape arithmetic is needed), the rotary halves sliced at constant
offsets (or onnxruntime's fused ``RotaryEmbedding`` op, fed cos/sin tables taken from the model's
own rotary module), and grouped-query attention as a batched matmul over (kv head, group x position)
rows, so K and V are never copied per query head. Used only while exporting, and only for attention
classes whose forward it reproduces exactly; the export's parity checks compare the graph with the stock PyTorch model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_MAX_TABLE_POSITIONS = 32_768  # beyond that the cos/sin tables (stored in the graph) cost more than they save


class _StaticReshape(torch.autograd.Function):
    """``x.reshape(shape)`` where 0 keeps that dimension of x, exported as one ``Reshape`` node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])

    @staticmethod
    def symbolic(g, x, shape):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))


def _reshape(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return _StaticReshape.apply(x, shape)


class _Rotary(torch.autograd.Function):
    """Rotary embedding (rotate-half layout) of x (b, heads, t, d) at ``position_ids`` from cos/sin tables
    (max_positions, d/2); exported as onnxruntime's fused ``com.microsoft::RotaryEmbedding``."""

    @staticmethod
    def forward(ctx, x, position_ids, cos_cache, sin_cache):
        cos, sin = cos_cache[position_ids].unsqueeze(1), sin_cache[position_ids].unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    @staticmethod
    def symbolic(g, x, position_ids, cos_cache, sin_cache):
        out = g.op("com.microsoft::RotaryEmbedding", x, position_ids, cos_cache, sin_cache, interleaved_i=0)
        out.setType(x.type())  # same shape and dtype as x: the exporter cannot infer it for a custom op
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def lean_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    """LlamaAttention.forward (transformers 5.x), same maths, lean trace. Returns (output, None)."""
    d, groups = self.head_dim, self.num_key_value_groups
    heads = self.config.num_attention_heads
    kv_heads = heads // groups
    q = _reshape(self.q_proj(hidden_states), 0, -1, heads, d).transpose(1, 2)  # (b, heads, t, d)
    k = _reshape(self.k_proj(hidden_states), 0, -1, kv_heads, d).transpose(1, 2)  # (b, kv_heads, t, d)
    v = _reshape(self.v_proj(hidden_states), 0, -1, kv_heads, d).transpose(1, 2)
    tables, position_ids = getattr(self, "lean_rope", None), kwargs.get("position_ids")
    if tables is not None and position_ids is not None:
        q, k = _Rotary.apply(q, position_ids, *tables), _Rotary.apply(k, position_ids, *tables)
    else:
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # (b, 1, t, d)
        q, k = _rotate(q, cos, sin, d // 2), _rotate(k, cos, sin, d // 2)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
    # Query head h uses K/V head h // groups, so (b, heads, t, d) viewed as (b, kv_heads, groups * t, d)
    # puts every query row beside its K/V head: one matmul per K/V head, no copies of K/V.
    q = _reshape(q, 0, kv_heads, -1, d)
    scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # (b, kv_heads, groups * t, total)
    if attention_mask is None and hidden_states.shape[1] > 1:
        raise ValueError("lean attention needs the eager 4D causal mask; got none")
    if attention_mask is not None:  # (b, 1, t, total) additive -> the same for every group
        scores = scores + (attention_mask.repeat(1, 1, groups, 1) if groups > 1 else attention_mask)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = _reshape(torch.matmul(probs, v), 0, heads, -1, d).transpose(1, 2)  # (b, t, heads, d)
    return self.o_proj(_reshape(out, 0, -1, heads * d)), None


def _supported_classes() -> list[type]:
    """Attention classes whose forward :func:`lean_forward` reproduces (Llama's: SmolLM2, our presets).
    Mistral and Qwen2 look alike but may slide their attention window, which it does not do."""
    from transformers.models.llama.modeling_llama import LlamaAttention

    return [LlamaAttention]


@contextlib.contextmanager
def lean_attention(model) -> Iterator[bool]:
    """Swap in :func:`lean_forward` on every supported attention module of ``model`` while tracing.

    Yields whether it applied (False: the model keeps its own attention, e.g. GPT-2). Only the eager
    attention's additive float mask is handled, so the model must use ``attn_implementation="eager"``.
    """
    classes = tuple(_supported_classes())
    modules = [m for m in model.modules() if type(m) in classes and not hasattr(m, "q_norm")]
    if not modules or getattr(model.config, "_attn_implementation", "eager") != "eager":
        yield False
        return
    tables = _rope_tables(model)
    for m in modules:
        m.forward = lean_forward.__get__(m)
        m.lean_rope = tables
    try:
        yield True
    finally:
        for m in modules:
            del m.forward, m.lean_rope  # back to the class's forward


def _rope_tables(model) -> tuple[torch.Tensor, torch.Tensor] | None:
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
