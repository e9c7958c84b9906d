"""``lmforge pretrain``: train a Llama-style model on ``prepare`` shards with Ray Train.

Run: ``lmforge pretrain jobs/pretrain.yaml data=runs/data output=runs/model train.num_workers=2``.

Each Ray Train worker reads its own slice of the packed rows, runs the plain loop in
:mod:`lmforge.train.loop` under DDP (gloo on CPU, nccl on GPU) and rank 0 returns the trained model as
a Ray Train checkpoint, which the driver copies to ``output/model`` (an HF dir with the tokenizer).
``train.num_workers=0`` runs the same worker function in this process without Ray.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lmforge import config as cfgmod
from lmforge import stage
from lmforge.cluster.session import cluster_cpus, ray_session
from lmforge.model import presets
from lmforge.train import data as tdata
from lmforge.train import loop
from lmforge.train.config import PretrainConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def run(cfg: PretrainConfig) -> Path:
    """Run the pretrain stage; returns the output dir. A finished identical run is skipped."""
    stage.require_local(cfg.output, "output")
    if not cfg.force and stage.is_finished(cfg, cfg.output):
        log.info("pretrain: %s already holds this run; skipping (force=true to redo)", cfg.output)
        return Path(cfg.output)
    tdata.read_manifest(cfg.data)  # fail early, with a clear message, on a wrong data dir
    partial = stage.begin(cfg, cfg.output)
    start = time.perf_counter()
    if cfg.train.num_workers == 0:
        with tempfile.TemporaryDirectory() as tmp:
            train_worker(worker_config(cfg), local_dir=tmp)
            shutil.copytree(tmp, partial / "model")
    else:
        with ray_session(cfg.ray):
            _fit_on_ray(cfg, partial)
    _finish(partial, time.perf_counter() - start)
    return stage.publish(partial, cfg.output)


def _fit_on_ray(cfg: PretrainConfig, partial: Path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    # Leave headroom for Ray Data / the controller: on 2 CPUs, 2 workers x 1 CPU starve other tasks.
    cpus = t.cpus_per_worker or min(1.0, round(0.95 * cluster_cpus() / t.num_workers, 2))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=worker_config(cfg),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(name="pretrain", storage_path=str((partial / "ray").resolve())),
    )
    log.info("pretrain: Ray Train, %d workers x %.2f CPU%s", t.num_workers, cpus, " + GPU" if t.use_gpu else "")
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("pretrain: training finished without a model checkpoint")
    result.checkpoint.to_directory(str(partial / "model"))
    shutil.rmtree(partial / "ray", ignore_errors=True)  # per-run scratch, the model is copied out


def worker_config(cfg: PretrainConfig) -> dict:
    """The config as workers get it: local paths made absolute (workers run in another directory)."""
    conf = cfgmod.to_dict(cfg)
    conf["data"] = str(Path(cfg.data).resolve())
    if cfg.model.init_from and "://" not in cfg.model.init_from:
        conf["model"]["init_from"] = str(Path(cfg.model.init_from).resolve())
    return conf


def _finish(partial: Path, seconds: float) -> None:
    """Move metrics next to the model, plot the loss curve, write a summary."""
    model_dir = partial / "model"
    if (model_dir / METRICS_FILE).exists():
        shutil.move(str(model_dir / METRICS_FILE), partial / METRICS_FILE)
    rows = [json.loads(line) for line in (partial / METRICS_FILE).read_text().splitlines() if line]
    summary = json.loads((model_dir / "train_summary.json").read_text())
    (model_dir / "train_summary.json").unlink()
    summary.update(seconds=round(seconds, 2), final_loss=rows[-1]["loss"] if rows else None)
    (partial / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss(rows, partial / "loss.png")
    log.info("pretrain: %s", json.dumps(summary))


def train_worker(config: dict, local_dir: str | None = None) -> None:
    """Body of every training worker (Ray Train's ``train_loop_per_worker``)."""
    cfg = cfgmod.from_dict(PretrainConfig, config)
    ctx = _worker_context()
    torch.manual_seed(cfg.train.seed)
    manifest = tdata.read_manifest(cfg.data)
    pad_id = manifest["special_tokens"]["pad"]
    model = build_model(cfg, manifest)
    n_params, n_matmul = presets.num_params(model), presets.matmul_params(model)
    model = ctx.wrap(model)
    train_rows = tdata.shard(tdata.load_rows(Path(cfg.data) / "train"), ctx.rank, ctx.world_size)
    val_rows = tdata.shard(tdata.load_rows(Path(cfg.data) / "val"), ctx.rank, ctx.world_size)
    batches = tdata.batches(train_rows, cfg.train.micro_batch_size, cfg.train.seed + ctx.rank)
    flops = presets.flops_per_token(_unwrap(model).config, manifest["seq_len"], n_matmul)
    metrics: list[dict] = []

    def on_metrics(row: dict) -> None:
        if ctx.rank == 0:
            metrics.append(row)
            extra = f" val_loss {row['val_loss']:.4f}" if "val_loss" in row else ""
            print(f"[pretrain] step {row['step']}/{cfg.train.max_steps} loss {row['loss']:.4f}"
                  f"{extra} {row.get('tokens_per_s', 0):.0f} tok/s", flush=True)

    loop.fit(model, batches, val_rows, cfg.train, pad_id=pad_id, device=ctx.device,
             world_size=ctx.world_size, on_metrics=on_metrics, autocast=ctx.autocast())
    summary = {"params": n_params, "flops_per_token": flops, "workers": ctx.world_size,
               "steps": cfg.train.max_steps, "train_rows": len(train_rows) * ctx.world_size}
    ctx.save(_unwrap(model), cfg.data, metrics, summary, local_dir)


def build_model(cfg: PretrainConfig, manifest: dict):
    """A fresh preset model sized to the data's tokenizer, or a checkpoint to continue from."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if cfg.model.init_from:
        return AutoModelForCausalLM.from_pretrained(cfg.model.init_from, dtype=torch.float32)
    hf_cfg = presets.build_config(cfg.model.preset, manifest["vocab_size"], manifest["seq_len"],
                                  manifest["special_tokens"])
    return LlamaForCausalLM(hf_cfg)


def _unwrap(model):
    return getattr(model, "module", model)


class _WorkerContext:
    """Rank, device and checkpoint hand-off, with or without Ray Train around the loop."""

    def __init__(self, ray_ctx, device: torch.device):
        self.ray_ctx = ray_ctx
        self.device = device
        self.rank = ray_ctx.get_world_rank() if ray_ctx else 0
        self.world_size = ray_ctx.get_world_size() if ray_ctx else 1

    def wrap(self, model):
        if self.ray_ctx is None:
            return model.to(self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to device, wraps in DDP when world > 1

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def save(self, model, data_dir: str, metrics: list[dict], summary: dict, local_dir: str | None):
        """Rank 0 saves the HF model dir (+ tokenizer, metrics); under Ray it becomes the checkpoint."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(local_dir or tmp)
            if self.rank == 0:
                save_hf_dir(model, Path(data_dir) / "tokenizer", target)
                (target / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics))
                (target / "train_summary.json").write_text(json.dumps(summary))
            if self.ray_ctx is not None:
                import ray.train

                checkpoint = ray.train.Checkpoint.from_directory(tmp) if self.rank == 0 else None
                ray.train.report({"step": summary["steps"]}, checkpoint=checkpoint)


def _worker_context() -> _WorkerContext:
    try:
        import ray.train

        ray_ctx = ray.train.get_context()
        ray_ctx.get_world_rank()
    except Exception:  # not inside Ray Train (or Ray not installed): a single local worker
        ray_ctx = None
    if ray_ctx is not None:
        import ray.train.torch

        return _WorkerContext(ray_ctx, ray.train.torch.get_device())
    return _WorkerContext(None, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def save_hf_dir(model, tokenizer_dir: Path, out: Path) -> None:
    """Save model weights (safetensors) + config + tokenizer files as one HF dir."""
    from transformers import AutoTokenizer

    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))


def plot_loss(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
