"""Config of the ``prepare`` stage (see DESIGN.md for the keys other stages rely on)."""

from __future__ import annotations

import dataclasses

from lmforge.cluster.session import RayConfig
from lmforge.config import check
from lmforge.data.quality import QualityConfig


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
class DedupConfig:
    exact: bool = True  # drop documents whose canonical text (case-folded, spaces collapsed) repeats
    near: bool = True  # MinHash + LSH near-duplicate removal
    near_threshold: float = 0.75  # estimated Jaccard of character shingles to count as a copy
    ngram: int = 4  # character shingle length (why 4 and 0.75: lmforge.data.dedup's docstring)
    bands: int = 24  # LSH bands x rows = MinHash permutations; 24 x 5 pairs J=0.75 with p=0.998
    rows: int = 5
    seed: int = 1

    def __post_init__(self):
        check(0.0 < self.near_threshold <= 1.0, "near_threshold", "must be in (0, 1]")
        check(self.ngram >= 1, "ngram", "must be >= 1")
        check(self.bands >= 1 and self.rows >= 1, "bands", "bands and rows must be >= 1")


@dataclasses.dataclass(kw_only=True)
class PiiConfig:
    enabled: bool = True  # replace emails, phones, cards, IPs, RRNs, SSNs, secrets with <TYPE>


@dataclasses.dataclass(kw_only=True)
class PrepareConfig:
    inputs: list[str]  # local paths, directories, globs, s3://bucket/prefix (or glob), pkg://package/path
    output: str
    text_field: str = "text"
    id_field: str = "id"
    max_doc_bytes: int = 1_000_000  # larger records are quarantined, not tokenized
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    pii: PiiConfig = dataclasses.field(default_factory=PiiConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    pack: PackConfig = dataclasses.field(default_factory=PackConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    force: bool = False  # re-run even when output holds a finished run of the same config

    def __post_init__(self):
        check(len(self.inputs) > 0, "inputs", "needs at least one path, glob or URI")
        check(bool(self.output), "output", "must be a directory path")
        check(self.max_doc_bytes > 0, "max_doc_bytes", "must be > 0")
