"""Text normalisation shared by every step that compares or tokenizes documents. Pure Python.

Unicode NFC first (Korean text typed on different systems arrives as composed syllables or as
decomposed jamo; NFC makes them one string), then whitespace: trailing spaces removed per line, runs
of blank lines collapsed, outer whitespace stripped.
"""

from __future__ import annotations

import re
import unicodedata

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces, at most one blank line in a row, stripped."""
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:  # substring checks are far cheaper than a regex scan
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
