"""LoRA adapters as graph inputs: the base exported once, any number of adapters applied per row at run time.

Each adapted module (a linear projection, named by its path in the HF model) becomes
``y = base(x) + ((x @ A) * mask) @ B`` with ``A`` ``[in, R]``, ``B`` ``[R, out]`` and ``mask``
``[batch, R]`` inputs (:mod:`lmforge.generate.adapters` says how they are filled and why). The base's
own weights stay initializers, so int8/int4 quantization and the merged-projection rewrite apply to them
as to any export; the adapter path stays fp32 (it is small: R columns).

Why inputs rather than one graph per adapter or merged weights: one copy of the base serves every
fine-tune, adapters load and unload without a new session, and rows of different adapters share a batch.
The price is two small matmuls per adapted module per call; an export without adapters has none of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.generate.adapters import MASK, input_names

_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraInputs:
    """What the adapted modules read during the trace, set by the exported wrapper per call."""

    mask: torch.Tensor | None = None  # [B, 1, R]
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # target -> (A, B)


def adapter_targets(adapter_dir: str | Path) -> list[str]:
    """The module paths a peft LoRA dir adapts (from its weights, whatever its config's pattern said)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"adapter {adapter_dir}: no adapter_model.safetensors (a peft LoRA dir, e.g. "
                                "`lmforge finetune`'s adapter/)")
    with safe_open(str(path), "np") as f:
        return sorted({k.split(".lora_A.")[0].removeprefix(_PEFT_PREFIX) for k in f.keys() if ".lora_A." in k})


def resolve_targets(model, kinds: list[str], adapter_dirs: list[str]) -> list[str]:
    """The module paths that get LoRA inputs: every module whose name ends in one of ``kinds`` (e.g.
    ``q_proj``), and every module the adapters adapt; each must be a linear projection of ``model``."""
    modules = dict(model.named_modules())
    targets = {name for name in modules if name.rsplit(".", 1)[-1] in set(kinds)}
    for d in adapter_dirs:
        targets.update(adapter_targets(d))
    for name in targets:
        weight = getattr(modules.get(name), "weight", None)
        if weight is None or weight.dim() != 2:
            raise ValueError(f"lora: {name} is not a linear projection of {type(model).__name__}")
    if kinds and not any(name.rsplit(".", 1)[-1] in set(kinds) for name in modules):
        raise ValueError(f"lora_targets: no module of {type(model).__name__} is named any of {kinds}")
    return sorted(targets, key=_layer_order)


def _layer_order(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def shapes(model, targets: list[str]) -> dict[str, tuple[int, int]]:
    """{target: (in, out)} (GPT-2's Conv1D stores its weight [in, out], a Linear [out, in])."""
    modules = dict(model.named_modules())
    out = {}
    for t in targets:
        m = modules[t]
        w = m.weight
        out[t] = tuple(w.shape) if type(m).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
    return out


def example_inputs(model, targets: list[str], batch: int, rank: int = 2) -> list[torch.Tensor]:
    """Trace-time values: the mask then each target's A and B (random: nothing may fold them away)."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.ones(batch, rank)]
    for n_in, n_out in shapes(model, targets).values():
        tensors += [torch.randn(n_in, rank, generator=g) * 0.01, torch.randn(rank, n_out, generator=g) * 0.01]
    return tensors


def names_and_axes(targets: list[str]) -> tuple[list[str], dict]:
    names, axes = [MASK], {MASK: {0: "batch", 1: "lora_rank"}}
    for t in targets:
        a, b = input_names(t)
        names += [a, b]
        axes |= {a: {1: "lora_rank"}, b: {0: "lora_rank"}}
    return names, axes


@contextlib.contextmanager
def lora_modules(model, targets: list[str], io: LoraInputs) -> Iterator[None]:
    """While tracing, each target module adds its LoRA term read from ``io``."""
    modules = dict(model.named_modules())
    for t in targets:
        m = modules[t]
        base = m.forward

        def forward(x, _base=base, _target=t):
            a, b = io.weights[_target]
            return _base(x) + torch.matmul(torch.matmul(x, a) * io.mask, b)

        m.forward = forward
    try:
        yield
    finally:
        for t in targets:
            modules[t].__dict__.pop("forward", None)


def bind(io: LoraInputs, targets: list[str], tensors: tuple[torch.Tensor, ...]) -> None:
    """The wrapper's LoRA arguments (mask, A, B, A, B, ...) into ``io``; the mask made [B, 1, R] once."""
    io.mask = tensors[0][:, None, :]
    io.weights = {t: (tensors[1 + 2 * i], tensors[2 + 2 * i]) for i, t in enumerate(targets)}


def copy_adapter(src: str | Path, dst: Path) -> None:
    """The adapter's config and weights beside the export (``adapters/<name>/``), which serving loads."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(Path(src) / name, dst / name)
    json.loads((dst / "adapter_config.json").read_text())  # a broken config fails the export, not the server
