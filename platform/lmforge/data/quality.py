"""Quality filters in the spirit of Gopher (Rae et al. 2021, appendix A) and C4. Pure Python.

Each rule has a name; a rejected document gets reason ``quality:<rule>`` and rejections are counted
per rule in the manifest. Words are whitespace-separated tokens, which works for Korean too (its
words, eojeol, are space-separated); "alphabetic" is ``str.isalpha``, true for Hangul and Latin
alike, so Korean prose passes the same rules as English. Thresholds live in :class:`QualityConfig`.

Chinese, Japanese and the other scripts written without spaces (:data:`lmforge.data.language.NO_SPACES`,
by the document's detected language) have no words to split on: there each CJK, kana or other
character of those scripts counts as one word and a run of anything else between spaces as one (the
unit Gopher's rules were tuned on is a word of ~5 characters; a Chinese character is about a word, a
Japanese one a little less), and the mean-word-length rule, which measures space-separated words, does
not run. Without that, 32 of 60 clean Japanese and 26 of 60 Chinese paragraphs were dropped as
``mean_word_length`` or ``min_words``.
"""

from __future__ import annotations

import re
from collections import Counter

from lmforge.data.config import QualityConfig
from lmforge.data.language import NO_SPACES

CHARS_PER_WORD = 3  # for the repetition rules of scripts without spaces: a word is about this many characters
TERMINAL_PUNCT = tuple(".!?…。！？\"'”’)」』")
BULLETS = tuple("•●○■□▪▫◦‣-*–—·")
_LETTER = re.compile(r"[^\W\d_]")  # any letter, in any script (what str.isalpha accepts)
# one unit per character of a script written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar,
# Tibetan), else a run of other non-space characters
_NO_SPACE_CHAR = ("\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, Han
                  "\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f\u0f00-\u0fff")  # Thai, Lao, Khmer, Myanmar, Tibetan
_UNITS = re.compile(f"[{_NO_SPACE_CHAR}]|[^\\s{_NO_SPACE_CHAR}]+")
_NO_SPACE_RUN = re.compile(f"[{_NO_SPACE_CHAR}]")


def without_spaces(text: str, language: str | None) -> bool:
    """Whether ``text`` is written without spaces between words: its detected language says so, or most
    of its letters are of such scripts (a detector can misname a short or repetitive text)."""
    if language in NO_SPACES:
        return True
    head = text[:2000]
    if not _NO_SPACE_RUN.search(head):  # most documents: no such character at all, found in one C-level scan
        return False
    return len(_NO_SPACE_RUN.findall(head)) > 0.5 * max(1, len(_LETTER.findall(head)))


def words_of(text: str, no_spaces: bool) -> list[str]:
    """The units the word rules count: whitespace-separated words, or for a script written without
    spaces, its characters (see the module docstring)."""
    return _UNITS.findall(text) if no_spaces else text.split()


def failed_rule(text: str, cfg: QualityConfig, language: str | None = None) -> str | None:
    """The name of the first rule ``text`` (in ``language``, when known) fails, or None when it passes them all."""
    if not cfg.enabled:
        return None
    no_spaces = without_spaces(text, language)
    words = words_of(text, no_spaces)
    n = len(words)
    if n < cfg.min_words:
        return "min_words"
    if n > cfg.max_words:
        return "max_words"
    mean_len = sum(map(len, words)) / n
    if not no_spaces and not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")  # none of them spans whitespace
    if symbols / n > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if sum(1 for w in words if w.isalpha() or _LETTER.search(w)) / n < cfg.min_alpha_word_fraction:
        return "alpha_words"
    scale = CHARS_PER_WORD if no_spaces else 1  # n-grams of characters stand for shorter ones of words
    if n >= cfg.repetition_min_words * scale and (rule := _repetition_rule(words, cfg, scale)):
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


def _repetition_rule(words: list[str], cfg: QualityConfig, scale: int = 1) -> str | None:
    """Gopher's n-gram repetition: top n-gram share (n=2..4), duplicated n-gram share (n=5, 10); with
    ``scale``, n-grams ``scale`` times longer (units that are characters, not words).

    A repeated n-gram contains a repeated (n-1)-gram, so once no n-gram repeats, no longer one does and
    every later rule passes: most prose stops at n=3 or 4 and skips the 5- and 10-gram counts."""
    total_chars = sum(map(len, words))
    if total_chars == 0:
        return None
    for rule_n, limit in ((2, cfg.max_top_2gram_fraction), (3, cfg.max_top_3gram_fraction),
                          (4, cfg.max_top_4gram_fraction)):
        n = rule_n * scale
        if len(words) < n + 1:
            break
        grams = Counter(zip(*(words[i:] for i in range(n))))
        gram, count = grams.most_common(1)[0]
        if count == 1:
            return None
        if sum(len(w) for w in gram) * count / total_chars > limit:
            return f"top_{rule_n}gram"
    for rule_n, limit in ((5, cfg.max_dup_5gram_char_fraction), (10, cfg.max_dup_10gram_char_fraction)):
        n = rule_n * scale
        if len(words) < 2 * n:
            break
        fraction = _duplicated_ngram_char_fraction(words, n)
        if fraction > limit:
            return f"dup_{rule_n}gram"
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
