"""Reading corpus files: one ledger record per input record, broken ones quarantined with raw bytes."""

from lmforge.data import sources, text


def parse(data: bytes, name="f.jsonl", **kw):
    opts = dict(text_field="text", id_field="id", max_doc_bytes=1000) | kw
    return list(sources.parse_lines(data.splitlines(keepends=True), name, name, **opts))


def test_jsonl_ids_from_field_or_line_number():
    recs = parse(b'{"id": "a", "text": "hi"}\n{"text": "there"}\n')
    assert [(r["id"], r["text"], r["reason"]) for r in recs] == [("a", "hi", ""), ("f.jsonl:2", "there", "")]


def test_broken_records_are_quarantined_not_lost():
    data = (b'{"text": "ok"}\n{oops\n{"other": 1}\n\xff\xfe\n[1, 2]\n{"text": 5}\n'
            + b'{"text": "' + b"x" * 2000 + b'"}\n')
    reasons = [r["reason"] for r in parse(data)]
    assert reasons == ["", "quarantine:invalid_json", "quarantine:missing_field", "quarantine:invalid_utf8",
                       "quarantine:not_an_object", "quarantine:text_not_a_string", "quarantine:oversize"]
    bad = parse(b"\xff\xfe\n")[0]
    assert bad["raw"] == b"\xff\xfe" and bad["id"] == "f.jsonl:1"


def test_blank_lines_are_not_documents_and_txt_is_one_per_line():
    recs = parse("first line\n\n두 번째 줄\n".encode(), name="notes.txt")
    assert [(r["id"], r["text"]) for r in recs] == [("notes.txt:1", "first line"), ("notes.txt:3", "두 번째 줄")]


def test_custom_text_and_id_fields(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"passage": "p", "qid": 7}\n')
    (rec,) = sources.read_records(str(path), text_field="passage", id_field="qid")
    assert rec["id"] == "7" and rec["text"] == "p" and rec["source"] == str(path)


def test_normalize_nfc_korean_and_whitespace():
    decomposed = "\u1112\u1161\u11ab\u1100\u1173\u11af"  # 한글 as jamo
    assert text.normalize(f"  {decomposed}  \r\n\r\n\r\n\r\nnext  \n") == "한글\n\nnext"


def test_gzip_jsonl_and_a_truncated_gzip_is_quarantined_not_lost(tmp_path):
    import gzip

    good = tmp_path / "a.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    recs = list(sources.read_records(str(good), file_index=3))
    assert [(r["id"], r["text"]) for r in recs] == [("a.jsonl:1", "one"), ("a.jsonl:2", "two")]
    assert recs[0]["order"] == (3 << 32) | 1
    bad = tmp_path / "b.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "one"}\n' * 1000)[:-30])
    recs = list(sources.read_records(str(bad)))
    assert recs[-1]["reason"] == "quarantine:corrupt_file"
    assert all(r["reason"] == "" for r in recs[:-1]) and len(recs) > 1


def test_parquet_rows_with_ids_and_missing_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"doc": ["x", None, "z"], "uid": ["u1", "u2", None]}), path)
    recs = list(sources.read_records(str(path), text_field="doc", id_field="uid"))
    assert [(r["id"], r["reason"]) for r in recs] == [("u1", ""), ("u2", "quarantine:missing_field"),
                                                      ("p.parquet:3", "")]
    assert b"u2" in recs[1]["raw"]


def test_lone_surrogate_escapes_are_quarantined():
    recs = parse(b'{"id": "a", "text": "bad \\ud800 escape"}\n{"id": "\\udfff", "text": "ok \\ud83d\\ude00"}\n')
    assert [(r["id"], r["reason"]) for r in recs] == [("a", "quarantine:lone_surrogate"), ("f.jsonl:2", "")]
    assert recs[1]["text"] == "ok \U0001f600"  # a proper surrogate pair is one emoji


def test_byte_order_mark_and_crlf_do_not_break_records():
    recs = parse(b'\xef\xbb\xbf{"id": "a", "text": "first"}\r\n{"id": "b", "text": "second"}\r\n')
    assert [(r["id"], r["text"], r["reason"]) for r in recs] == [("a", "first", ""), ("b", "second", "")]
    (txt,) = parse("\ufeff첫 줄\r\n".encode(), name="notes.txt")
    assert txt["text"] == "첫 줄"


def test_files_a_directory_holds_but_no_reader_takes_are_logged(tmp_path, caplog):
    from lmforge import storage

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "notes.csv").write_text("a,b\n")
    with caplog.at_level("WARNING", logger="lmforge.storage"):
        files = storage.expand(str(tmp_path), sources.SUFFIXES)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl"]
    assert "1 files skipped" in caplog.text and "notes.csv" in caplog.text


def test_a_corrupt_parquet_file_is_quarantined_not_fatal(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 8)
    (rec,) = sources.read_records(str(path), file_index=2)
    assert rec["reason"] == "quarantine:corrupt_file" and rec["id"] == "broken.parquet:1" and rec["raw"]
