"""Llama-style model presets as HF ``LlamaConfig`` (tiny for tests -> 1b), plus size and FLOPs maths.

Presets fix the architecture; the vocabulary and context length come from the prepared data.
"""

from __future__ import annotations

# hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256),
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=768),
    "20m": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                intermediate_size=1024),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
}


def build_config(preset: str, vocab_size: int, max_position_embeddings: int,
                 special_tokens: dict[str, int] | None = None, **overrides):
    """The HF ``LlamaConfig`` of ``preset`` sized to a tokenizer and context length."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    special = special_tokens or {}
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=preset in ("tiny", "mini", "small", "20m", "125m"),
        pad_token_id=special.get("pad"),
        bos_token_id=special.get("bos"),
        eos_token_id=special.get("eos"),
        **{**PRESETS[preset], **overrides},
    )


def num_params(model) -> int:
    """Parameters of a model, tied weights counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all but the input embedding lookup (which, when tied,
    is also the lm_head matmul and so counts)."""
    n = num_params(model)
    if not model.config.tie_word_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n


# Dense bf16 peak FLOP/s per device, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def flops_per_token(cfg, seq_len: int, n_matmul_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 12·L·H·T (PaLM, appendix B)."""
    return 6.0 * n_matmul_params + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
