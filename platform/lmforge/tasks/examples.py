"""What a task is made of: examples, and the held-out split that training never sees. Pure Python."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

HELD_OUT_FRACTION = 0.2  # of every built-in task's examples, by a hash of their id


@dataclasses.dataclass
class Example:
    id: str
    prompt: str | None = None  # generation and multiple choice: the text the model continues
    reference: str | list[str] | None = None  # the expected output (several when any of them counts)
    messages: list[dict] | None = None  # chat: the conversation; the last assistant turn is the reference
    # multiple choice: the choices as lm-evaluation-harness's doc_to_choice gives them, each scored by the
    # log-likelihood of (target delimiter + choice) after the prompt
    choices: list[str] | None = None
    answer: int | None = None  # the index of the correct choice
    category: str | None = None  # bias audits: the kind of bias the pair probes
    pair: tuple[str, str] | None = None  # bias audits: (stereotyped, anti-stereotyped) continuations
    context: str = ""  # bias audits: text both continuations follow

    def target(self) -> str:
        """What a few-shot example shows after its prompt: the gold choice, or the first reference."""
        return self.choices[self.answer] if self.choices else self.references()[0]

    def references(self) -> list[str]:
        if self.reference is None:
            return []
        return [self.reference] if isinstance(self.reference, str) else list(self.reference)


@dataclasses.dataclass(frozen=True)
class TaskDef:
    """A built-in task: where its examples come from and how they are scored."""

    name: str
    kind: str  # generate | choice | bias
    metrics: tuple[str, ...]
    load: Callable[[], list[Example]]
    max_tokens: int = 64  # generation tasks: new tokens per example
    stop: tuple[str, ...] = ("\n",)
    description: str = ""  # text before the shots and the prompt (MMLU's "The following are ...")
    target_delimiter: str = " "  # between a prompt and its answer (lm-evaluation-harness's default)
    source: str = ""  # where the data comes from, for the report


def split_of(example_id: str) -> str:
    """``"test"`` (held out) or ``"train"``, from a stable hash of the example's id."""
    h = int.from_bytes(hashlib.blake2b(example_id.encode("utf-8"), digest_size=8, person=b"lmforge-task").digest(),
                       "big")
    return "test" if h / 2**64 < HELD_OUT_FRACTION else "train"


def take(examples: list[Example], split: str, limit: int | None = None) -> list[Example]:
    """The examples of one split (``train``, ``test`` or ``all``), at most ``limit``, in a stable order."""
    chosen = [e for e in examples if split == "all" or split_of(e.id) == split]
    return chosen[:limit] if limit else chosen
