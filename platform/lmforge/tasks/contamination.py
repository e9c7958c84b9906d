"""Test-set contamination: which evaluation examples share a long word n-gram with a training text.

The rule is the GPT-3 paper's and lm-evaluation-harness's decontamination: lowercase, split into words
(here ``\\w+``, so Korean and other scripts count too), and call an example contaminated when any of its
13-word sequences also occurs in a training document. An example's text is its prompt, references and
choices. One refinement: an n-gram found in two or more otherwise different test examples of a task is
boilerplate, not a test passage ("subscribe to the BBC Sport newsletter to get our pick of news features
and ..." ends many XSum articles), and is not counted; examples that share most of their text (BoolQ asks
several questions about one passage) are one passage, not boilerplate. A planted passage still matches on
its own n-grams.
``prepare ... decontaminate=[tasks]`` drops the documents that would contaminate those tasks'
held-out examples (reason ``contaminated:<task>``); ``eval`` counts the held-out examples that a model's
training corpus contains. Pure Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lmforge.tasks.examples import Example

NGRAM = 13
SAME_PASSAGE = 0.5  # two examples sharing more than this share of their n-grams (Jaccard) are one passage
_WORD = re.compile(r"\w+", re.UNICODE)


def ngrams(text: str, n: int = NGRAM) -> set[str]:
    """The text's word n-grams, normalised (lowercase words joined by one space); a text shorter than n
    words is one n-gram of itself only when it has n words, else none (too short to match by chance)."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def example_text(ex: Example) -> str:
    parts = [ex.prompt or "", *ex.references(), *(ex.choices or [])]
    parts += [m["content"] for m in ex.messages or []]
    return "\n".join(parts)


class TestIndex:
    """The n-grams of evaluation examples, each pointing to the (task, example id) pairs that have it."""

    def __init__(self, tasks: dict[str, list[Example]], n: int = NGRAM):
        self.n, self.examples = n, {task: len(examples) for task, examples in tasks.items()}
        self.grams: dict[str, list[tuple[str, str]]] = {}
        of: dict[tuple[str, str], set[str]] = {}
        for task, examples in tasks.items():
            for ex in examples:
                of[(task, ex.id)] = ngrams(example_text(ex), n)
                for gram in of[(task, ex.id)]:
                    self.grams.setdefault(gram, []).append((task, ex.id))
        self.boilerplate = {g for g, pairs in self.grams.items() if len(pairs) > 1 and _boilerplate(pairs, of)}
        for gram in self.boilerplate:
            del self.grams[gram]

    def hits(self, text: str) -> list[tuple[str, str]]:
        """The (task, example id) pairs sharing an n-gram with ``text``, in task order, each once."""
        found = {pair for gram in ngrams(text, self.n) for pair in self.grams.get(gram, ())}
        order = list(self.examples)
        return sorted(found, key=lambda p: (order.index(p[0]), p[1]))

    def first_task(self, text: str) -> str | None:
        """The first task (in the order given) one of whose examples ``text`` contains; None if none."""
        hits = self.hits(text)
        return hits[0][0] if hits else None

    def contaminated(self, texts: Iterable[str]) -> dict[str, set[str]]:
        """``{task: ids of its examples that share an n-gram with any of the texts}``."""
        out: dict[str, set[str]] = {task: set() for task in self.examples}
        for text in texts:
            for task, ex_id in self.hits(text):
                out[task].add(ex_id)
        return out


def _boilerplate(pairs: list[tuple[str, str]], of: dict[tuple[str, str], set[str]]) -> bool:
    """Whether examples of one task that share an n-gram are different passages (Jaccard of their n-grams
    at most :data:`SAME_PASSAGE`)."""
    for i, a in enumerate(pairs):
        for b in pairs[i + 1:]:
            if a[0] == b[0]:
                x, y = of[a], of[b]
                if len(x & y) <= SAME_PASSAGE * len(x | y):
                    return True
    return False
