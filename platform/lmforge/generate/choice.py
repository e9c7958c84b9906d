"""Each row's next token in one engine step: one argmax for all the plain greedy rows; for every other
row, its own masks (its structured-output grammar; end of sequence held back by ``min_tokens`` or
``ignore_eos``), then greedy or its own sampler. Rows are the engine's sequences: anything with
``params``, ``generated``, ``matcher`` and ``rng``. No Ray, no engine state.
"""

from __future__ import annotations

import numpy as np

from lmforge.generate.sampling import sample_row


def choose(logits: np.ndarray, rows: list, eos_ids: list[int], grammars) -> list[int]:
    """The next token of each row of ``logits[rows, vocab]``; ``grammars`` (a
    :class:`~lmforge.generate.constraints.Grammars`) masks the rows that have a matcher."""
    plain = [i for i, s in enumerate(rows)
             if s.params.temperature <= 0 and not holds_eos(s, eos_ids) and s.matcher is None]
    tokens = np.zeros(len(rows), np.int64)
    if plain:
        tokens[plain] = logits[plain].argmax(axis=-1)
    for i, s in enumerate(rows):
        if i in plain:
            continue
        p, choices = s.params, logits[i]
        if s.matcher is not None:
            choices = grammars.mask(s.matcher, choices)
        if holds_eos(s, eos_ids):
            choices = choices.copy()
            eos = choices[eos_ids].copy()
            choices[eos_ids] = -np.inf
            if not np.isfinite(choices).any():  # the grammar allows nothing but the end: min_tokens yields
                choices[eos_ids] = eos
        if p.temperature <= 0:
            tokens[i] = int(np.argmax(choices))
        else:
            tokens[i] = sample_row(choices, p.temperature, p.top_k, p.top_p, s.rng)
    return [int(t) for t in tokens]


def holds_eos(s, eos_ids: list[int]) -> bool:
    """End of sequence may not be chosen yet: before ``min_tokens``, or never with ``ignore_eos``."""
    return bool(eos_ids) and (len(s.generated) < s.params.min_tokens or s.params.ignore_eos)


def grammar_complete(matcher, token: int) -> bool:
    """Feed ``token`` to a row's grammar; True when the grammar admits nothing more (a choice made, a
    regex with nothing optional left), so the sequence ends without waiting for end of sequence."""
    if not matcher.consume_token(token):
        raise RuntimeError(f"structured output: token {token} refused by the grammar: {matcher.get_error()}")
    return matcher.is_stopped()
