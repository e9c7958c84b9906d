"""Korean-English sentence pairs from LibreOffice's help: the same page and paragraph id in the Debian
packages ``libreoffice-help-ko`` and ``libreoffice-help-en-us`` (text under MPL-2.0, © The Document
Foundation). ``apt-get install libreoffice-help-ko libreoffice-help-en-us`` puts them under
``/usr/share/libreoffice/help``; ``LMFORGE_LIBREOFFICE_HELP`` points elsewhere."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

DEFAULT_ROOT = "/usr/share/libreoffice/help"
_PARAGRAPH = re.compile(r'<p id="([^"]+)"[^>]*>(.*?)</p>', re.S)
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def help_root() -> Path:
    return Path(os.environ.get("LMFORGE_LIBREOFFICE_HELP", DEFAULT_ROOT))


def _paragraphs(path: Path) -> dict[str, str]:
    raw = path.read_text(encoding="utf-8", errors="replace")
    out = {}
    for par_id, body in _PARAGRAPH.findall(raw):
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", body)).split())
        if text:
            out[par_id] = text
    return out


def aligned_pairs(root: Path | None = None, min_chars: int = 20) -> list[tuple[str, str, str]]:
    """``(pair id, Korean, English)`` for every paragraph both languages have and Korean translated."""
    root = root or help_root()
    ko_root, en_root = root / "ko" / "text", root / "en-US" / "text"
    if not ko_root.is_dir() or not en_root.is_dir():
        raise FileNotFoundError(f"{root}: no LibreOffice help in Korean and English (apt-get install "
                                "libreoffice-help-ko libreoffice-help-en-us, or set LMFORGE_LIBREOFFICE_HELP)")
    pairs = []
    for ko_file in sorted(ko_root.rglob("*.html")):
        rel = ko_file.relative_to(ko_root)
        en_file = en_root / rel
        if not en_file.is_file():
            continue
        en = _paragraphs(en_file)
        for par_id, ko_text in _paragraphs(ko_file).items():
            en_text = en.get(par_id)
            if (en_text and len(en_text) >= min_chars and ko_text != en_text and _HANGUL.search(ko_text)
                    and re.search(r"[A-Za-z]{3}", en_text)):
                pairs.append((f"{rel.with_suffix('')}#{par_id}", ko_text, en_text))
    return pairs
