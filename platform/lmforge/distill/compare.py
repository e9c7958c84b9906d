"""Teacher and student side by side on the held-out rows: size, perplexity, how often the student's most
likely next token is the teacher's (top-1 agreement), over the real (masked-in) tokens, and how fast each
decodes (PyTorch, fp32, batch 1, greedy, on this host: the int8 ONNX figures come from ``lmforge bench``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

DECODE_TOKENS = 32  # generated per speed measurement, after a warm-up generation


@torch.no_grad()
def teacher_and_student(teacher: str, student: str, val_rows: Path, max_rows: int = 64, batch: int = 8) -> dict:
    from transformers import AutoModelForCausalLM

    from lmforge.model import presets
    from lmforge.train.data import load_rows

    rows = load_rows(val_rows)[:max_rows]
    models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
              for name, path in (("teacher", teacher), ("student", student))}
    nll = {name: 0.0 for name in models}
    agree, count = 0, 0
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        ids, targets = part.input_ids, part.loss_mask[:, 1:].bool() if part.loss_mask is not None else None
        targets = targets if targets is not None else torch.ones_like(ids[:, 1:], dtype=torch.bool)
        top1 = {}
        for name, model in models.items():
            logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
            nll[name] -= logp.gather(-1, ids[:, 1:, None])[..., 0][targets].sum().item()
            top1[name] = logp.argmax(-1)[targets]
        agree += int((top1["teacher"] == top1["student"]).sum())
        count += int(targets.sum())
    prompt = rows.input_ids[:1, :16]
    out = {name: {"params": presets.num_params(m), "layers": m.config.num_hidden_layers,
                  "intermediate_size": getattr(m.config, "intermediate_size", None),
                  "perplexity": float(torch.tensor(nll[name] / max(count, 1)).exp()),
                  "decode_tokens_per_s": decode_speed(m, prompt)} for name, m in models.items()}
    out["student"]["top1_agreement"] = agree / max(count, 1)
    out["tokens"] = count
    return out


def decode_speed(model, prompt: torch.Tensor, tokens: int = DECODE_TOKENS) -> float:
    """Greedy tokens per second after the prompt (KV cache on; every token generated, none stopped early)."""
    settings = dict(do_sample=False, use_cache=True, pad_token_id=0)
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **settings)  # warm-up
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, **settings)
    return round(tokens / (time.perf_counter() - start), 1)
