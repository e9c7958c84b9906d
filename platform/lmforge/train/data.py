"""Reading packed ``prepare`` shards for training: each worker gets a distinct slice of the rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def load_rows(split_dir: str | Path) -> torch.Tensor:
    """All packed rows of one split as a ``[N, seq_len]`` int64 tensor (empty if the split is)."""
    files = sorted(Path(split_dir).glob("*.parquet"))
    if not files:
        return torch.zeros((0, 0), dtype=torch.long)
    col = pq.read_table(files, columns=["input_ids"]).column("input_ids").combine_chunks()
    values = col.values.to_numpy(zero_copy_only=False)
    return torch.from_numpy(values.astype(np.int64).reshape(len(col), -1))


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"data: {data_dir} is not a prepare output (no manifest.json)")
    return json.loads(path.read_text())


def shard(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Worker ``rank``'s rows: every ``world_size``-th row, so workers never share data."""
    return rows[rank::world_size]


def batches(rows: torch.Tensor, batch_size: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
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
