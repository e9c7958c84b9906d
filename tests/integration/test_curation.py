"""Data curation on a planted corpus (real English + Korean prose with copies, near-copies, PII and
broken records), measured against the known answers; then the same run read from S3 (moto_server)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from lmforge import config as cfgmod
from lmforge.data import clean, prepare
from lmforge.data.config import PrepareConfig
from tests import curation_corpus

pytestmark = pytest.mark.integration
OVERRIDES = ["tokenizer.vocab_size=1024", "pack.seq_len=128", "max_doc_bytes=50000"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> curation_corpus.Corpus:
    return curation_corpus.build(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def curated(ray_cluster, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "data"
    return prepare.run(cfgmod.load(PrepareConfig, None, [f"inputs=[{corpus.root}]", f"output={out}", *OVERRIDES]))


def _tables(out: Path):
    docs = {r["id"]: r["text"] for r in pq.read_table(out / "documents").to_pylist()}
    rejected = {r["id"]: r for r in pq.read_table(out / "rejected").to_pylist()}
    return docs, rejected


def _group_of(corpus) -> dict[str, str]:
    group = {i: i for i in corpus.distinct}
    group.update(corpus.exact_copies)
    group.update(corpus.near_copies)
    return group


def test_manifest_adds_up_and_broken_records_are_quarantined(curated, corpus):
    m = json.loads((curated / "manifest.json").read_text())["documents"]
    n_input = len(corpus.distinct) + len(corpus.exact_copies) + len(corpus.near_copies) + corpus.broken
    assert m["input"] == n_input == m["kept"] + sum(m["dropped"].values()) + m["quarantined"]
    assert m["quarantined"] == corpus.broken == 5
    _, rejected = _tables(curated)
    quarantined = [r for r in rejected.values() if r["reason"].startswith("quarantine:")]
    assert len(quarantined) == 5 and all(r["raw"] for r in quarantined)
    assert (curated / "report.md").read_text().count("quarantine:") >= 4
    assert (curated / "doc_lengths.png").stat().st_size > 0


def test_exact_and_near_copies_dropped_without_hurting_distinct_documents(curated, corpus):
    docs, rejected = _tables(curated)
    group = _group_of(corpus)
    def copy_removed(copy_id, orig_id):
        """One of the pair went, pointing into the pair's group; the group kept exactly one member."""
        dropped = [r for r in (rejected.get(copy_id), rejected.get(orig_id)) if r]
        return any(r["reason"].endswith("duplicate") and group.get(r["duplicate_of"]) == orig_id for r in dropped)
    exact_recall = sum(copy_removed(c, o) for c, o in corpus.exact_copies.items()) / len(corpus.exact_copies)
    near_recall = sum(copy_removed(c, o) for c, o in corpus.near_copies.items()) / len(corpus.near_copies)
    wrong = [r for r in rejected.values() if r["reason"].endswith("duplicate")
             and group.get(r["duplicate_of"]) != group.get(r["id"])]
    print(f"exact recall {exact_recall:.3f}, near recall {near_recall:.3f}, "
          f"distinct docs wrongly dropped {len(wrong)}/{len(corpus.distinct)}")
    assert exact_recall == 1.0
    assert near_recall >= 0.9
    assert len(wrong) / len(corpus.distinct) < 0.01
    for orig in corpus.distinct:  # every group keeps exactly one member (none only when all failed quality)
        members = [i for i, g in group.items() if g == orig]
        kept = sum(i in docs for i in members)
        assert kept == 1 or (kept == 0 and all(
            rejected.get(i, {}).get("reason", "").startswith("quality:") for i in members)), (orig, members, kept)


def test_pii_removed_and_clean_documents_untouched(curated, corpus):
    docs, _ = _tables(curated)
    planted = [(i, v) for i, values in corpus.pii_values.items() for v in values]
    leaked = [(i, v) for i, v in planted if i in docs and v in docs[i]]
    assert all(i in docs for i, _ in planted), "PII-bearing documents must be kept (redacted), not dropped"
    assert 1 - len(leaked) / len(planted) >= 0.99, leaked
    clean_kept = [i for i in corpus.distinct if i in docs and i not in corpus.pii_values]
    altered = [i for i in clean_kept if docs[i] != clean.clean(corpus.distinct[i])]
    print(f"PII removed {len(planted) - len(leaked)}/{len(planted)}, "
          f"clean docs altered {len(altered)}/{len(clean_kept)}")
    assert len(altered) / len(clean_kept) < 0.01
    pii = json.loads((curated / "manifest.json").read_text())["pii"]
    assert sum(pii.values()) >= len(planted) - len(leaked)
    report = (curated / "report.md").read_text()
    planted_types = {t for t, _, _ in curation_corpus.PII_SNIPPETS}
    for kind in planted_types:  # every type redacted is shown in context, as its shape only
        assert f"- {kind}: `…" in report and f"<{kind} " in report, kind
    assert not [v for _, v in planted if v in report], "the report must not show a redacted value"


def test_korean_documents_survive_curation(curated, corpus):
    """Every Korean original (or, where it was copied, one member of its group) is kept."""
    docs, _ = _tables(curated)
    group = _group_of(corpus)
    korean = [i for i in corpus.distinct if i.startswith("ko-")]
    kept = [o for o in korean if any(i in docs for i, g in group.items() if g == o)]
    assert len(kept) / len(korean) > 0.98


def test_rerun_is_deterministic(curated, corpus, tmp_path):
    again = prepare.run(cfgmod.load(PrepareConfig, None, [f"inputs=[{corpus.root}]", f"output={tmp_path / 'd'}",
                                                         *OVERRIDES]))
    assert (again / "manifest.json").read_text().replace(str(again), "") == \
        (curated / "manifest.json").read_text().replace(str(curated), "")
    for sub in ("documents", "rejected", "train", "val"):
        assert pq.read_table(again / sub).to_pylist() == pq.read_table(curated / sub).to_pylist(), sub


def test_same_run_from_s3_gives_identical_outputs(s3_server, curated, corpus, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="corpus")
    for f in sorted(corpus.root.iterdir()):
        s3.upload_file(str(f), "corpus", f"planted/{f.name}")
    out = prepare.run(cfgmod.load(PrepareConfig, None, ["inputs=[s3://corpus/planted/]", f"output={tmp_path / 's3'}",
                                                       *OVERRIDES]))
    local, remote = (json.loads((p / "manifest.json").read_text()) for p in (curated, out))
    for key in ("documents", "pii", "tokens", "rows", "tokenizer_sha256"):
        assert remote[key] == local[key], key
    assert remote["inputs"] == [f"s3://corpus/planted/part-{i}.jsonl" for i in range(4)]
    for sub in ("train", "val"):
        assert pq.read_table(out / sub).to_pylist() == pq.read_table(curated / sub).to_pylist()
    docs = lambda p: [(r["id"], r["text"]) for r in pq.read_table(p / "documents").to_pylist()]
    assert docs(out) == docs(curated)
