"""Evaluation metrics over predictions and references; no model, no Ray.

BLEU and chrF are sacrebleu's (corpus level); ROUGE is ``rouge-score``'s with a tokenizer that keeps every
script (its default one keeps ``[a-z0-9]`` only, so Korean would score 0); accuracy and F1 are
scikit-learn's; exact match and token F1 follow SQuAD's normalization (lowercase, no punctuation or
articles), best over the references. Scores are percentages, except accuracy (a share) and perplexity.
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


def rouge(predictions: list[str], references: list[list[str]], kinds=("rouge1", "rouge2", "rougeL")) -> dict:
    """Mean ROUGE F-measure (x100), each prediction against its best reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(kinds), tokenizer=ScriptTokenizer())
    totals = dict.fromkeys(kinds, 0.0)
    for pred, refs in zip(predictions, references):
        scores = [scorer.score(ref, pred) for ref in refs]
        for kind in kinds:
            totals[kind] += max(s[kind].fmeasure for s in scores)
    return {kind: 100 * total / max(1, len(predictions)) for kind, total in totals.items()}


def sacrebleu_scores(predictions: list[str], references: list[list[str]], korean_target: bool = False) -> dict:
    """Corpus BLEU and chrF; Korean targets are tokenized by character for BLEU (no word boundaries to
    trust), as sacrebleu's own ``char`` tokenizer does."""
    import sacrebleu

    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(predictions, streams, tokenize="char" if korean_target else "13a")
    chrf = sacrebleu.corpus_chrf(predictions, streams)
    return {"bleu": bleu.score, "chrf": chrf.score}


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


def classification_scores(predicted: list[int], gold: list[int]) -> dict:
    """Accuracy and F1 (of the first class, "yes", in binary tasks; macro otherwise)."""
    from sklearn.metrics import accuracy_score, f1_score

    binary = set(gold) | set(predicted) <= {0, 1}
    f1 = f1_score(gold, predicted, pos_label=0, average="binary") if binary else f1_score(gold, predicted,
                                                                                          average="macro")
    return {"accuracy": float(accuracy_score(gold, predicted)), "f1": 100 * float(f1)}


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
