"""``lmforge bench train``: steady-state training throughput through Ray Train vs a bare process.

Same preset, same global batch, same total threads: the bare loop runs in one process with every
core; Ray Train runs ``workers`` DDP workers (gloo on CPU) sharing the batch. Each measures tokens/s
after ``warmup`` steps, inside the loop; Ray's fixed start-up and teardown (the rest of ``fit()``'s wall
time) are reported apart. With ``gpu=true`` the bare loop measures MFU on one GPU with bf16 autocast
and ``torch.compile``; it imports no Ray, so a GPU box with only PyTorch + transformers can run it:
``python -m lmforge.bench.train_bench gpu=true preset=125m``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time

import torch

from lmforge.bench import write_result
from lmforge.bench.config import TrainBenchConfig


def measure(cfg: TrainBenchConfig, micro_batch: int, world_size: int = 1, wrap=lambda m: m,
            device: torch.device | None = None) -> dict:
    """Time ``steps`` optimizer steps of the plain loop on random tokens; tokens/s over all workers."""
    from transformers import LlamaForCausalLM

    from lmforge.model import presets
    from lmforge.train import loop
    from lmforge.train.config import TrainConfig
    from lmforge.train.data import Rows

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    hf_cfg = presets.build_config(cfg.preset, cfg.vocab_size, cfg.seq_len, {"pad": 0, "bos": 1, "eos": 2})
    model = LlamaForCausalLM(hf_cfg).to(device)
    n_matmul = presets.matmul_params(model)
    if cfg.gpu and cfg.compile:
        model = torch.compile(model)
    model = wrap(model)
    tcfg = TrainConfig(max_steps=cfg.steps, micro_batch_size=micro_batch, lr=1e-3)
    optimizer = loop.make_optimizer(model, tcfg)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    batch = torch.randint(3, cfg.vocab_size, (micro_batch, cfg.seq_len), device=device)
    for step in range(cfg.steps):
        if step == cfg.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loop.train_step(model, optimizer, [Rows(batch)], tcfg, pad_id=0, autocast=autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = (cfg.steps - cfg.warmup) * micro_batch * cfg.seq_len * world_size
    flops = presets.flops_per_token(hf_cfg, cfg.seq_len, n_matmul)
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / (cfg.steps - cfg.warmup),
            "flops_per_token": flops, "params": presets.num_params(model)}


def bare(cfg: TrainBenchConfig) -> dict:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device("cuda" if cfg.gpu else "cpu")
    result = measure(cfg, cfg.global_batch, device=device) | {"threads": threads}
    if cfg.gpu:
        from lmforge.model.presets import peak_flops

        name = torch.cuda.get_device_name()
        peak = peak_flops(name)
        result |= {"device": name, "mfu": result["tokens_per_s"] * result["flops_per_token"] / peak if peak else None}
    return result


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    result_file = config.pop("result_file")
    cfg = TrainBenchConfig(**config)
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.get_world_size()))
    result = measure(cfg, cfg.global_batch // ctx.get_world_size(), ctx.get_world_size(),
                     wrap=ray.train.torch.prepare_model, device=ray.train.torch.get_device())
    if ctx.get_world_rank() == 0:  # Train V2 keeps no metrics without a checkpoint; one machine, so a file
        with open(result_file, "w") as f:
            json.dump(result, f)


def through_ray(cfg: TrainBenchConfig) -> dict:
    """On the cluster at ``RAY_ADDRESS`` (or the one this process is connected to), else on a local one
    this starts and stops, whose start-up and teardown then count in ``fixed_overhead_s``; the workers'
    CPUs are an equal share of the cluster's. Rank 0 writes its figures to a file in this process's temp
    dir: the bench measures one machine."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lmforge.cluster.session import cluster_cpus, ray_session
    from lmforge.stages import RayConfig

    own = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")  # a local cluster of its own
    start = time.perf_counter()
    with ray_session(RayConfig()):
        init_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            cpus = round(0.95 * cluster_cpus() / cfg.workers, 2)
            result_file = os.path.join(tmp, "result.json")
            loop_config = dataclasses.asdict(cfg) | {"result_file": result_file}
            trainer = TorchTrainer(_ray_worker, train_loop_config=loop_config,
                                   scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                                                resources_per_worker={"CPU": cpus}),
                                   run_config=RunConfig(name="bench", storage_path=tmp))
            start = time.perf_counter()
            trainer.fit()
            fit_s = time.perf_counter() - start
            with open(result_file) as f:
                metrics = json.load(f)
        start = time.perf_counter()
    shutdown_s = time.perf_counter() - start if own else 0.0
    loop_s = metrics["step_s"] * cfg.steps  # the warm-up steps ran in the loop too
    return metrics | {"workers": cfg.workers, "cluster": "started here" if own else "joined", "ray_init_s": init_s,
                      "fit_s": fit_s, "fixed_overhead_s": init_s + (fit_s - loop_s) + shutdown_s}


def run(cfg: TrainBenchConfig) -> dict:
    result = {"preset": cfg.preset, "seq_len": cfg.seq_len, "global_batch": cfg.global_batch, "steps": cfg.steps,
              "bare": bare(cfg)}
    if not cfg.gpu:
        result["ray"] = through_ray(cfg)
        result["ratio_ray_over_bare"] = result["ray"]["tokens_per_s"] / result["bare"]["tokens_per_s"]
    return write_result(result, cfg.output)


if __name__ == "__main__":  # a GPU box with only PyTorch: python -m lmforge.bench.train_bench gpu=true
    from lmforge import config as cfgmod

    print(json.dumps(run(cfgmod.load(TrainBenchConfig, None, sys.argv[1:])), indent=2))
