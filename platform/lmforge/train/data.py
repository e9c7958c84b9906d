"""Token rows for training: ``input_ids`` plus an optional ``loss_mask``, sharded and batched per worker.

A rows dir holds parquet parts with ``input_ids`` (each row exactly ``seq_len`` ids) and, optionally,
``loss_mask`` (1 where a token is a training target, 0 where it is context only: a fine-tuning prompt).
Pretraining reads ``prepare``'s packed ``train/`` and ``val/``; fine-tuning writes its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


@dataclasses.dataclass
class Rows:
    """``input_ids`` ``[N, T]`` and an optional ``loss_mask`` of the same shape (1 = a target token)."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index) -> Rows:
        return Rows(self.input_ids[index], None if self.loss_mask is None else self.loss_mask[index])

    def trimmed(self) -> Rows:
        """Without the columns after the last target of any row: fine-tuning rows are right-padded to
        ``max_seq_len``, and a causal model's loss on the targets never reads what comes after them (a batch of
        short answers then costs its own length, not the longest allowed)."""
        if self.loss_mask is None:
            return self
        targets = self.loss_mask.any(dim=0).nonzero()
        end = int(targets[-1]) + 1 if len(targets) else self.input_ids.shape[1]
        return self if end == self.input_ids.shape[1] else Rows(self.input_ids[:, :end], self.loss_mask[:, :end])

    def to(self, device: torch.device) -> Rows:
        mask = None if self.loss_mask is None else self.loss_mask.to(device, non_blocking=True)
        return Rows(self.input_ids.to(device, non_blocking=True), mask)


def _column(table, name: str, dtype) -> torch.Tensor:
    col = table.column(name).combine_chunks()
    values = col.values.to_numpy(zero_copy_only=False)
    return torch.from_numpy(values.astype(dtype).reshape(len(col), -1))


def load_rows(split_dir: str | Path) -> Rows:
    """Every row of one rows dir (empty ``[0, 0]`` when it has none)."""
    files = sorted(Path(split_dir).glob("*.parquet"))
    if not files:
        return Rows(torch.zeros((0, 0), dtype=torch.long))
    names = pq.read_schema(files[0]).names
    table = pq.read_table(files, columns=[c for c in ("input_ids", "loss_mask") if c in names])
    if table.num_rows == 0:
        return Rows(torch.zeros((0, 0), dtype=torch.long))
    mask = _column(table, "loss_mask", np.int64) if "loss_mask" in names else None
    return Rows(_column(table, "input_ids", np.int64), mask)


def shard(rows: Rows, rank: int, world_size: int) -> Rows:
    """Worker ``rank``'s rows: every ``world_size``-th row, so workers never share data."""
    return rows[rank::world_size]


def batches(rows: Rows, batch_size: int, seed: int, start: int = 0) -> Iterator[Rows]:
    """Endless shuffled micro-batches, reshuffled each epoch with a seeded generator.

    ``start`` skips that many micro-batches without touching them: the data position of a resumed run,
    which therefore neither repeats nor skips data.
    """
    if len(rows) < batch_size:
        raise ValueError(f"only {len(rows)} training rows on this worker, fewer than one micro-batch "
                         f"of {batch_size}: lower train.micro_batch_size or add data")
    per_epoch = len(rows) // batch_size
    epoch, offset = divmod(start, per_epoch)
    gen = torch.Generator()
    while True:
        gen.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(rows), generator=gen)
        for i in range(offset * batch_size, per_epoch * batch_size, batch_size):
            yield rows[order[i : i + batch_size]]
        epoch, offset = epoch + 1, 0
