"""Reading corpus files into ledger records, one per input document. Pure Python, no Ray.

Every input record becomes exactly one row ``{id, source, order, text, reason, raw}``: ``reason`` is
``""`` for a readable document and ``quarantine:<why>`` for one that cannot be read, with the raw
bytes kept in ``raw``. Nothing is skipped silently, so the manifest can add up. ``order`` (file index
<< 32 | record number) is a unique, shard-independent position used to keep the first of duplicates.

Formats: ``.txt`` (one document per line), ``.jsonl`` (one JSON object per line), either optionally
``.gz``, and ``.parquet`` (one row per document). Local paths and ``s3://`` URIs alike.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator

from lmforge import storage

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz", ".parquet")


def record(id: str, source: str, order: int, text: str = "", reason: str = "", raw: bytes = b"") -> dict:
    """One ledger row (the schema every data step passes along)."""
    return {"id": id, "source": source, "order": order, "text": text, "reason": reason, "raw": raw}


def read_records(uri: str, file_index: int = 0, text_field: str = "text", id_field: str = "id",
                 max_doc_bytes: int = 1_000_000) -> Iterator[dict]:
    """Yield one ledger record per document of a ``.txt``/``.jsonl``(``.gz``)/``.parquet`` file."""
    name = os.path.basename(uri)
    with storage.open_input(uri) as raw_stream:
        if name.endswith(".parquet"):
            yield from parse_parquet(raw_stream, name, uri, file_index, text_field, id_field, max_doc_bytes)
            return
        if name.endswith(".gz"):
            lines = _gzip_lines(gzip.GzipFile(fileobj=raw_stream))
        else:
            lines = iter(raw_stream)
        yield from parse_lines(lines, name.removesuffix(".gz"), uri, text_field, id_field, max_doc_bytes,
                               file_index)


def count_records(uri: str) -> int:
    """About how many documents a file holds (non-blank lines, or parquet rows): for sizing, not the ledger."""
    with storage.open_input(uri) as raw_stream:
        if uri.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(raw_stream).metadata.num_rows
        lines = _gzip_lines(gzip.GzipFile(fileobj=raw_stream)) if uri.endswith(".gz") else iter(raw_stream)
        return sum(1 for line in lines if line.strip())


def _gzip_lines(stream) -> Iterator[bytes]:
    """Lines of a gzip stream; a corrupt or truncated one ends with a marker line instead of raising.
    Only decompression errors are caught: an I/O error of the storage itself must fail the task
    (Ray retries it) rather than pass for a corrupt file."""
    try:
        yield from stream
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield _CorruptTail(str(e))


class _CorruptTail(bytes):
    """Sentinel line: the rest of the file could not be decompressed."""

    def __new__(cls, message: str):
        obj = super().__new__(cls, message.encode("utf-8", "replace"))
        return obj


def parse_lines(lines: Iterable[bytes], name: str, source: str, text_field: str, id_field: str,
                max_doc_bytes: int, file_index: int = 0) -> Iterator[dict]:
    """Parse raw lines of one file; blank lines between records are not documents."""
    is_json = name.endswith(".jsonl")
    for lineno, line in enumerate(lines, start=1):
        order = (file_index << 32) | lineno
        default_id = f"{name}:{lineno}"
        if isinstance(line, _CorruptTail):
            yield record(default_id, source, order, reason="quarantine:corrupt_file", raw=bytes(line))
            return
        line = line.rstrip(b"\r\n")
        if lineno == 1:  # a UTF-8 byte order mark (Windows editors write one) is not part of the record
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            continue
        if len(line) > max_doc_bytes:
            yield record(default_id, source, order, reason="quarantine:oversize", raw=line)
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            yield record(default_id, source, order, reason="quarantine:invalid_utf8", raw=line)
            continue
        if is_json:
            yield _parse_json(decoded, line, default_id, source, order, text_field, id_field)
        else:
            yield record(default_id, source, order, text=decoded)


def _parse_json(decoded: str, line: bytes, default_id: str, source: str, order: int, text_field: str,
                id_field: str) -> dict:
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError:
        return record(default_id, source, order, reason="quarantine:invalid_json", raw=line)
    if not isinstance(obj, dict):
        return record(default_id, source, order, reason="quarantine:not_an_object", raw=line)
    doc_id = str(obj[id_field]) if obj.get(id_field) not in (None, "") else default_id
    text = obj.get(text_field)
    if "\\u" in decoded:  # only a \u escape can decode to a lone surrogate (valid UTF-8 never does)
        if not _encodable(doc_id):
            doc_id = default_id
        if isinstance(text, str) and not _encodable(text):
            return record(doc_id, source, order, reason="quarantine:lone_surrogate", raw=line)
    return _with_text(text, doc_id, source, order, line)


def _with_text(text, doc_id: str, source: str, order: int, raw: bytes) -> dict:
    if not isinstance(text, str):
        why = "missing_field" if text is None else "text_not_a_string"
        return record(doc_id, source, order, reason=f"quarantine:{why}", raw=raw)
    return record(doc_id, source, order, text=text)


def _encodable(text: str) -> bool:
    """False for a string with a lone UTF-16 surrogate (JSON's "\\ud800" escape decodes to one): it has
    no UTF-8 form, so hashing, Arrow and the tokenizer would all fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_parquet(stream, name: str, source: str, file_index: int, text_field: str, id_field: str,
                  max_doc_bytes: int) -> Iterator[dict]:
    """One record per row; the text column must exist (else every row is quarantined)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Read whole first: an I/O error of the storage fails the task (Ray retries it); any error after
    # that is the file's own damage, quarantined instead of failing the run.
    buffer = pa.BufferReader(stream.read())
    rownum = 0
    try:
        pf = pq.ParquetFile(buffer)
        columns = [c for c in (text_field, id_field) if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=4096, columns=columns or None):
            yield from _parquet_rows(batch, name, source, file_index, text_field, id_field, max_doc_bytes, rownum)
            rownum += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        yield record(f"{name}:{rownum + 1}", source, (file_index << 32) | (rownum + 1),
                     reason="quarantine:corrupt_file", raw=str(e).encode("utf-8", "replace"))


def _parquet_rows(batch, name: str, source: str, file_index: int, text_field: str, id_field: str,
                  max_doc_bytes: int, rownum: int) -> Iterator[dict]:
    """Records of one record batch whose first row is number ``rownum + 1`` of the file."""
    data = batch.to_pydict()
    missing = [None] * batch.num_rows
    for i in range(batch.num_rows):
        rownum += 1
        order, default_id = (file_index << 32) | rownum, f"{name}:{rownum}"
        raw_id = data.get(id_field, missing)[i]
        doc_id = str(raw_id) if raw_id not in (None, "") else default_id
        text = data.get(text_field, missing)[i]
        raw = json.dumps({k: data[k][i] for k in data}, default=str, ensure_ascii=False).encode()
        if isinstance(text, str) and len(text.encode("utf-8")) > max_doc_bytes:
            yield record(doc_id, source, order, reason="quarantine:oversize", raw=raw)
        else:
            yield _with_text(text, doc_id, source, order, raw if not isinstance(text, str) else b"")


def list_inputs(inputs: list[str]) -> list[str]:
    """Expand every input (path, dir, glob, pkg://, s3://) into files, deduplicated, in a stable order."""
    files: list[str] = []
    for uri in inputs:
        files.extend(f for f in storage.expand(uri, SUFFIXES) if f not in files)
    return files
