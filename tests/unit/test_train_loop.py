"""The plain training loop: schedule, optimizer groups, masking, and that it actually learns."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from lmforge.model import presets
from lmforge.train import data as tdata
from lmforge.train import loop
from lmforge.train.config import TrainConfig
from lmforge.train.data import Rows


def tiny_model(vocab=64, seq=16):
    torch.manual_seed(0)
    return LlamaForCausalLM(presets.build_config("tiny", vocab, seq, {"pad": 0, "bos": 1, "eos": 2}))


def test_lr_warmup_then_cosine_to_min():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert loop.lr_at(0, cfg) == pytest.approx(0.1)
    assert loop.lr_at(9, cfg) == pytest.approx(1.0)
    assert loop.lr_at(55, cfg) == pytest.approx(0.55)
    assert loop.lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [loop.lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    opt = loop.make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_pads_are_masked_out_of_labels():
    ids = torch.tensor([[5, 6, 2, 0, 0]])
    assert loop.labels_for(ids, pad_id=0).tolist() == [[5, 6, 2, -100, -100]]
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    assert loop.labels_for(ids, pad_id=0, loss_mask=mask).tolist() == [[-100, 6, 2, -100, -100]]


def test_fit_learns_a_repeating_pattern():
    model = tiny_model()
    rows = Rows(torch.tensor([[1] + [3 + (i % 5) for i in range(15)]] * 32))
    cfg = TrainConfig(max_steps=40, micro_batch_size=8, lr=1e-2, warmup_steps=5, log_every=10, eval_every=20,
                      eval_batches=2)
    with torch.no_grad():
        initial = loop.loss_on(model, rows[:8], pad_id=0).item()
    history = loop.fit(model, tdata.batches(rows, 8, seed=0), rows[:8], cfg, pad_id=0,
                       device=torch.device("cpu")).history
    assert initial > 3.0 and history[-1]["loss"] < 0.2
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert "val_loss" in history[1] and history[-1]["val_ppl"] == pytest.approx(math.exp(history[-1]["val_loss"]))
    assert history[-1]["tokens_per_s"] > 0


def test_grad_accumulation_matches_one_big_batch():
    rows = Rows(torch.randint(3, 64, (8, 16)))
    cfg = TrainConfig(grad_clip=0.0)
    grads = []
    for micro in ([rows], [rows[:4], rows[4:]]):
        model = tiny_model()
        opt = loop.make_optimizer(model, cfg)
        loop.train_step(model, opt, micro, cfg, pad_id=0, autocast=torch.autocast("cpu", enabled=False))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_workers_get_disjoint_shards_and_batches_reshuffle():
    rows = Rows(torch.arange(20).unsqueeze(1), torch.arange(20).unsqueeze(1) % 2)
    shards = [tdata.shard(rows, r, 2) for r in range(2)]
    assert set(shards[0].input_ids.flatten().tolist()).isdisjoint(shards[1].input_ids.flatten().tolist())
    it = tdata.batches(shards[0], 5, seed=1)
    epoch1, epoch2 = next(it), next(it)
    assert sorted(torch.cat([epoch1.input_ids, epoch2.input_ids]).flatten().tolist()) == list(range(0, 20, 2))
    assert torch.equal(epoch1.loss_mask, epoch1.input_ids % 2)  # the mask travels with its rows
    with pytest.raises(ValueError, match="micro_batch_size"):
        next(tdata.batches(rows[:2], 5, seed=0))


def test_flops_per_token_counts_matmuls():
    model = tiny_model(vocab=64, seq=16)
    n = presets.matmul_params(model)
    assert n == presets.num_params(model)  # tied embeddings: the lm_head matmul uses them
    assert presets.flops_per_token(model.config, 16, n) == 6 * n + 12 * 2 * 64 * 16


def test_resuming_from_a_checkpoint_continues_exactly():
    """10 steps + checkpoint + 10 resumed steps == 20 uninterrupted steps (weights, data position, schedule)."""
    import copy

    rows = Rows(torch.randint(3, 64, (40, 16)))
    cfg = TrainConfig(max_steps=20, micro_batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_steps=3, log_every=5,
                      eval_every=5, checkpoint_every=10, eval_batches=1)
    cpu = torch.device("cpu")
    straight = tiny_model()
    loop.fit(straight, tdata.batches(rows, 4, seed=0), rows[:4], cfg, pad_id=0, device=cpu)

    saved = {}

    def grab(state):
        if state.step == 10 and not saved:
            saved.update(model=copy.deepcopy(first.state_dict()), opt=copy.deepcopy(opt.state_dict()),
                         state=copy.deepcopy(state))
            raise KeyboardInterrupt  # the "crash" right after the checkpoint

    first = tiny_model()
    opt = loop.make_optimizer(first, cfg)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(first, tdata.batches(rows, 4, seed=0), rows[:4], cfg, pad_id=0, device=cpu, optimizer=opt,
                 on_checkpoint=grab)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    opt2 = loop.make_optimizer(resumed, cfg)
    opt2.load_state_dict(saved["opt"])
    state = loop.fit(resumed, tdata.batches(rows, 4, seed=0, start=10 * 2), rows[:4], cfg, pad_id=0, device=cpu,
                     optimizer=opt2, state=saved["state"])
    assert state.step == 20
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_early_stopping_after_patience_evaluations():
    model = tiny_model()
    rows = Rows(torch.randint(3, 64, (16, 16)))
    val = Rows(torch.randint(3, 64, (8, 16)))  # unrelated data: val loss soon stops improving at lr 5e-2
    cfg = TrainConfig(max_steps=200, micro_batch_size=4, lr=5e-2, warmup_steps=0, eval_every=5, log_every=5,
                      patience=2, checkpoint_every=1000, eval_batches=2)
    checkpoints = []
    state = loop.fit(model, tdata.batches(rows, 4, seed=0), val, cfg, pad_id=0, device=torch.device("cpu"),
                     on_checkpoint=lambda s: checkpoints.append(s.step))
    assert state.stopped_early and state.step < 200 and state.evals_since_best == 2
    assert checkpoints == [state.step]  # an early stop always writes a final checkpoint
    assert state.best_step == state.step - 2 * 5


def test_bare_runs_prune_checkpoints_like_ray_train(tmp_path):
    import json

    from lmforge.train.checkpoint import list_checkpoints, to_prune

    for step, val in ((10, 3.0), (20, 2.0), (30, 2.5), (40, None)):
        d = tmp_path / "checkpoints" / f"step_{step:06d}"
        d.mkdir(parents=True)
        history = [{"step": step, "loss": 1.0}] + ([{"step": step, "val_loss": val}] if val else [])
        (d / "state.json").write_text(json.dumps({"history": history}))
    (tmp_path / "checkpoints" / "step_000050").mkdir()  # cut off while written: no state.json, no checkpoint
    ckpts = list_checkpoints(str(tmp_path))
    assert [c.rsplit("/", 1)[1] for c in ckpts] == ["step_000010", "step_000020", "step_000030", "step_000040"]
    pruned = [c.rsplit("/", 1)[1] for c in to_prune(ckpts, keep=2)]
    assert pruned == ["step_000010"]  # 20 and 30 are the best two; 40 is the newest


def test_the_best_checkpoint_is_the_lowest_val_loss_kept_not_the_newest():
    """On recorded values of a run that overfits (val loss bottoms out at step 40, then rises): the model
    comes from step 40; a checkpoint without an evaluation never wins over one with; with nothing
    evaluated, the newest."""
    from lmforge.train.checkpoint import best

    history = [{"step": s, "loss": 1.0} for s in (20, 40, 60, 80)]
    history += [{"step": s, "val_loss": v} for s, v in ((20, 3.1), (40, 2.9), (60, 3.0), (80, 3.4))]
    ckpts = [f"/c/checkpoints/step_{s:06d}" for s in (20, 40, 60, 80, 90)]
    assert best(ckpts, history) == "/c/checkpoints/step_000040"
    assert best(ckpts[2:], history) == "/c/checkpoints/step_000060"  # the best one pruned: the best kept
    assert best(ckpts, [r for r in history if "val_loss" not in r]) == "/c/checkpoints/step_000090"


def test_global_batch_tokens_sets_accumulation():
    from lmforge.train.config import accumulation_steps

    assert accumulation_steps(TrainConfig(grad_accum_steps=3), seq_len=128, world_size=2) == 3
    cfg = TrainConfig(micro_batch_size=8, global_batch_tokens=65_536)
    assert accumulation_steps(cfg, seq_len=1024, world_size=4) == 2  # 8 x 1024 x 4 = 32k per micro-step
    assert accumulation_steps(cfg, seq_len=1024, world_size=16) == 1
    assert accumulation_steps(TrainConfig(micro_batch_size=8, global_batch_tokens=100), 128, 1) == 1


def test_bare_training_bench_runs_without_ray():
    """A GPU box with only PyTorch + transformers (no Ray, no boto3) must run the bare loop (MFU bench)."""
    import subprocess
    import sys

    code = """
import sys
for name in ("ray", "boto3", "botocore", "fastapi"):
    sys.modules[name] = None  # as if not installed: imports fail, find_spec says None
from lmforge import config
from lmforge.bench import train_bench
result = train_bench.bare(config.load(train_bench.TrainBenchConfig, None, ["preset=tiny", "steps=3", "warmup=1"]))
assert result["tokens_per_s"] > 0
from lmforge.model.presets import peak_flops  # what the gpu=true branch adds
assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
