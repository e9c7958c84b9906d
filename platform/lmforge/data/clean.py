"""Document cleaning: HTML to text, control characters, Unicode and whitespace. Pure Python.

Order matters: HTML first (entities and tags hide the real characters), then control characters,
then :func:`lmforge.data.text.normalize` (NFC, whitespace).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from lmforge.data.text import normalize

_TAG = re.compile(r"</?(p|div|br|span|a|b|i|em|strong|li|ul|ol|h[1-6]|table|tr|td|th|html|body|head|script|"
                  r"style|title|meta|img|section|article|header|footer|nav)\b[^>]*>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # Unicode category Cc, newline kept
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")  # only well-formed entities
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
               "section", "article", "header", "footer", "title", "blockquote", "pre"}
_SKIP_TAGS = {"script", "style", "noscript", "head", "svg", "nav"}
# Zero-width and bidi controls that only hide differences between otherwise equal strings
# (ZWJ U+200D stays: emoji sequences need it).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200e\u200f\u2060\ufeff\u202a\u202b\u202c\u202d\u202e"))


def looks_like_html(text: str) -> bool:
    """Two or more known tags: enough evidence to parse as HTML rather than keep literal '<'."""
    return len(_TAG.findall(text, 0, 20_000)) >= 2


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(text: str) -> str:
    """Visible text of an HTML fragment or page; block elements become line breaks."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return "\n".join(lines)


# Any character strip_control changes: one scan finds out whether the (slower) rewrite is needed.
_ANY_STRIPPED = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f" + "".join(map(chr, _INVISIBLE)) + "]")


def strip_control(text: str) -> str:
    """Drop control and invisible format characters; tabs become spaces, newlines stay."""
    if not _ANY_STRIPPED.search(text):
        return text
    text = text.translate(_INVISIBLE).replace("\t", " ")
    return _CONTROL.sub("", text)


def clean(text: str) -> str:
    """The full cleaning chain applied to every readable document."""
    if looks_like_html(text):
        text = html_to_text(text)
    elif "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return normalize(strip_control(text))
