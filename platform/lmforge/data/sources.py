"""Reading corpus files into ledger records, one per input document. Pure Python, no Ray.

Every input record becomes exactly one row ``{id, source, text, reason, raw}``: ``reason`` is ``""``
for a readable document and ``quarantine:<why>`` for one that cannot be read (the raw bytes are kept in
``raw``). Nothing is skipped silently, so the manifest can add up.

Formats: ``.txt`` (one document per line), ``.jsonl`` (one JSON object per line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

SUFFIXES = (".txt", ".jsonl")


def record(id: str, source: str, text: str = "", reason: str = "", raw: bytes = b"") -> dict:
    """One ledger row (the schema every data step passes along)."""
    return {"id": id, "source": source, "text": text, "reason": reason, "raw": raw}


def read_records(path: str, text_field: str = "text", id_field: str = "id",
                 max_doc_bytes: int = 1_000_000) -> Iterator[dict]:
    """Yield one ledger record per document of a local ``.txt`` or ``.jsonl`` file."""
    with open(path, "rb") as f:
        yield from parse_lines(f, os.path.basename(path), path, text_field, id_field, max_doc_bytes)


def parse_lines(lines: Iterable[bytes], name: str, source: str, text_field: str, id_field: str,
                max_doc_bytes: int) -> Iterator[dict]:
    """Parse raw lines of one file; blank lines between records are not documents."""
    is_json = name.endswith(".jsonl")
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        default_id = f"{name}:{lineno}"
        if len(line) > max_doc_bytes:
            yield record(default_id, source, reason="quarantine:oversize", raw=line)
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            yield record(default_id, source, reason="quarantine:invalid_utf8", raw=line)
            continue
        if is_json:
            yield _parse_json(decoded, line, default_id, source, text_field, id_field)
        else:
            yield record(default_id, source, text=decoded)


def _parse_json(decoded: str, line: bytes, default_id: str, source: str, text_field: str,
                id_field: str) -> dict:
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError:
        return record(default_id, source, reason="quarantine:invalid_json", raw=line)
    if not isinstance(obj, dict):
        return record(default_id, source, reason="quarantine:not_an_object", raw=line)
    doc_id = str(obj[id_field]) if obj.get(id_field) not in (None, "") else default_id
    text = obj.get(text_field)
    if not isinstance(text, str):
        why = "missing_field" if text is None else "text_not_a_string"
        return record(doc_id, source, reason=f"quarantine:{why}", raw=line)
    return record(doc_id, source, text=text)
