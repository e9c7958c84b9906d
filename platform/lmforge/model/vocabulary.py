"""Whether two HF dirs tokenize alike: token ids mean the same thing only under the same vocabulary, so a
stage that feeds one model's ids to another (distillation's KL, continued pretraining on prepared rows)
checks this before it trains."""

from __future__ import annotations


def check_same(reference: str, other: str, *, key: str, role: str, why: str) -> None:
    """Raise ``ValueError`` naming both vocabularies (sizes and the first ids where they differ) unless the
    tokenizer in ``other`` has exactly the token -> id map of the one in ``reference``."""
    from transformers import AutoTokenizer

    ref, oth = AutoTokenizer.from_pretrained(reference).get_vocab(), AutoTokenizer.from_pretrained(other).get_vocab()
    if ref != oth:
        differ = sorted(set(ref.items()) ^ set(oth.items()), key=lambda x: x[1])[:3]
        raise ValueError(f"{key}: {other}'s tokenizer ({len(oth)} tokens) is not the {role}'s ({reference}, "
                         f"{len(ref)} tokens); they differ at {differ}: {why}")
