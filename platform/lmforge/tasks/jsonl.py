"""Task data from JSONL: ``{"prompt", "response"}`` (or ``"reference"``) rows, or chat ``{"messages"}``;
for multiple choice ``{"prompt", "choices", "answer"}`` (or ``{"messages", "choices", "answer"}``, the
chat ending on the user's turn), ``answer`` being the gold choice's index or its text.

Every malformed row is reported with its line number, so a run stops before it starts, not halfway.
"""

from __future__ import annotations

import json

from lmforge import storage
from lmforge.tasks.examples import Example

ROLES = ("system", "developer", "user", "assistant")


class DataError(ValueError):
    """A JSONL row a task cannot use; the message names the file and line."""


def read_examples(path: str, limit: int | None = None) -> list[Example]:
    """Every row of ``path`` as an :class:`Example`; raises :class:`DataError` listing the bad rows."""
    local = storage.resolve_local(path)
    name = path.rstrip("/").rsplit("/", 1)[-1]  # ids as <file>:<line>, the same wherever the file lies
    examples, problems = [], []
    with open(local, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                examples.append(_example(json.loads(line), f"{name}:{number}"))
            except (json.JSONDecodeError, DataError) as e:
                problems.append(f"line {number}: {e}")
            if limit and len(examples) >= limit:
                break
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{path}: {len(problems)} unusable rows ({shown})")
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


def _example(row, example_id: str) -> Example:
    if not isinstance(row, dict):
        raise DataError("a row must be a JSON object")
    if "choices" in row:
        return _choice_example(row, example_id)
    if "messages" in row:
        messages = row["messages"]
        _check_messages(messages)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError("messages: a chat without an assistant turn has nothing to learn or score")
        last = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        return Example(id=str(row.get("id", example_id)), messages=messages, reference=last)
    prompt = row.get("prompt")
    target = row.get("response", row.get("reference"))
    if not isinstance(prompt, str) or not (isinstance(target, str) or (
            isinstance(target, list) and target and all(isinstance(t, str) for t in target))):
        raise DataError('needs "prompt" and "response" (or "reference") as text, or "messages"')
    return Example(id=str(row.get("id", example_id)), prompt=prompt, reference=target)


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
        raise DataError(f"messages: a list of {{role: {'|'.join(ROLES)}, content: text}}")


def _choice_example(row: dict, example_id: str) -> Example:
    """A multiple-choice row: its choices, and the gold one's index (given as an index or as the text)."""
    choices, answer = row["choices"], row.get("answer")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError('"choices" must be a list of at least two non-empty texts')
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError('"answer" must be the correct choice\'s index or its text')
    if isinstance(answer, str):
        if answer not in choices:
            raise DataError(f'"answer" {answer!r} is not among "choices" {choices!r}')
        answer = choices.index(answer)
    elif not 0 <= answer < len(choices):
        raise DataError(f'"answer" {answer} is not an index of "choices" (0..{len(choices) - 1})')
    if "messages" in row:
        _check_messages(row["messages"])
        if row["messages"][-1]["role"] != "user":
            raise DataError("messages: a multiple-choice chat ends on the user's turn (the choices answer it)")
        return Example(id=str(row.get("id", example_id)), messages=row["messages"], choices=choices, answer=answer)
    if not isinstance(row.get("prompt"), str):
        raise DataError('a multiple-choice row needs "prompt" (text) or "messages"')
    return Example(id=str(row.get("id", example_id)), prompt=row["prompt"], choices=choices, answer=answer)
