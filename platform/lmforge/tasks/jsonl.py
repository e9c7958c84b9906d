"""Task data from JSONL: ``{"prompt", "response"}`` (or ``"reference"``) rows, or chat ``{"messages"}``.

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
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get("role") in ROLES
                                                     and isinstance(m.get("content"), str) for m in messages):
            raise DataError(f"messages: a list of {{role: {'|'.join(ROLES)}, content: text}}")
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
