"""Config of the ``prepare`` stage: every key of ``lmforge prepare`` (see ``lmforge prepare --help``)."""

from __future__ import annotations

import dataclasses

from lmforge.config import check
from lmforge.stages import StageConfig, UsesRay


@dataclasses.dataclass(kw_only=True)
class QualityConfig:
    """Gopher / C4 quality rules; a document failing one is dropped as ``quality:<rule>``."""

    enabled: bool = True  # false keeps every non-empty document
    min_words: int = 5  # fewer whitespace-separated words: dropped
    max_words: int = 100_000  # more words: dropped
    min_mean_word_length: float = 2.0  # characters per word; Gopher uses 3 for English, Korean eojeol are ~3.5
    max_mean_word_length: float = 12.0  # characters per word
    max_symbol_ratio: float = 0.1  # '#' and ellipses per word
    min_alpha_word_fraction: float = 0.7  # words with at least one letter, any script (Gopher: 0.8)
    max_bullet_line_fraction: float = 0.9  # lines starting with a bullet
    max_ellipsis_line_fraction: float = 0.3  # lines ending with an ellipsis
    max_duplicate_line_fraction: float = 0.3  # lines that repeat an earlier line
    max_duplicate_line_char_fraction: float = 0.2  # characters in repeated lines
    max_top_2gram_fraction: float = 0.2  # characters covered by the most frequent word 2-gram
    max_top_3gram_fraction: float = 0.18  # same, 3-grams
    max_top_4gram_fraction: float = 0.16  # same, 4-grams
    max_dup_5gram_char_fraction: float = 0.15  # characters in word 5-grams that occur more than once
    max_dup_10gram_char_fraction: float = 0.10  # same, 10-grams
    min_punct_line_fraction: float = 0.0  # C4-style: share of lines ending in terminal punctuation
    # repetition rules apply from this many words (Gopher scored documents of 50+; short texts are noise)
    repetition_min_words: int = 100
    line_rules_min_lines: int = 3  # line rules apply from this many lines

    def __post_init__(self):
        check(self.min_words >= 0 and self.max_words > self.min_words, "min_words", "need 0 <= min < max_words")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "fraction" in f.name or "ratio" in f.name:
                check(0.0 <= value <= 1.0, f.name, "must be in [0, 1]")


@dataclasses.dataclass(kw_only=True)
class TokenizerConfig:
    # an HF model dir (an `lmforge import` output; "{import}" in a recipe): pack with that model's tokenizer
    # instead of training one, so `pretrain model.init_from=` that model continues its pretraining on this
    # corpus (documents end with its eos token); the three keys below are then unused
    from_model: str | None = None
    vocab_size: int = 8192  # byte-level BPE vocabulary, special tokens included
    min_frequency: int = 2  # a merge needs at least this many occurrences
    sample_chars: int = 50_000_000  # the tokenizer trains on at most this much kept text

    def __post_init__(self):
        check(self.vocab_size >= 300, "vocab_size", "must be >= 300 (256 bytes + specials)")
        check(self.min_frequency >= 1, "min_frequency", "must be >= 1")
        check(self.sample_chars > 0, "sample_chars", "must be > 0")


@dataclasses.dataclass(kw_only=True)
class PackConfig:
    seq_len: int = 256  # tokens per packed row (the model's context in pretraining)
    val_fraction: float = 0.05  # of documents (the split is by document id, never inside one)
    batch_size: int = 1024  # documents tokenized and packed together in one map_batches call

    def __post_init__(self):
        check(self.seq_len >= 8, "seq_len", "must be >= 8")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclasses.dataclass(kw_only=True)
class DedupConfig:
    exact: bool = True  # drop documents whose canonical text (case-folded, spaces collapsed) repeats
    near: bool = True  # MinHash + LSH near-duplicate removal
    near_threshold: float = 0.75  # estimated Jaccard of character shingles to count as a copy
    ngram: int = 4  # character shingle length (why 4 and 0.75: lmforge.data.dedup's docstring)
    bands: int = 24  # LSH bands; bands x rows = MinHash permutations (24 x 5 pairs J=0.75 with p=0.998)
    rows: int = 5  # MinHash values per LSH band
    seed: int = 1  # of the MinHash permutations

    def __post_init__(self):
        check(0.0 < self.near_threshold <= 1.0, "near_threshold", "must be in (0, 1]")
        check(self.ngram >= 1, "ngram", "must be >= 1")
        check(self.bands >= 1 and self.rows >= 1, "bands", "bands and rows must be >= 1")


@dataclasses.dataclass(kw_only=True)
class PiiConfig:
    enabled: bool = True  # replace emails, phones, cards, IPs, RRNs, SSNs, secrets with <TYPE>


@dataclasses.dataclass(kw_only=True)
class CanaryConfig:
    """Random secrets planted for the privacy audit (``lmforge eval`` task ``canary``)."""

    count: int = 0  # secrets to plant (e-mails, phone numbers, resident registration numbers, API keys); 0: none
    copies: int = 10  # documents each one goes into, about
    seed: int = 0  # of the secrets and their codenames

    def __post_init__(self):
        check(self.count >= 0, "count", "must be >= 0")
        check(self.copies >= 1, "copies", "must be >= 1")


@dataclasses.dataclass(kw_only=True)
class PrepareConfig(UsesRay, StageConfig):
    """output: the prepared dataset (documents/, rejected/, tokenizer/, train/, val/, manifest.json,
    report.md; the README's "Artifacts" has the layout)."""

    inputs: list[str]  # local paths, directories, globs, s3://bucket/prefix (or glob), pkg://package/path
    text_field: str = "text"  # JSONL / parquet / Arrow field holding the text (.txt: one document per line)
    # the splits read from a Hugging Face `datasets` DatasetDict dir (save_to_disk) among the inputs
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train", "validation"])
    id_field: str = "id"  # field holding a document id; default id: <file name>:<line number>
    max_doc_bytes: int = 1_000_000  # larger records are quarantined, not tokenized
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    pii: PiiConfig = dataclasses.field(default_factory=PiiConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    pack: PackConfig = dataclasses.field(default_factory=PackConfig)
    canaries: CanaryConfig = dataclasses.field(default_factory=CanaryConfig)
    # keep only documents in these languages (codes of lmforge.data.language's model: ko, en, ja, zh, ...;
    # und: no language found); others are dropped as language:<code>. Empty: every language is kept.
    # Every document's language and score are in documents/ and rejected/, counted in the report.
    languages: list[str] = dataclasses.field(default_factory=list)
    language_min_score: float = 0.4  # a top score under this makes a document's language `und`
    # built-in eval tasks (or groups: standard) whose held-out examples no kept document may share a 13-word
    # sequence with; such a document is dropped as contaminated:<task>, so those evaluations stay clean
    decontaminate: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        check(len(self.inputs) > 0, "inputs", "needs at least one path, glob or URI")
        if self.decontaminate:
            from lmforge.tasks.builtin import GROUPS, TASKS

            unknown = [t for t in self.decontaminate if t not in TASKS and t not in GROUPS]
            check(not unknown, "decontaminate", f"unknown tasks {unknown} (built-in: {', '.join(TASKS)})")
        check(self.max_doc_bytes > 0, "max_doc_bytes", "must be > 0")
        check(0.0 <= self.language_min_score <= 1.0, "language_min_score", "must be in [0, 1]")
        if self.languages:
            from lmforge.data.language import known_codes

            known = known_codes()
            unknown = sorted(set(self.languages) - known)
            check(not unknown, "languages", f"unknown language codes {unknown} (ISO 639-1 such as ko, en, ja, zh; "
                  f"the detector knows {len(known) - 1}; und: none found)")
