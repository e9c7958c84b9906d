"""The training worker as pretraining runs it (no Ray: ``num_workers=0``), fed token rows with a loss mask."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaForCausalLM

from lmforge import config as cfgmod
from lmforge.data.tokenizer import to_hf, train_bpe
from lmforge.model import presets
from lmforge.train import loop
from lmforge.train.config import TrainConfig, WorkerSpec
from lmforge.train.data import Rows, load_rows
from lmforge.train.progress import MetricsLog
from lmforge.train.worker import train_worker

VOCAB, SEQ = 300, 16


def test_masked_positions_add_nothing_to_the_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(presets.build_config("tiny", 64, SEQ, {"pad": 0, "bos": 1, "eos": 2}))
    ids = torch.randint(3, 64, (4, SEQ))
    mask = (torch.arange(SEQ) % 2).expand(4, SEQ).clone()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1),
                                                      reduction="none").view(4, SEQ - 1)
        want = per_token[mask[:, 1:] == 1].mean()
        got = loop.loss_on(model, Rows(ids, mask), pad_id=0)
        unmasked = loop.loss_on(model, Rows(ids), pad_id=0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert abs(unmasked.item() - want.item()) > 1e-3  # the mask changes what is averaged
    silent = loop.loss_on(model, Rows(ids, torch.zeros_like(ids)), pad_id=0)  # no target at all
    assert silent.item() == 0.0 and silent.requires_grad  # zero, not NaN, and still in the graph


def test_padding_after_the_last_target_is_not_computed_and_changes_nothing():
    """Fine-tuning rows are right-padded to max_seq_len: a batch is cut after its last target (any row's), and
    the loss is the same as on the whole rows (cutting one column too many drops a target and changes it)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(presets.build_config("tiny", 64, SEQ, {"pad": 0, "bos": 1, "eos": 2}))
    ids = torch.randint(3, 64, (2, SEQ))
    mask = torch.zeros_like(ids)
    mask[0, 4:7], mask[1, 3:10] = 1, 1  # answers ending at 6 and 9; padding after them
    ids[0, 7:], ids[1, 10:] = 2, 2
    rows = Rows(ids, mask)
    assert rows.trimmed().input_ids.shape == (2, 10) and torch.equal(rows.trimmed().input_ids, ids[:, :10])
    assert Rows(ids).trimmed().input_ids.shape == (2, SEQ)  # pretraining rows: every position a target
    with torch.no_grad():
        assert loop.loss_on(model, rows.trimmed(), None).item() == pytest.approx(
            loop.loss_on(model, rows, None).item(), rel=1e-5)


def _rows_dir(path: Path, ids: torch.Tensor, mask: torch.Tensor) -> Path:
    path.mkdir(parents=True)
    table = pa.table({"input_ids": pa.array(ids.tolist(), pa.list_(pa.int32())),
                      "loss_mask": pa.array(mask.tolist(), pa.list_(pa.int8()))})
    pq.write_table(table, path / "part-0.parquet")
    return path


@pytest.fixture(scope="module")
def masked_task(tmp_path_factory):
    """Rows whose odd positions are a function of the token before them and whose even positions are
    noise: learnable only when the noise is masked out of the loss."""
    root = tmp_path_factory.mktemp("rows")
    gen = torch.Generator().manual_seed(0)
    n = 2000  # more rows than 80 steps see: the noise cannot be memorised, only the rule learnt
    noise = torch.randint(10, 250, (n + 16, SEQ // 2), generator=gen)
    ids = torch.stack([noise, (noise + 7) % 240 + 10], dim=2).reshape(n + 16, SEQ)
    mask = (torch.arange(SEQ) % 2).expand(n + 16, SEQ).clone()
    tok = root / "tokenizer"
    to_hf(train_bpe(["a tiny corpus for a tokenizer"] * 10, VOCAB), SEQ).save_pretrained(tok)
    train = _rows_dir(root / "train", ids[:n], mask[:n])
    val = _rows_dir(root / "val", ids[n:], mask[n:])
    return root, train, val, tok


def _spec(masked_task, out: Path, max_steps: int, use_mask: bool = True) -> dict:
    root, train, val, tok = masked_task
    if not use_mask:  # the same rows, every position a target
        rows = load_rows(train)
        train = _rows_dir(out / "train_all", rows.input_ids, torch.ones_like(rows.input_ids))
    spec = WorkerSpec(train_rows=str(train), val_rows=str(val), seq_len=SEQ, pad_id=0, tokenizer=str(tok),
                      preset="tiny", vocab_size=VOCAB, special_tokens={"pad": 0, "bos": 1, "eos": 2},
                      train=TrainConfig(max_steps=max_steps, micro_batch_size=16, lr=1e-2, warmup_steps=5,
                                        log_every=10, eval_every=10, eval_batches=1, checkpoint_every=20,
                                        num_workers=0),
                      checkpoint_root=str(out / "ckpt"))
    return cfgmod.to_dict(spec)


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_worker_learns_only_the_unmasked_targets(masked_task, tmp_path):
    """Through train_worker, the code path pretraining uses: with the mask the loss over the targets falls
    near zero; the same rows without the mask keep the noise's loss."""
    metrics = MetricsLog(tmp_path / "masked", "test", 80)
    train_worker({"spec": _spec(masked_task, tmp_path / "masked", 80), "progress": metrics})
    masked = _metrics(metrics.path)
    everything = MetricsLog(tmp_path / "all", "test", 80)
    train_worker({"spec": _spec(masked_task, tmp_path / "all", 80, use_mask=False), "progress": everything})
    unmasked = _metrics(everything.path)
    assert [r["step"] for r in masked] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert masked[-1]["loss"] < 0.3, masked[-1]
    assert unmasked[-1]["loss"] > 1.5, unmasked[-1]  # half the targets are noise over 240 tokens


def test_metrics_grow_live_and_hold_the_history_once_after_a_resume(masked_task, tmp_path):
    out = tmp_path / "run"
    seen = []

    class Watching(MetricsLog):  # what a user tailing the file sees after each row
        def _append(self, row):
            super()._append(row)
            seen.append(len(self.path.read_text().splitlines()))

    first = Watching(out, "test", 40)
    train_worker({"spec": _spec(masked_task, out, 40), "progress": first})
    assert seen == [1, 2, 3, 4]
    with first.path.open("a") as f:  # rows a crashed run wrote after its last checkpoint
        f.write(json.dumps({"step": 50, "loss": 9.0}) + "\n")
    again = MetricsLog(out, "test", 60)
    train_worker({"spec": _spec(masked_task, out, 60), "progress": again})
    steps = [r["step"] for r in _metrics(again.path)]
    assert steps == [10, 20, 30, 40, 50, 60]
    # it went on from the step-40 checkpoint (a restart from step 0 would record no resume, and relearn)
    state = json.loads((out / "ckpt" / "checkpoints" / "step_000060" / "state.json").read_text())
    assert state["resumed_from"] == [40], state["resumed_from"]
    assert _metrics(again.path)[4]["loss"] < 9.0  # step 50 is the resumed run's, not the crashed one's
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event files beside metrics.jsonl"


CALLS: list[str] = []


def half_of_the_masked_loss(spec: WorkerSpec, device: torch.device):
    """A stage's own loss (WorkerSpec.loss names this factory): half the next-token loss, so what the
    worker trained on shows in the logged loss."""
    CALLS.append(spec.stage)
    return lambda model, rows, pad_id: 0.5 * loop.loss_on(model, rows, pad_id)


def test_a_stage_brings_its_own_loss_and_val_loss_stays_next_token(masked_task, tmp_path):
    """What a distillation stage needs: the loss the spec names trains the model (the logged training loss
    is its value), while val_loss stays next-token cross-entropy, comparable across stages. Half the
    loss is the same direction, and Adam is blind to scale: the two runs learn alike."""
    def run(out: Path, **extra) -> list[dict]:
        spec = _spec(masked_task, out, 10)
        spec["train"]["log_every"] = 1
        metrics = MetricsLog(out / "metrics", "test", 10)
        train_worker({"spec": {**spec, **extra}, "progress": metrics})
        return _metrics(metrics.path)

    own = run(tmp_path / "own", loss=f"{__name__}:half_of_the_masked_loss", stage="own")
    base = run(tmp_path / "base")
    assert CALLS == ["own"]
    assert own[0]["loss"] == pytest.approx(0.5 * base[0]["loss"], rel=1e-4)  # same model, same first batch
    assert own[-1]["val_loss"] == pytest.approx(base[-1]["val_loss"], rel=0.05)
    assert own[-1]["loss"] < 0.7 * base[-1]["loss"]
