"""The update's new data, without what the deployed model was already trained on: every example is keyed
by its conversation (roles and text, case and spacing normalised) and dropped when a version in the
registry (or ``trained_on``) was trained on the same one, or when it repeats within the new data. So
repeated data is not learned twice."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path


def key(messages: list[dict]) -> str:
    text = "\n".join(m["role"] + ": " + _normal(m.get("content")) for m in messages)
    return hashlib.sha1(text.encode()).hexdigest()


def _normal(content) -> str:
    return re.sub(r"\s+", " ", str(content or "")).strip().lower()


def conversations(sources: str | list[str]) -> list[list[dict]]:
    """Every example of ``sources`` (JSONL or built-in tasks' train splits) as a conversation."""
    from lmforge.finetune.data import conversation, read_sources

    return [conversation(ex) for ex in read_sources(sources)]


def new_examples(data: str | list[str], seen_sources: list[str], out: Path) -> dict:
    """Write ``out/train.jsonl`` (``{"messages"}`` rows) of the examples of ``data`` not in
    ``seen_sources``; returns the counts."""
    seen = {key(c) for c in conversations([s for s in seen_sources if _exists(s)])}
    kept, dropped_seen, dropped_repeat, written = [], 0, 0, set()
    for conv in conversations(data):
        k = key(conv)
        if k in seen:
            dropped_seen += 1
        elif k in written:
            dropped_repeat += 1
        else:
            written.add(k)
            kept.append(conv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in kept),
                                     encoding="utf-8")
    counts = {"examples": len(kept) + dropped_seen + dropped_repeat, "kept": len(kept),
              "already_trained_on": dropped_seen, "repeated": dropped_repeat}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    return counts


def _exists(source: str) -> bool:
    from lmforge import storage
    from lmforge.tasks.builtin import TASKS

    return source in TASKS or Path(storage.resolve_local(source)).is_file()
