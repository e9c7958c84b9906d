"""A completion's text as its tokens arrive: incremental detokenization and stop strings held back.

Each new token decodes only a short window (the tokens since the last complete character, with a few
before them for context: a tokenizer may render a token differently at the start of a text), not the
whole completion again. Text that could be the start of a stop string is held back until the next token
shows whether the stop completes (then it is cut, and never sent) or not (then it is sent). Incomplete
UTF-8 (a character split across byte tokens) waits for the token that completes it.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.text = ""  # the completion decoded so far (complete characters only)
        self.emitted = ""  # the part of it already handed out
        self._prefix = 0  # tokens[_prefix:_read] were decoded last time, as context for the next window
        self._read = 0

    def add(self, token: int) -> None:
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.tokens)

    def flush(self) -> None:
        """At the end: whatever the last tokens decode to, an incomplete character included."""
        rest = self._decode(self.tokens[self._prefix:])[len(self._decode(self.tokens[self._prefix:self._read])):]
        self.text += rest
        self._prefix = self._read = len(self.tokens)

    def new_text(self, final: bool) -> tuple[str, bool]:
        """The text not handed out yet, and whether a stop string cut it (the completion ends there)."""
        text, cut = self.text, False
        for stop in self.stops:
            at = text.find(stop, max(0, len(self.emitted) - len(stop)))
            if at >= 0:
                text, cut = text[:at], True
        if not cut and not final:
            text = text[: len(text) - held_back(text, self.stops)]
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted += delta
        return delta, cut

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string: they wait for the
    next token, which shows whether the stop completes (and they are cut) or not (and they are sent)."""
    return max((k for stop in stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:k])), default=0)
