"""What a task is made of: examples, and the held-out split that training never sees. Pure Python."""

from __future__ import annotations

import dataclasses
import hashlib

HELD_OUT_FRACTION = 0.2  # of every built-in task's examples, by a hash of their id


@dataclasses.dataclass
class Example:
    id: str
    prompt: str | None = None  # generation and multiple choice: the text the model continues
    reference: str | list[str] | None = None  # the expected output (several when any of them counts)
    messages: list[dict] | None = None  # chat: the conversation; the last assistant turn is the reference
    choices: list[str] | None = None  # multiple choice: continuations, scored by log-likelihood
    answer: int | None = None  # the index of the correct choice
    category: str | None = None  # bias audits: the kind of bias the pair probes
    pair: tuple[str, str] | None = None  # bias audits: (stereotyped, anti-stereotyped) continuations
    context: str = ""  # bias audits: text both continuations follow

    def references(self) -> list[str]:
        if self.reference is None:
            return []
        return [self.reference] if isinstance(self.reference, str) else list(self.reference)


def split_of(example_id: str) -> str:
    """``"test"`` (held out) or ``"train"``, from a stable hash of the example's id."""
    h = int.from_bytes(hashlib.blake2b(example_id.encode("utf-8"), digest_size=8, person=b"lmforge-task").digest(),
                       "big")
    return "test" if h / 2**64 < HELD_OUT_FRACTION else "train"


def take(examples: list[Example], split: str, limit: int | None = None) -> list[Example]:
    """The examples of one split (``train``, ``test`` or ``all``), at most ``limit``, in a stable order."""
    chosen = [e for e in examples if split == "all" or split_of(e.id) == split]
    return chosen[:limit] if limit else chosen
