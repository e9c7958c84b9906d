"""Teacher and student side by side on the held-out rows: size, perplexity, and how often the student's
most likely next token is the teacher's (top-1 agreement), over the real (masked-in) tokens."""

from __future__ import annotations

from pathlib import Path

import torch


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
    out = {name: {"params": presets.num_params(m), "layers": m.config.num_hidden_layers,
                  "perplexity": float(torch.tensor(nll[name] / max(count, 1)).exp())} for name, m in models.items()}
    out["student"]["top1_agreement"] = agree / max(count, 1)
    out["tokens"] = count
    return out
