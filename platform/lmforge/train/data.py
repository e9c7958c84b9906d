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


def batches(rows: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled micro-batches, reshuffled each epoch with a seeded generator."""
    if len(rows) < batch_size:
        raise ValueError(f"only {len(rows)} training rows on this worker, fewer than one micro-batch "
                         f"of {batch_size}: lower train.micro_batch_size or add data")
    gen, epoch = torch.Generator(), 0
    while True:
        gen.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(rows), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield rows[order[i : i + batch_size]]
        epoch += 1
