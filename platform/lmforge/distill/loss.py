"""The distillation loss, run in the training worker: ``alpha * T^2 * KL(teacher || student)`` on the
logits softened by temperature ``T``, plus ``(1 - alpha) *`` the data's cross-entropy (Hinton et al. 2015).

The teacher runs in the same workers, no gradients, in bf16 on a GPU: its logits for a micro-batch are
computed when the student needs them. Measured (SmolLM2 teacher, its 15-layer student, 8 x 128 tokens,
one CPU thread): teacher forward 3.3 s, student forward + backward 6.7 s, so the teacher is a third of a
step. Precomputing its logits with Ray Data costs that same forward once per token and then stores, per
token, a distribution (49,152 floats for SmolLM2; its top 64 still 512 bytes, against 8 for the token):
it pays only when the same rows are read many times (several epochs, or a sweep's trials), which a
budget that fits this machine never does, so it is not built. With ``top_k``, the KL covers the
teacher's k most likely tokens at each position, both distributions renormalised over them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge import storage
from lmforge.train.loop import IGNORE_INDEX, labels_for


def kl_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            top_k: int = 0) -> torch.Tensor:
    """Mean over positions of ``T^2 * KL(softmax(t / T) || softmax(s / T))``; ``[N, vocab]`` each."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    if top_k:
        t, index = t.topk(min(top_k, t.shape[-1]), dim=-1)
        s = s.gather(-1, index)
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    return kl * temperature**2 / max(1, s.shape[0])


def make_loss(spec, device: torch.device):
    """The worker's loss factory (``WorkerSpec.loss``): the teacher from ``spec.loss_args``."""
    from transformers import AutoModelForCausalLM

    args = spec.loss_args
    alpha, temperature, top_k = args["alpha"], args["temperature"], args["top_k"]
    teacher = None
    if alpha > 0:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        teacher = AutoModelForCausalLM.from_pretrained(storage.local_dir(args["teacher"]), dtype=dtype).to(device)
        teacher.eval().requires_grad_(False)

    def loss(model, rows, pad_id) -> torch.Tensor:
        labels = labels_for(rows.input_ids, pad_id, rows.loss_mask)
        targets = labels[:, 1:] != IGNORE_INDEX  # the positions whose next token is learned
        out = model(input_ids=rows.input_ids, labels=labels if targets.any() else None)
        if not targets.any():
            return out.logits.sum() * 0.0  # zero, with every weight in the graph
        if teacher is None:
            return out.loss
        with torch.no_grad():
            teacher_logits = teacher(input_ids=rows.input_ids).logits[:, :-1][targets]
        kl = kl_term(out.logits[:, :-1][targets], teacher_logits, temperature, top_k)
        return alpha * kl + (1 - alpha) * out.loss

    return loss
