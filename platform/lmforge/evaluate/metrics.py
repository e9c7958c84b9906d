"""Evaluation metrics over predictions and references; no model, no Ray.

BLEU and chrF are sacrebleu's (corpus level); ROUGE is ``rouge-score``'s with a tokenizer that keeps every
script (its default one keeps ``[a-z0-9]`` only, so Korean would score 0); multiple choice is scored as
lm-evaluation-harness does (``acc``; ``acc_norm`` on log-likelihood per character), with macro F1 over
the choices as classes; exact match and token F1 follow SQuAD's normalization (lowercase, no
punctuation or articles), best over the references. Scores are percentages, except acc/acc_norm (a
share) and perplexity. Each metric also comes per example (or as per-example statistics) for its
bootstrap interval (:mod:`.intervals`).
"""

from __future__ import annotations

import collections
import math
import re
import string

_WORD = re.compile(r"\w+", re.UNICODE)


class ScriptTokenizer:
    """Lowercased word tokens of any script (``rouge-score`` calls ``tokenize``)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


def rouge_per_example(predictions: list[str], references: list[list[str]],
                      kinds=("rouge1", "rouge2", "rougeL")) -> dict[str, list[float]]:
    """ROUGE F-measure (x100) of each prediction against its best reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(kinds), tokenizer=ScriptTokenizer())
    out: dict[str, list[float]] = {kind: [] for kind in kinds}
    for pred, refs in zip(predictions, references):
        scores = [scorer.score(ref, pred) for ref in refs]
        for kind in kinds:
            out[kind].append(100 * max(s[kind].fmeasure for s in scores))
    return out


def rouge(predictions: list[str], references: list[list[str]], kinds=("rouge1", "rouge2", "rougeL")) -> dict:
    """Mean ROUGE F-measure (x100), each prediction against its best reference."""
    per = rouge_per_example(predictions, references, kinds)
    return {kind: sum(v) / max(1, len(v)) for kind, v in per.items()}


def _streams(references: list[list[str]]) -> list[list[str]]:
    width = max(len(r) for r in references)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


def _sacrebleu_metrics(korean_target: bool):
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(tokenize="char" if korean_target else "13a"), "chrf": CHRF()}


def sacrebleu_stats(predictions: list[str], references: list[list[str]], korean_target: bool = False) -> dict:
    """Per sentence, sacrebleu's sufficient statistics (n-gram matches and lengths) of BLEU and chrF, and
    the function from their sum to the corpus score: what a bootstrap over sentences resamples. Korean
    targets are tokenized by character for BLEU (no word boundaries to trust), as sacrebleu's ``char``."""
    streams = _streams(references)
    out = {}
    for name, m in _sacrebleu_metrics(korean_target).items():
        stats = m._extract_corpus_statistics(predictions, streams)  # the sums corpus_score itself takes

        def from_stats(summed, m=m, counts=name == "bleu"):  # BLEU's statistics are integer counts
            return [float(m._compute_score_from_stats([int(round(x)) if counts else x for x in row]).score)
                    for row in summed]

        out[name] = (stats, from_stats)
    return out


def sacrebleu_scores(predictions: list[str], references: list[list[str]], korean_target: bool = False) -> dict:
    """Corpus BLEU and chrF, from the per-sentence statistics their intervals resample."""
    return {name: from_stats([[sum(col) for col in zip(*stats)]])[0]
            for name, (stats, from_stats) in sacrebleu_stats(predictions, references, korean_target).items()}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, drop punctuation and English articles, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: list[str]) -> float:
    def f1(pred: str, ref: str) -> float:
        p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
        common = sum((collections.Counter(p) & collections.Counter(r)).values())
        if not p or not r:
            return float(p == r)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(r)
        return 2 * precision * recall / (precision + recall)

    return max(f1(prediction, r) for r in references)


def qa_scores(predictions: list[str], references: list[list[str]]) -> dict:
    n = max(1, len(predictions))
    return {"exact_match": 100 * sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
            "f1": 100 * sum(token_f1(p, r) for p, r in zip(predictions, references)) / n}


def class_counts(predicted: list[int], gold: list[int], classes: int) -> list[list[int]]:
    """Per example, one-hot true-positive, false-positive and false-negative counts of every class."""
    rows = []
    for p, g in zip(predicted, gold):
        row = [0] * (3 * classes)
        if p == g:
            row[3 * g] = 1
        else:
            row[3 * p + 1], row[3 * g + 2] = 1, 1
        rows.append(row)
    return rows


def macro_f1(summed) -> list[float]:
    """Macro F1 (x100, over the classes that occur) from summed :func:`class_counts` rows."""
    out = []
    for row in summed:
        f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in zip(row[0::3], row[1::3], row[2::3]) if tp + fp + fn]
        out.append(100 * float(sum(f1s)) / max(1, len(f1s)))
    return out


def perplexity(total_logprob: float, tokens: int) -> float:
    return math.exp(-total_logprob / max(1, tokens))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a proportion (Wilson score: sane at 0, 1 and small n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def exposure(rank: int, candidates: int) -> float:
    """Carlini et al.'s exposure of a secret ranked ``rank`` (1 = most likely) among ``candidates``."""
    return math.log2(candidates) - math.log2(rank)
