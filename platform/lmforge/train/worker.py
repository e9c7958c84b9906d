"""The training worker: Ray Train's ``train_loop_per_worker``, and the whole run when ``num_workers=0``.

It takes a :class:`~lmforge.train.config.WorkerSpec` (token rows with an optional loss mask, a model to
build or load, the loop's settings) and knows nothing of the stage that made it: pretraining and
fine-tuning hand it the same shape. It restores the newest checkpoint if there is one, wraps the model
for its strategy (:mod:`.parallel`), runs the plain loop (:mod:`.loop`), writes checkpoints
(:mod:`.checkpoint`) and sends metrics rows to the driver (:mod:`.progress`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tempfile
import time
from pathlib import Path

import torch

from lmforge import config as cfgmod
from lmforge import storage
from lmforge.model import presets
from lmforge.train import checkpoint, loop, parallel
from lmforge.train.config import WorkerSpec, accumulation_steps
from lmforge.train.data import batches, load_rows, shard

log = logging.getLogger("lmforge.train")


@dataclasses.dataclass
class LoopState(loop.TrainState):
    resumed_from: list[int] = dataclasses.field(default_factory=list)  # steps this run restarted at
    summary: dict = dataclasses.field(default_factory=dict)


def train_worker(config: dict) -> None:
    """``config``: ``{"spec": WorkerSpec as a dict, "progress": where rank 0 sends metrics (or None),
    "tune": True in a sweep's trial that trains in its own process}``."""
    spec = cfgmod.from_dict(WorkerSpec, config["spec"])
    progress = config.get("progress")
    ctx = TuneTrialContext(spec) if config.get("tune") else WorkerContext.current(spec)
    torch.manual_seed(spec.train.seed)
    _quiet_transformers()
    restored = ctx.restore()
    model = build_model(spec, restored / "model" if restored else None)
    state = LoopState()
    if restored:
        saved = checkpoint.read_state(restored)
        state = LoopState(**{**saved, "resumed_from": saved.get("resumed_from", []) + [saved["step"]]})
        checkpoint.set_rng(torch.load(restored / "rng.pt", weights_only=False))
    tcfg = dataclasses.replace(spec.train, grad_accum_steps=accumulation_steps(spec.train, spec.seq_len,
                                                                                 ctx.world_size))
    flops = presets.flops_per_token(model.config, spec.seq_len, presets.matmul_params(model))
    state.summary = {"params": presets.num_params(model), "flops_per_token": flops, "workers": ctx.world_size,
                     "grad_accum_steps": tcfg.grad_accum_steps,
                     "global_batch_tokens": tcfg.grad_accum_steps * tcfg.micro_batch_size * spec.seq_len
                     * ctx.world_size}
    model = parallel.wrap(model, ctx.device, tcfg.strategy, ctx.distributed)
    optimizer = loop.make_optimizer(model, tcfg)
    if restored:
        state_dict = torch.load(restored / "optimizer.pt", map_location="cpu", weights_only=False)
        parallel.load_optimizer(model, optimizer, state_dict, ctx.sharded)
    train_rows = shard(load_rows(storage.local_dir(spec.train_rows)), ctx.rank, ctx.world_size)
    val_rows = shard(load_rows(storage.local_dir(spec.val_rows)), ctx.rank, ctx.world_size)
    train_batches = batches(train_rows, tcfg.micro_batch_size, tcfg.seed + ctx.rank,
                            start=state.step * tcfg.grad_accum_steps)
    send = progress.put if (progress is not None and ctx.rank == 0) else (lambda message: None)
    send(("history", state.history))
    ctx.loop_started = time.time()
    loop.fit(model, train_batches, val_rows, tcfg, pad_id=spec.pad_id, device=ctx.device, world_size=ctx.world_size,
             optimizer=optimizer, state=state, flops_per_token=flops,
             peak_flops=parallel.peak_flops(ctx.device, tcfg.peak_tflops),
             on_metrics=lambda row: send(("row", row)),
             on_checkpoint=lambda s: ctx.save_checkpoint(model, optimizer, s),
             autocast=parallel.autocast(ctx.device), loss_fn=make_loss(spec, ctx.device))


def make_loss(spec: WorkerSpec, device: torch.device) -> loop.LossFn:
    """The stage's own loss (``spec.loss``: a factory named by import path, as the spec is plain values),
    else next-token cross-entropy."""
    if spec.loss is None:
        return loop.loss_on
    module, _, name = spec.loss.partition(":")
    return getattr(importlib.import_module(module), name)(spec, device)


def build_model(spec: WorkerSpec, checkpoint_model: Path | None = None):
    """The checkpoint's model when resuming, else ``init_from``, else a fresh preset; with ``lora``, the
    frozen ``init_from`` with adapters (the checkpoint's when resuming)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    init_from = storage.local_dir(spec.init_from) if spec.init_from else None  # remote: this node's mirror
    if spec.lora is not None:
        from lmforge.model import lora

        base = AutoModelForCausalLM.from_pretrained(init_from, dtype=torch.float32)
        return lora.wrap(base, spec.lora, checkpoint_model)
    source = checkpoint_model or init_from
    if source:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    return LlamaForCausalLM(presets.build_config(spec.preset, spec.vocab_size, spec.seq_len, spec.special_tokens,
                                                  **spec.model_overrides))


def _quiet_transformers() -> None:
    """No progress bar per checkpoint write ("Writing model shards") in the logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class WorkerContext:
    """Rank, device and checkpoint save/restore: what differs with and without Ray Train."""

    def __init__(self, spec: WorkerSpec, ray_ctx, device: torch.device):
        self.spec, self.ray_ctx, self.device = spec, ray_ctx, device
        self.rank = ray_ctx.get_world_rank() if ray_ctx else 0
        self.world_size = ray_ctx.get_world_size() if ray_ctx else 1
        self.distributed = ray_ctx is not None
        self.sharded = spec.train.strategy == "fsdp" and self.distributed  # a bare run has no group to shard over
        self._restore_tmp = tempfile.TemporaryDirectory()
        self.loop_started: float | None = None  # wall-clock time the training loop began (in reports)

    @classmethod
    def current(cls, spec: WorkerSpec) -> WorkerContext:
        """Inside Ray Train: its rank and device; otherwise a single local worker."""
        try:
            import ray.train

            ray_ctx = ray.train.get_context()
            ray_ctx.get_world_rank()
        except Exception:  # not inside Ray Train (or Ray not installed)
            return cls(spec, None, local_device())
        import ray.train.torch

        return cls(spec, ray_ctx, ray.train.torch.get_device())

    def restore(self) -> Path | None:
        """The newest checkpoint as a local dir: Ray Train's (after a restart or a resumed run), or local."""
        if self.ray_ctx is not None:
            import ray.train

            ckpt = ray.train.get_checkpoint()
            return Path(ckpt.to_directory(self._restore_tmp.name)) if ckpt else None
        ckpts = checkpoint.list_checkpoints(self.spec.checkpoint_root)
        return checkpoint.local_copy(ckpts[-1], Path(self._restore_tmp.name)) if ckpts else None

    def save_checkpoint(self, model, optimizer, state: loop.TrainState) -> None:
        """Rank 0 writes the checkpoint, then every rank hands it on (:meth:`keep`)."""
        model_state, optimizer_state = parallel.full_state(model, optimizer, self.sharded)
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                checkpoint.write(Path(tmp), parallel.unwrap(model), optimizer, state,
                                 storage.local_dir(self.spec.tokenizer),
                                 model_state, optimizer_state)
            # What a sweep's scheduler sees (Tune's callback forwards rank 0's report).
            report = {**checkpoint.report_of(dataclasses.asdict(state)), "loop_started": self.loop_started}
            self.keep(Path(tmp), checkpoint.step_name(state.step), report)

    def keep(self, ckpt: Path, name: str, report: dict) -> None:
        """A bare run saves it beside the others (pruned as Ray Train does); under Ray Train every rank
        reports it (a collective), rank 0 with the checkpoint."""
        if self.ray_ctx is None:
            checkpoint.save_bare(ckpt, self.spec.checkpoint_root, name, self.spec.train.keep_checkpoints)
            return
        import ray.train

        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(ckpt) if self.rank == 0 else None,
                         checkpoint_dir_name=name)


class TuneTrialContext(WorkerContext):
    """A sweep's trial that trains in its own process (``train.num_workers=0``): Tune keeps its checkpoints
    in the sweep's storage and hands the newest back when the sweep resumes, and every checkpoint's
    report (step, val_loss) reaches the scheduler, as a Ray Train trial's does through Tune's callback."""

    def __init__(self, spec: WorkerSpec):
        super().__init__(spec, None, local_device())

    def restore(self) -> Path | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        return Path(ckpt.to_directory(self._restore_tmp.name)) if ckpt else None

    def keep(self, ckpt: Path, name: str, report: dict) -> None:
        from ray import tune

        tune.report(report, checkpoint=tune.Checkpoint.from_directory(ckpt))


def local_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
