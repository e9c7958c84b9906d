"""Parallelism and precision for a training worker: DDP or FSDP2 wrapping, autocast, full state dicts.

Model code runs on one device; this module is the only place that knows about process groups. Under
FSDP2 each decoder layer is its own shard group (gathered just in time) and the rest is the root's;
on GPU the parameters compute in bf16 and gradients reduce in fp32.
"""

from __future__ import annotations

import torch


def wrap(model, device: torch.device, strategy: str, distributed: bool):
    """Move ``model`` to ``device`` and wrap it for the strategy (nothing to wrap in a bare run)."""
    if not distributed:
        return model.to(device)
    if strategy == "fsdp":
        return fully_shard(model.to(device), device)
    import ray.train.torch

    return ray.train.torch.prepare_model(model)  # moves to device, wraps in DDP when world > 1


def unwrap(model):
    """The model inside a DDP wrapper (FSDP2 shards in place and has none)."""
    return getattr(model, "module", model)


def fully_shard(model, device: torch.device):
    """FSDP2 over the decoder layers, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(model, optimizer, sharded: bool) -> tuple[dict | None, dict | None]:
    """Under FSDP, the whole model and optimizer state gathered to CPU (a collective: every rank calls
    it); otherwise (None, None), and rank 0 saves its own replica."""
    if not sharded:
        return None, None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer(model, optimizer, state: dict, sharded: bool) -> None:
    """Restore a full optimizer state (as :func:`full_state` saved it) into a plain or sharded optimizer."""
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def autocast(device: torch.device):
    """bf16 autocast on GPU; fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def peak_flops(device: torch.device, configured_tflops: float | None) -> float | None:
    """Peak FLOP/s per device for MFU: the configured figure, else the GPU's datasheet figure."""
    from lmforge.model import presets

    if configured_tflops:
        return configured_tflops * 1e12
    if device.type == "cuda":
        return presets.peak_flops(torch.cuda.get_device_name(device))
    return None
