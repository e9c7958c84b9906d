"""Reading corpus files into ledger records, one per input document. Pure Python, no Ray.

Every input record becomes exactly one row ``{id, source, order, text, reason, raw}``: ``reason`` is
``""`` for a readable document and ``quarantine:<why>`` for one that cannot be read, with the raw
bytes kept in ``raw``. Nothing is skipped silently, so the manifest can add up. ``order`` (file index
<< 32 | record number) is a unique, shard-independent position used to keep the first of duplicates.

Formats: ``.txt`` (one document per line), ``.jsonl`` (one JSON object per line), either optionally
``.gz``, ``.parquet`` (one row per document; what ``datasets``' ``to_parquet`` writes) and ``.arrow``
(Arrow IPC, one row per document). Local paths and ``s3://`` URIs alike. A local directory written by
Hugging Face ``datasets``' ``save_to_disk`` is read as its Arrow files, in the dataset's own order: a
``Dataset``'s, or the chosen splits of a ``DatasetDict`` (``train`` and ``validation`` by default; its
``test`` split is evaluation's). No ``datasets`` import is needed to read them.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator

from lmforge import storage
from lmforge.config import ConfigError

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz", ".parquet", ".arrow")
COLUMNAR = (".parquet", ".arrow")


def record(id: str, source: str, order: int, text: str = "", reason: str = "", raw: bytes = b"") -> dict:
    """One ledger row (the schema every data step passes along)."""
    return {"id": id, "source": source, "order": order, "text": text, "reason": reason, "raw": raw}


def read_records(uri: str, file_index: int = 0, text_field: str = "text", id_field: str = "id",
                 max_doc_bytes: int = 1_000_000) -> Iterator[dict]:
    """Yield one ledger record per document of a ``.txt``/``.jsonl``(``.gz``)/``.parquet`` file."""
    name = os.path.basename(uri)
    with storage.open_input(uri) as raw_stream:
        if name.endswith(COLUMNAR):
            yield from parse_columnar(raw_stream, name, uri, file_index, text_field, id_field, max_doc_bytes)
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
        if uri.endswith(".arrow"):
            return _arrow_reader(raw_stream.read()).read_all().num_rows
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


def _arrow_reader(data: bytes):
    """An Arrow IPC stream (what ``datasets`` writes) or file reader over ``data``."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.BufferReader(data))
    except pa.ArrowInvalid:
        file = pa.ipc.open_file(pa.BufferReader(data))
        batches = (file.get_batch(i) for i in range(file.num_record_batches))
        return pa.RecordBatchReader.from_batches(file.schema, batches)


def _batches(data: bytes, name: str, columns: list[str]):
    """(schema, record batches) of a parquet or Arrow file's bytes, only ``columns`` where it has them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name.endswith(".parquet"):
        pf = pq.ParquetFile(pa.BufferReader(data))
        have = [c for c in columns if c in pf.schema_arrow.names]
        return pf.schema_arrow, pf.iter_batches(batch_size=4096, columns=have or None)
    reader = _arrow_reader(data)
    have = [c for c in columns if c in reader.schema.names]
    return reader.schema, (b.select(have) if have else b for b in reader)


def parse_columnar(stream, name: str, source: str, file_index: int, text_field: str, id_field: str,
                   max_doc_bytes: int) -> Iterator[dict]:
    """One record per row of a parquet or Arrow file; the text column must exist (else every row is
    quarantined; :func:`check_columns` refuses such inputs before a run starts)."""
    import pyarrow as pa

    # Read whole first: an I/O error of the storage fails the task (Ray retries it); any error after
    # that is the file's own damage, quarantined instead of failing the run.
    data = stream.read()
    rownum = 0
    try:
        _, batches = _batches(data, name, [text_field, id_field])
        for batch in batches:
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


def list_inputs(inputs: list[str], splits: tuple[str, ...] = ("train", "validation")) -> list[str]:
    """Expand every input (path, dir, glob, pkg://, s3://, a ``datasets`` dir) into files, deduplicated,
    in a stable order."""
    files: list[str] = []
    for uri in inputs:
        found = hf_dataset_files(uri, splits) if not storage.is_remote(uri) else None
        files.extend(f for f in (found or storage.expand(uri, SUFFIXES)) if f not in files)
    return files


def hf_dataset_files(uri: str, splits: tuple[str, ...]) -> list[str] | None:
    """The Arrow files of a ``save_to_disk`` dir in the dataset's order (a ``DatasetDict``: of ``splits``,
    in that order); None when ``uri`` is not one."""
    root = storage.resolve_local(uri)
    if os.path.isfile(os.path.join(root, "dataset_dict.json")):
        with open(os.path.join(root, "dataset_dict.json")) as f:
            have = json.load(f)["splits"]
        if missing := [s for s in splits if s not in have]:
            log.warning("input %s: no split %s (it has %s)", uri, ", ".join(missing), ", ".join(have))
        if not (chosen := [s for s in splits if s in have]):
            raise FileNotFoundError(f"input {uri!r}: a DatasetDict with splits {have}, none of splits={list(splits)}")
        return [f for s in chosen for f in hf_dataset_files(os.path.join(root, s), splits)]
    state = os.path.join(root, "state.json")
    if not (os.path.isfile(state) and os.path.isfile(os.path.join(root, "dataset_info.json"))):
        return None
    with open(state) as f:
        return [os.path.abspath(os.path.join(root, d["filename"])) for d in json.load(f)["_data_files"]]


def check_columns(files: list[str], text_field: str) -> None:
    """Refuse, before any work, a parquet or Arrow input without the ``text_field`` column (a wrong
    ``text_field`` would otherwise quarantine every row): names the file and the columns it has."""
    for uri in files:
        if uri.endswith(COLUMNAR):
            schema = _schema(uri)
            if text_field not in schema.names:
                raise ConfigError(f"text_field: {uri} has no column {text_field!r} (its columns: "
                                 f"{', '.join(schema.names)}); set text_field to the one holding the text")


def _schema(uri: str):
    """A columnar file's schema, reading no more of it than the schema takes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage.open_input(uri) as stream:
        if uri.endswith(".parquet"):
            return pq.ParquetFile(stream).schema_arrow
        try:
            return pa.ipc.open_stream(stream).schema
        except pa.ArrowInvalid:  # the IPC file format (not what datasets writes): its schema is at the start too
            stream.seek(0)
            return pa.ipc.open_file(stream).schema
