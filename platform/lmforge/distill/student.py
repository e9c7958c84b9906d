"""The student's starting point, made from the teacher. Pure PyTorch + transformers, no Ray.

- fewer layers: every k-th teacher block kept (DistilBERT's initialisation), embeddings, final norm and
  head copied;
- a narrower MLP: the teacher's MLP neurons that add most to the residual stream on the training rows
  kept (Minitron's activation-based width pruning, Muralidharan et al. 2024), every other weight copied;
- a fresh preset with the teacher's vocabulary;

and the check that a given student reads the teacher's tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

CALIBRATION_ROWS = 32  # training rows whose activations rank the MLP neurons


def resized_copy(teacher: str, out: Path, layers: int | None = None, intermediate_size: int | None = None,
                 calibration: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> dict:
    """The teacher with ``layers`` of its blocks and/or ``intermediate_size`` MLP neurons per block (ranked
    on the ``calibration`` ids where ``mask`` is 1), as an HF dir with the teacher's tokenizer; returns what
    was kept (``layers``: teacher layer indices)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    kept: dict = {}
    if layers is not None:
        kept["layers"] = keep_layers(model, layers)
    if intermediate_size is not None:
        if calibration is None:
            raise ValueError("student.intermediate_size: needs calibration rows to rank the MLP neurons")
        kept["intermediate_size"] = narrow_mlp(model, intermediate_size, calibration, mask)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
    return kept


def _blocks(model) -> tuple[object, str]:
    base = getattr(model, model.base_model_prefix)
    return base, "layers" if hasattr(base, "layers") else "h"


def keep_layers(model, layers: int) -> list[int]:
    """Keep every k-th block from the first (in place); returns the kept teacher layers."""
    base, name = _blocks(model)
    blocks = getattr(base, name)
    total = len(blocks)
    if layers >= total:
        raise ValueError(f"student.layers: {layers} is not fewer than the teacher's {total} layers")
    keep = [i * total // layers for i in range(layers)]
    setattr(base, name, torch.nn.ModuleList(blocks[i] for i in keep))
    for j, block in enumerate(getattr(base, name)):
        attention = getattr(block, "self_attn", None) or getattr(block, "attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = j  # the cache index of the layer in its new place
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return keep


@torch.no_grad()
def neuron_importance(model, calibration: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per block, per MLP neuron: the mean over the calibration tokens of ``|h_j| * ||W_down[:, j]||``,
    the size of what the neuron adds to the residual stream (``h`` is ``down_proj``'s input)."""
    base, name = _blocks(model)
    sums, hooks = [], []
    real = (mask if mask is not None else torch.ones_like(calibration)).bool()
    for block in getattr(base, name):
        mlp = getattr(block, "mlp", None)
        if mlp is None or not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"student.intermediate_size: {type(model).__name__} has no gated MLP "
                             "(gate_proj/up_proj/down_proj) to narrow")
        total = torch.zeros(mlp.down_proj.in_features)
        sums.append(total)
        hooks.append(mlp.down_proj.register_forward_pre_hook(
            lambda _m, args, total=total: total.add_(args[0].abs()[real].sum(0))))
    try:
        model.eval()(input_ids=calibration)
    finally:
        for hook in hooks:
            hook.remove()
    count = max(int(real.sum()), 1)
    return [total / count * block.mlp.down_proj.weight.norm(dim=0) for total, block in
            zip(sums, getattr(base, name))]


def narrow_mlp(model, intermediate_size: int, calibration: torch.Tensor, mask: torch.Tensor | None = None
               ) -> int:
    """Keep each block's ``intermediate_size`` most important MLP neurons (in place, in their order)."""
    width = model.config.intermediate_size
    if intermediate_size >= width:
        raise ValueError(f"student.intermediate_size: {intermediate_size} is not narrower than the teacher's "
                         f"{width}")
    base, name = _blocks(model)
    for scores, block in zip(neuron_importance(model, calibration, mask), getattr(base, name)):
        keep = scores.topk(intermediate_size).indices.sort().values
        mlp = block.mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            _take(proj, keep, rows=True)
        _take(mlp.down_proj, keep, rows=False)
    model.config.intermediate_size = intermediate_size
    return intermediate_size


def _take(linear: torch.nn.Linear, keep: torch.Tensor, rows: bool) -> None:
    """Keep output features (``rows``) or input features of a linear layer."""
    weight = linear.weight.data[keep] if rows else linear.weight.data[:, keep]
    linear.weight = torch.nn.Parameter(weight.contiguous())
    if rows:
        linear.out_features = len(keep)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data[keep].contiguous())
    else:
        linear.in_features = len(keep)


def preset_student(teacher: str, preset: str, out: Path) -> None:
    """A fresh preset sized by the teacher's vocabulary, context and special tokens (its tokenizer kept)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from lmforge.model import presets

    config = AutoConfig.from_pretrained(teacher)
    tok = AutoTokenizer.from_pretrained(teacher)
    specials = {"pad": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                "bos": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id, "eos": tok.eos_token_id}
    context = getattr(config, "max_position_embeddings", None) or config.n_positions
    LlamaForCausalLM(presets.build_config(preset, config.vocab_size, context, specials)).save_pretrained(out)
    tok.save_pretrained(out)
