"""``lmforge pretrain``: train a Llama-style model on ``prepare`` shards with Ray Train.

Run: ``lmforge pretrain jobs/pretrain.yaml data=runs/data output=runs/model train.num_workers=2``.

Each Ray Train worker reads its own slice of the packed rows and runs the plain loop in
:mod:`lmforge.train.loop` under DDP (gloo on CPU, nccl on GPU, bf16 autocast on GPU), or with
``train.strategy=fsdp`` under FSDP2, the weights and optimizer state sharded across workers. Every
``train.checkpoint_every`` steps rank 0 writes a checkpoint (under FSDP2 the full state is first
gathered to it) (HF model dir, optimizer, loop state with
data position and metrics history, RNG) that Ray Train persists to ``train.checkpoint_dir`` (local or
``s3://``) before registering it, so a half-written checkpoint is never the one resumed from. Ray
restarts a failed worker group up to ``train.max_failures`` times from the newest checkpoint, and a new
run with ``train.resume=auto`` continues from it too. ``output/model`` is the best checkpoint by
``val_loss``. ``train.num_workers=0`` runs the same worker function in this process without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmforge import config as cfgmod
from lmforge import stage, storage
from lmforge.cluster.session import cluster_cpus, ray_session
from lmforge.model import presets
from lmforge.train import data as tdata
from lmforge.train import loop
from lmforge.train.config import PretrainConfig, accumulation_steps

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_NAME = "checkpoints"  # Ray Train run name: checkpoints land in <checkpoint root>/checkpoints/step_N
def run(cfg: PretrainConfig) -> Path:
    """Run (or resume) the pretrain stage; returns the output dir. A finished identical run is skipped."""
    if done := stage.already_done(cfg, "pretrain"):
        return done
    out = Path(cfg.output)
    tdata.read_manifest(cfg.data)  # fail early, with a clear message, on a wrong data dir
    root = checkpoint_root(cfg)
    if cfg.train.resume == "never" or cfg.force:
        _wipe(root)
    out.mkdir(parents=True, exist_ok=True)
    (out / stage.DONE_MARKER).unlink(missing_ok=True)
    cfgmod.write(cfg, out)
    start = time.perf_counter()
    if cfg.train.num_workers == 0:
        train_worker(worker_config(cfg))
    else:
        with ray_session(cfg.ray):
            _fit_on_ray(cfg, root)
    _finish(cfg, out, root, time.perf_counter() - start)
    (out / stage.DONE_MARKER).write_text("")
    return out


def checkpoint_root(cfg: PretrainConfig) -> str:
    """Where checkpoints live: ``train.checkpoint_dir`` or ``<output>/checkpoints``."""
    root = cfg.train.checkpoint_dir or str(Path(cfg.output).resolve())
    return root if root.startswith("s3://") else str(Path(root).resolve())


def _wipe(root: str) -> None:
    filesystem, path = storage.filesystem(f"{root}/{RUN_NAME}")
    filesystem.delete_dir_contents(path, missing_dir_ok=True)


def _fit_on_ray(cfg: PretrainConfig, root: str) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    # Leave headroom for Ray Data / the controller: on 2 CPUs, 2 workers x 1 CPU starve other tasks.
    cpus = t.cpus_per_worker or min(1.0, round(0.95 * cluster_cpus() / t.num_workers, 2))
    fs, path = storage.filesystem(root)
    fs = fs if root.startswith("s3://") else None  # local: let Ray resolve it, as it always has
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=worker_config(cfg),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min")),
    )
    log.info("pretrain: Ray Train, %d workers x %.2f CPU%s, checkpoints in %s/%s", t.num_workers, cpus,
             " + GPU" if t.use_gpu else "", root, RUN_NAME)
    trainer.fit()


def worker_config(cfg: PretrainConfig) -> dict:
    """The config as workers get it: local paths made absolute (workers run in another directory)."""
    conf = cfgmod.to_dict(cfg)
    conf["data"] = str(Path(cfg.data).resolve())
    conf["output"] = str(Path(cfg.output).resolve())
    conf["train"]["checkpoint_dir"] = checkpoint_root(cfg)
    if cfg.model.init_from and "://" not in cfg.model.init_from:
        conf["model"]["init_from"] = str(Path(cfg.model.init_from).resolve())
    return conf


# ---------------------------------------------------------------- checkpoints (driver side)

def list_checkpoints(root: str) -> list[str]:
    """Checkpoint dirs (``.../step_N``) under a root, oldest first; local or s3."""
    from pyarrow import fs as pafs

    filesystem, path = storage.filesystem(f"{root}/{RUN_NAME}")
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    dirs = [i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("step_")]
    prefix = "s3://" if root.startswith("s3://") else ""
    return [prefix + d for d in sorted(dirs)]


def _download(ckpt_uri: str, dest: Path) -> Path:
    from pyarrow import fs as pafs

    if ckpt_uri.startswith("s3://"):  # local checkpoints are read in place
        filesystem, path = storage.filesystem(ckpt_uri)
        pafs.copy_files(path, str(dest), source_filesystem=filesystem)
        return dest
    return Path(ckpt_uri)


def _best_checkpoint(ckpts: list[str], history: list[dict]) -> str:
    """The kept checkpoint with the lowest val_loss at its step (the newest when none was evaluated)."""
    val_at = {r["step"]: r["val_loss"] for r in history if "val_loss" in r}
    scored = [(val_at[int(c.rsplit("_", 1)[1])], c) for c in ckpts if int(c.rsplit("_", 1)[1]) in val_at]
    return min(scored)[1] if scored else ckpts[-1]


def _finish(cfg: PretrainConfig, out: Path, root: str, seconds: float) -> None:
    """Copy the best checkpoint's model to ``output/model``; metrics, loss plot and summary beside it."""
    ckpts = list_checkpoints(root)
    if not ckpts:
        raise RuntimeError(f"pretrain: training finished without a checkpoint in {root}/{RUN_NAME}")
    with tempfile.TemporaryDirectory() as tmp:
        latest = _download(ckpts[-1], Path(tmp) / "latest")
        state = json.loads((latest / "state.json").read_text())
        best = _best_checkpoint(ckpts, state["history"])
        best_dir = _download(best, Path(tmp) / "best")
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(best_dir / "model", out / "model")
    rows = state["history"]
    (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {**state["summary"], "steps": state["step"], "best_step": state.get("best_step"),
               "best_val_loss": state.get("best_val"), "stopped_early": state.get("stopped_early", False),
               "resumed_from": state.get("resumed_from", []), "model_from": Path(best).name,
               "seconds": round(seconds, 2), "final_loss": rows[-1]["loss"] if rows else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss(rows, out / "loss.png")
    log.info("pretrain: %s", json.dumps(summary))


# ---------------------------------------------------------------- the worker

@dataclasses.dataclass
class _LoopState(loop.TrainState):
    resumed_from: list[int] = dataclasses.field(default_factory=list)
    summary: dict = dataclasses.field(default_factory=dict)


def train_worker(config: dict) -> None:
    """Body of every training worker (Ray Train's ``train_loop_per_worker``)."""
    cfg = cfgmod.from_dict(PretrainConfig, config)
    ctx = _worker_context(cfg)
    torch.manual_seed(cfg.train.seed)
    manifest = tdata.read_manifest(cfg.data)
    restored = ctx.restore()
    model = build_model(cfg, manifest, restored / "model" if restored else None)
    state = _LoopState()
    if restored:
        saved = json.loads((restored / "state.json").read_text())
        state = _LoopState(**{**saved, "resumed_from": saved.get("resumed_from", []) + [saved["step"]]})
        _set_rng(torch.load(restored / "rng.pt", weights_only=False))
        ctx.log(f"resumed from step {state.step}")
    cfg.train.grad_accum_steps = accumulation_steps(cfg.train, manifest["seq_len"], ctx.world_size)
    n_matmul = presets.matmul_params(model)
    flops = presets.flops_per_token(model.config, manifest["seq_len"], n_matmul)
    state.summary = {"params": presets.num_params(model), "flops_per_token": flops, "workers": ctx.world_size,
                     "grad_accum_steps": cfg.train.grad_accum_steps,
                     "global_batch_tokens": cfg.train.grad_accum_steps * cfg.train.micro_batch_size
                     * manifest["seq_len"] * ctx.world_size}
    model = ctx.wrap(model)
    optimizer = loop.make_optimizer(model, cfg.train)
    if restored:
        ctx.load_optimizer(model, optimizer, torch.load(restored / "optimizer.pt", map_location="cpu",
                                                        weights_only=False))
    train_rows = tdata.shard(tdata.load_rows(Path(cfg.data) / "train"), ctx.rank, ctx.world_size)
    val_rows = tdata.shard(tdata.load_rows(Path(cfg.data) / "val"), ctx.rank, ctx.world_size)
    batches = tdata.batches(train_rows, cfg.train.micro_batch_size, cfg.train.seed + ctx.rank,
                            start=state.step * cfg.train.grad_accum_steps)

    def on_metrics(row: dict) -> None:
        extra = f" val_loss {row['val_loss']:.4f}" if "val_loss" in row else ""
        ctx.log(f"step {row['step']}/{cfg.train.max_steps} loss {row['loss']:.4f}{extra} "
                f"{row.get('tokens_per_s', 0):.0f} tok/s" + (f" mfu {row['mfu']:.1%}" if "mfu" in row else ""))

    def on_checkpoint(s: loop.TrainState) -> None:
        ctx.save_checkpoint(_unwrap(model), optimizer, s, Path(cfg.data) / "tokenizer")

    loop.fit(model, batches, val_rows, cfg.train, pad_id=manifest["special_tokens"]["pad"], device=ctx.device,
             world_size=ctx.world_size, optimizer=optimizer, state=state, flops_per_token=flops,
             peak_flops=ctx.peak_flops(), on_metrics=on_metrics, on_checkpoint=on_checkpoint,
             autocast=ctx.autocast())


def build_model(cfg: PretrainConfig, manifest: dict, checkpoint_model: Path | None = None):
    """The checkpoint's model when resuming, else ``model.init_from``, else a fresh preset."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    source = checkpoint_model or cfg.model.init_from
    if source:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    hf_cfg = presets.build_config(cfg.model.preset, manifest["vocab_size"], manifest["seq_len"],
                                  manifest["special_tokens"])
    return LlamaForCausalLM(hf_cfg)


def _unwrap(model):
    return getattr(model, "module", model)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _WorkerContext:
    """Rank, device, checkpoint save/restore: the parts that differ with and without Ray Train."""

    def __init__(self, cfg: PretrainConfig, ray_ctx, device: torch.device):
        self.cfg, self.ray_ctx, self.device = cfg, ray_ctx, device
        self.rank = ray_ctx.get_world_rank() if ray_ctx else 0
        self.world_size = ray_ctx.get_world_size() if ray_ctx else 1
        self._restore_tmp = tempfile.TemporaryDirectory()

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[pretrain] {message}", flush=True)

    @property
    def fsdp(self) -> bool:
        return self.cfg.train.strategy == "fsdp" and self.ray_ctx is not None  # a bare run has no group

    def wrap(self, model):
        if self.ray_ctx is None:
            return model.to(self.device)
        if self.fsdp:
            return _fully_shard(model.to(self.device), self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to device, wraps in DDP when world > 1

    def full_state(self, model, optimizer) -> tuple[dict | None, dict | None]:
        """Under FSDP, the whole model and optimizer state gathered to CPU (a collective: every rank
        calls it); otherwise None, and rank 0 saves its own replica."""
        if not self.fsdp:
            return None, None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)

    def load_optimizer(self, model, optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def peak_flops(self) -> float | None:
        if self.cfg.train.peak_tflops:
            return self.cfg.train.peak_tflops * 1e12
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return presets.peak_flops(name)
        return None

    def restore(self) -> Path | None:
        """The newest checkpoint as a local dir: Ray Train's (after a restart or resumed run), or local."""
        if self.ray_ctx is not None:
            import ray.train

            ckpt = ray.train.get_checkpoint()
            return Path(ckpt.to_directory(self._restore_tmp.name)) if ckpt else None
        ckpts = list_checkpoints(self.cfg.train.checkpoint_dir)
        return _download(ckpts[-1], Path(self._restore_tmp.name)) if ckpts else None

    def save_checkpoint(self, model, optimizer, state: loop.TrainState, tokenizer_dir: Path) -> None:
        """Rank 0 writes the checkpoint; under Ray every rank reports (it is a collective)."""
        name = f"step_{state.step:06d}"
        val = next((r["val_loss"] for r in reversed(state.history) if "val_loss" in r), float("inf"))
        model_state, optimizer_state = self.full_state(model, optimizer)
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                _write_checkpoint(Path(tmp), model, optimizer, state, tokenizer_dir, model_state, optimizer_state)
            if self.ray_ctx is None:
                self._save_local(Path(tmp), name)
                return
            import ray.train

            checkpoint = ray.train.Checkpoint.from_directory(tmp) if self.rank == 0 else None
            ray.train.report({"step": state.step, "val_loss": val}, checkpoint=checkpoint,
                             checkpoint_dir_name=name)

    def _save_local(self, tmp: Path, name: str) -> None:
        """Without Ray: copy into place under a temporary name, then rename (atomic on one filesystem)."""
        root = Path(self.cfg.train.checkpoint_dir) / RUN_NAME
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(tmp, staging)
        shutil.rmtree(root / name, ignore_errors=True)
        staging.rename(root / name)
        for old in _to_prune(root, self.cfg.train.keep_checkpoints):
            shutil.rmtree(old)


def _to_prune(root: Path, keep: int) -> list[Path]:
    """Ray Train's policy, for bare runs: keep the ``keep`` best by val_loss, and always the newest."""
    steps = sorted(p for p in root.iterdir() if p.name.startswith("step_"))

    def val_loss(step_dir: Path) -> float:
        history = json.loads((step_dir / "state.json").read_text()).get("history", [])
        return next((r["val_loss"] for r in reversed(history) if "val_loss" in r), float("inf"))

    kept = set(sorted(steps, key=val_loss)[:keep]) | set(steps[-1:])
    return [p for p in steps if p not in kept]


def _write_checkpoint(path: Path, model, optimizer, state: loop.TrainState, tokenizer_dir: Path,
                      model_state: dict | None = None, optimizer_state: dict | None = None) -> None:
    save_hf_dir(model, tokenizer_dir, path / "model", model_state)
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), path / "optimizer.pt")
    torch.save(_rng_state(), path / "rng.pt")
    (path / "state.json").write_text(json.dumps(dataclasses.asdict(state)))


def _worker_context(cfg: PretrainConfig) -> _WorkerContext:
    try:
        import ray.train

        ray_ctx = ray.train.get_context()
        ray_ctx.get_world_rank()
    except Exception:  # not inside Ray Train (or Ray not installed): a single local worker
        ray_ctx = None
    if ray_ctx is not None:
        import ray.train.torch

        return _WorkerContext(cfg, ray_ctx, ray.train.torch.get_device())
    return _WorkerContext(cfg, None, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _fully_shard(model, device: torch.device):
    """FSDP2: each decoder layer its own shard group (gathered just in time), the rest in the root's."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def save_hf_dir(model, tokenizer_dir: Path, out: Path, state_dict: dict | None = None) -> None:
    """Save model weights (safetensors) + config + tokenizer files as one HF dir (``state_dict``: the
    gathered weights of a sharded model)."""
    from transformers import AutoTokenizer

    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
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
