"""Quality filters in the spirit of Gopher (Rae et al. 2021, appendix A) and C4. Pure Python.

Each rule has a name; a rejected document gets reason ``quality:<rule>`` and rejections are counted
per rule in the manifest. Words are whitespace-separated tokens, which works for Korean too (its
words, eojeol, are space-separated); "alphabetic" is ``str.isalpha``, true for Hangul and Latin
alike, so Korean prose passes the same rules as English. Thresholds live in :class:`QualityConfig`.
"""

from __future__ import annotations

import re
from collections import Counter

from lmforge.data.config import QualityConfig

TERMINAL_PUNCT = tuple(".!?…。！？\"'”’)」』")
BULLETS = tuple("•●○■□▪▫◦‣-*–—·")
_LETTER = re.compile(r"[^\W\d_]")  # any letter, in any script (what str.isalpha accepts)


def failed_rule(text: str, cfg: QualityConfig) -> str | None:
    """The name of the first rule ``text`` fails, or None when it passes them all."""
    if not cfg.enabled:
        return None
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "min_words"
    if n > cfg.max_words:
        return "max_words"
    mean_len = sum(map(len, words)) / n
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")  # none of them spans whitespace
    if symbols / n > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if sum(1 for w in words if w.isalpha() or _LETTER.search(w)) / n < cfg.min_alpha_word_fraction:
        return "alpha_words"
    if n >= cfg.repetition_min_words and (rule := _repetition_rule(words, cfg)):
        return rule
    return _line_rule(text, cfg)


def _line_rule(text: str, cfg: QualityConfig) -> str | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < max(1, cfg.line_rules_min_lines):
        return None
    n = len(lines)
    if sum(line.startswith(BULLETS) for line in lines) / n > cfg.max_bullet_line_fraction:
        return "bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) / n > cfg.max_ellipsis_line_fraction:
        return "ellipsis_lines"
    if sum(line.endswith(TERMINAL_PUNCT) for line in lines) / n < cfg.min_punct_line_fraction:
        return "punct_lines"
    counts = Counter(lines)
    dup_lines = sum(c for c in counts.values() if c > 1)
    if dup_lines / n > cfg.max_duplicate_line_fraction:
        return "duplicate_lines"
    dup_chars = sum(len(line) * c for line, c in counts.items() if c > 1)
    if dup_chars / max(1, sum(len(line) for line in lines)) > cfg.max_duplicate_line_char_fraction:
        return "duplicate_line_chars"
    return None


def _repetition_rule(words: list[str], cfg: QualityConfig) -> str | None:
    """Gopher's n-gram repetition: top n-gram share (n=2..4), duplicated n-gram share (n=5, 10).

    A repeated n-gram contains a repeated (n-1)-gram, so once no n-gram repeats, no longer one does and
    every later rule passes: most prose stops at n=3 or 4 and skips the 5- and 10-gram counts."""
    total_chars = sum(map(len, words))
    if total_chars == 0:
        return None
    for n, limit in ((2, cfg.max_top_2gram_fraction), (3, cfg.max_top_3gram_fraction),
                     (4, cfg.max_top_4gram_fraction)):
        if len(words) < n + 1:
            break
        grams = Counter(zip(*(words[i:] for i in range(n))))
        gram, count = grams.most_common(1)[0]
        if count == 1:
            return None
        if sum(len(w) for w in gram) * count / total_chars > limit:
            return f"top_{n}gram"
    for n, limit in ((5, cfg.max_dup_5gram_char_fraction), (10, cfg.max_dup_10gram_char_fraction)):
        if len(words) < 2 * n:
            break
        fraction = _duplicated_ngram_char_fraction(words, n)
        if fraction > limit:
            return f"dup_{n}gram"
        if fraction == 0:  # no repeated n-gram, so no repeated longer one
            return None
    return None


def _duplicated_ngram_char_fraction(words: list[str], n: int) -> float:
    """Share of characters covered by n-grams that occur more than once (each word counted once)."""
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):  # no n-gram repeats: the common case, skip the per-word pass
        return 0.0
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / total
