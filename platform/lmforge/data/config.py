"""Config of the ``prepare`` stage (see DESIGN.md for the keys other stages rely on)."""

from __future__ import annotations

import dataclasses

from lmforge.cluster.session import RayConfig
from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class TokenizerConfig:
    vocab_size: int = 8192
    min_frequency: int = 2
    sample_chars: int = 50_000_000  # the tokenizer trains on at most this much kept text

    def __post_init__(self):
        check(self.vocab_size >= 300, "tokenizer.vocab_size", "must be >= 300 (256 bytes + specials)")
        check(self.min_frequency >= 1, "tokenizer.min_frequency", "must be >= 1")
        check(self.sample_chars > 0, "tokenizer.sample_chars", "must be > 0")


@dataclasses.dataclass(kw_only=True)
class PackConfig:
    seq_len: int = 256
    val_fraction: float = 0.05  # of documents (the split is by document id, never inside one)
    batch_size: int = 1024  # documents tokenized and packed together in one map_batches call

    def __post_init__(self):
        check(self.seq_len >= 8, "pack.seq_len", "must be >= 8")
        check(0.0 <= self.val_fraction < 1.0, "pack.val_fraction", "must be in [0, 1)")
        check(self.batch_size >= 1, "pack.batch_size", "must be >= 1")


@dataclasses.dataclass(kw_only=True)
class PrepareConfig:
    inputs: list[str]  # local paths, directories, globs, pkg://package/path
    output: str
    text_field: str = "text"
    id_field: str = "id"
    max_doc_bytes: int = 1_000_000  # larger records are quarantined, not tokenized
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    pack: PackConfig = dataclasses.field(default_factory=PackConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    force: bool = False  # re-run even when output holds a finished run of the same config

    def __post_init__(self):
        check(len(self.inputs) > 0, "inputs", "needs at least one path, glob or URI")
        check(bool(self.output), "output", "must be a directory path")
        check(self.max_doc_bytes > 0, "max_doc_bytes", "must be > 0")
