"""Cleaning (HTML, control characters, Unicode) and quality rules, which Korean prose must pass."""

import json
from pathlib import Path

from lmforge import storage
from lmforge.data import clean, quality

KOREAN_SAMPLE = Path(storage.package_path("pkg://lmforge/samples/ko_help.jsonl"))


def test_html_to_text_keeps_visible_text_only():
    page = ("<html><head><title>T</title><style>p{color:red}</style></head><body>"
            "<h1>Seoul</h1><p>The capital &amp; largest city.</p><script>alert(1)</script>"
            "<ul><li>한강</li><li>남산</li></ul></body></html>")
    assert clean.clean(page) == "Seoul\n\nThe capital & largest city.\n\n한강\n\n남산"


def test_plain_text_with_angle_brackets_and_ampersands_is_not_parsed_as_html():
    assert clean.clean("if a < b and c > d: R&D &amp; more") == "if a < b and c > d: R&D & more"


def test_control_and_invisible_characters_removed():
    assert clean.clean("ab\x00c\u200bd\x07e\tf\ufeff") == "abcde f"


def test_korean_prose_passes_every_rule():
    cfg = quality.QualityConfig()
    texts = [json.loads(line)["text"] for line in KOREAN_SAMPLE.read_text().splitlines()]
    failed = [t for t in texts if quality.failed_rule(clean.clean(t), cfg)]
    assert len(failed) / len(texts) < 0.01


def test_each_rule_rejects_what_it_names():
    cfg = quality.QualityConfig(min_words=5, repetition_min_words=20)
    prose = "The river flows past the old mill and into the valley below the town. " * 1
    assert quality.failed_rule(prose, cfg) is None
    assert quality.failed_rule("too short", cfg) == "min_words"
    assert quality.failed_rule("a b c d e f g h", cfg) == "mean_word_length"
    assert quality.failed_rule("#seoul #busan #jeju #daegu river mountain valley", cfg) == "symbol_ratio"
    assert quality.failed_rule("12 34 56 78 90 11 22 33 word", cfg) == "alpha_words"
    spam = " ".join(["buy cheap watches now"] * 10)
    assert quality.failed_rule(spam, cfg).startswith(("top_", "dup_"))
    lines = "\n".join(["Same line repeated here."] * 3 + ["Another distinct line of text here."])
    assert quality.failed_rule(lines, cfg) == "duplicate_lines"
    assert quality.failed_rule(prose, quality.QualityConfig(enabled=False)) is None


def _reference_repetition_rule(words, cfg):
    """Gopher's repetition rules by their plain definitions, every n-gram length counted."""
    from collections import Counter

    total = sum(map(len, words))
    for n, limit in ((2, cfg.max_top_2gram_fraction), (3, cfg.max_top_3gram_fraction),
                     (4, cfg.max_top_4gram_fraction)):
        gram, count = Counter(zip(*(words[i:] for i in range(n)))).most_common(1)[0]
        if count > 1 and sum(map(len, gram)) * count / total > limit:
            return f"top_{n}gram"
    for n, limit in ((5, cfg.max_dup_5gram_char_fraction), (10, cfg.max_dup_10gram_char_fraction)):
        grams = list(zip(*(words[i:] for i in range(n))))
        counts = Counter(grams)
        covered = {j for i, g in enumerate(grams) if counts[g] > 1 for j in range(i, i + n)}
        if sum(len(words[j]) for j in covered) / total > limit:
            return f"dup_{n}gram"
    return None


def test_repetition_shortcuts_match_the_plain_definitions():
    import random

    rng = random.Random(0)
    vocab = "the river flows past old mill and into valley below town 강물 흐른다 마을 of a".split()
    cfg = quality.QualityConfig()
    outcomes = set()
    for _ in range(3000):
        n = rng.randint(20, 60)  # a small vocabulary repeats 2-grams; distinct words repeat nothing
        words = [rng.choice(vocab) for _ in range(n)] if rng.random() < 0.5 else [f"w{i}" for i in range(n)]
        if rng.random() < 0.5:  # a repeated phrase of random length, repeated a random number of times
            phrase = words[: rng.randint(2, 12)]
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(words))
                words[at:at] = phrase
        got = quality._repetition_rule(words, cfg)
        assert got == _reference_repetition_rule(words, cfg), words
        outcomes.add(got)
    assert {None, "top_2gram", "top_4gram", "dup_5gram"} <= outcomes
