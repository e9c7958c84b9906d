"""MinHash/LSH engine: exact keys, Jaccard estimates, banding maths, clustering keeps the first copy."""

import numpy as np

from lmforge.data import dedup

TEXT = ("The Han River flows through the middle of Seoul, dividing the city into north and south. "
        "Twenty-seven bridges cross it, and its parks are busy on summer evenings.")


def jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = set(dedup.shingle_hashes(a, k).tolist()), set(dedup.shingle_hashes(b, k).tolist())
    return len(sa & sb) / len(sa | sb)


def test_exact_key_ignores_case_and_whitespace_only():
    assert dedup.exact_key(TEXT) == dedup.exact_key("  " + TEXT.upper().replace(" ", "\n  "))
    assert dedup.exact_key(TEXT) != dedup.exact_key(TEXT + "!")


def test_signature_estimates_jaccard():
    edited = TEXT.replace("busy", "crowded")  # one word of 29
    other = "Busan is the largest port city in Korea, famous for Haeundae beach and seafood markets."
    for b in (edited, other):
        errors = [dedup.estimated_jaccard(*dedup.signatures([TEXT, b], 256, seed=s)) - jaccard(TEXT, b)
                  for s in range(20)]
        assert abs(np.mean(errors)) < 0.03 and max(map(abs, errors)) < 0.15  # unbiased, bounded spread
    assert jaccard(TEXT, edited) > 0.8 > jaccard(TEXT, other)


def test_batch_signatures_equal_one_at_a_time():
    texts = [TEXT, "짧은 글", "", "abc", TEXT.upper(), TEXT * 30]
    batch = dedup.signatures(texts, 64, seed=7)
    assert batch.shape == (6, 64) and batch.dtype == np.uint32
    for i, t in enumerate(texts):
        assert np.array_equal(batch[i], dedup.signatures([t], 64, seed=7)[0])
    assert np.array_equal(batch[0], batch[4])  # case-folded: the same text
    assert not np.array_equal(batch[0], dedup.signatures([TEXT], 64, seed=8)[0])  # seeded


def test_short_texts_have_every_bin_filled():
    sig = dedup.signatures(["ab", "hello", "서울"], 128)
    assert (sig <= 0xFFFFFFFF).all() and len(np.unique(sig[1])) > 100  # densified, not one repeated value


def test_band_keys_equal_only_where_bands_equal():
    sig = np.arange(120, dtype=np.uint32)
    other = sig.copy()
    other[0] += 1  # first band differs
    a, b = dedup.band_keys(sig, 20, 6), dedup.band_keys(other, 20, 6)
    assert a[0] != b[0] and np.array_equal(a[1:], b[1:])
    assert len(set(a.tolist())) == 20  # band index is mixed in
    assert np.array_equal(dedup.band_keys(np.stack([sig, other]), 20, 6), np.stack([a, b]))  # batched


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance LSH pairs two documents of this Jaccard similarity: 1 - (1 - J^r)^b."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def test_banding_of_the_default_config_pairs_its_threshold():
    from lmforge.data.config import DedupConfig

    cfg = DedupConfig()
    assert candidate_probability(cfg.near_threshold, cfg.bands, cfg.rows) > 0.99
    assert candidate_probability(0.3, cfg.bands, cfg.rows) < 0.06


def test_clusters_verify_candidates_and_keep_the_smallest_order():
    sig = {1: np.zeros(10), 2: np.zeros(10), 3: np.zeros(10), 4: np.ones(10)}
    sig[3][:1] = 5  # 0.9 similar to 1 and 2
    out = dedup.near_duplicates({(2, 3), (1, 2), (1, 4)}, sig, threshold=0.8)
    assert out == {2: 1, 3: 1}  # 4 was a false candidate: estimated Jaccard 0


def test_korean_near_copy_is_similar():
    ko = "서울은 대한민국의 수도이며 한강을 따라 발달한 대도시이다. 조선 시대부터 정치와 경제의 중심지였다."
    assert jaccard(ko, ko.replace("대도시이다", "도시이다")) > 0.8


def test_shuffle_reduce_keeps_the_first_in_order_per_key():
    """The pure parts of the Ray shuffle: partition by key, then runs of equal keys in each partition."""
    import pyarrow as pa

    from lmforge.data import dedup_ray
    from lmforge.data.config import DedupConfig

    block = pa.table({"order": [5, 3, 9, 4], "id": ["e", "c", "i", "d"], "exact_key": [7, 7, -2, 7],
                      "minhash": [b""] * 4})
    parts = dedup_ray._split(block, "exact", DedupConfig(), 3)
    assert sum(p.num_rows for p in parts) == 4
    homes = {k: [i for i, p in enumerate(parts) if k in p.column("key").to_pylist()] for k in (7, -2)}
    assert all(len(h) == 1 for h in homes.values())  # every key lives in exactly one partition
    out = pa.concat_tables(dedup_ray._reduce("exact", p) for p in parts).sort_by("order")
    assert out.to_pylist() == [{"order": 4, "rep_order": 3, "rep_id": "c"},
                               {"order": 5, "rep_order": 3, "rep_id": "c"}]


def test_shuffle_reduce_near_edges_point_at_the_first_member():
    import pyarrow as pa

    from lmforge.data import dedup_ray
    from lmforge.data.config import DedupConfig

    cfg = DedupConfig(bands=4, rows=2)
    base = np.arange(8, dtype=np.uint32)
    other = base.copy()
    other[:2] += 100  # band 0 differs, bands 1-3 match
    far = base + 1000  # nothing matches
    sigs = [base, other, far]
    block = pa.table({"order": [2, 1, 3], "id": ["b", "a", "c"], "exact_key": [0, 0, 0],
                      "minhash": [s.tobytes() for s in sigs]})
    (rows,) = [dedup_ray._split(block, "near", cfg, 1)]
    assert rows.num_rows == 3 * 4  # one row per document and band
    edges = dedup_ray._reduce("near", rows)
    assert edges.to_pylist() == [{"a": 1, "b": 2}]  # one edge per pair, however many bands match


def test_punctuation_is_not_an_edit_for_near_dedup_but_is_for_exact():
    a = "서울은 대한민국의 수도이며, 가장 큰 도시이다. 인구는 약 천만 명이다."
    b = "서울은 대한민국의 수도이며 가장 큰 도시이다! 인구는 약 천만 명이다…"
    assert dedup.near_canonical(a) == dedup.near_canonical(b) == dedup.near_canonical(b.upper())
    sig = dedup.signatures([a, b], 120)
    assert dedup.estimated_jaccard(sig[0], sig[1]) == 1.0
    assert dedup.exact_key(a) != dedup.exact_key(b)


def test_default_config_catches_two_changed_words_in_a_short_korean_paragraph():
    """Why the defaults are 4-grams at 0.75: in a Korean paragraph of ~115 characters (the median of our
    help-text prose) two changed words drop 5-gram Jaccard below 0.8; an unrelated paragraph stays far off."""
    from lmforge.data.config import DedupConfig

    cfg = DedupConfig()
    ko = ("이 명령은 오류가 발생할 경우 현재 문서를 복원하는 데 필요한 정보를 저장합니다. 또한 크래시가 발생하면 "
          "LibreOffice은(는) 열려 있는 모든 문서의 자동 복구 정보를 자동으로 저장합니다(가능한 경우).")
    copy = ko.replace("발생할", "문서를", 1).replace("정보를", "명령은", 1)  # two words replaced by others
    other = ("HTML은 SGML의 특수 응용 버전입니다. 즉 대부분의 웹 브라우저가 제한된 범위의 SGML 표준만을 지원하며, "
             "SGML을 사용할 수 있는 거의 모든 시스템에서 사용하기 편리한 HTML 페이지를 만들 수 있습니다.")
    assert jaccard(ko, copy, 5) < 0.8 <= jaccard(ko, copy, cfg.ngram)  # the old 5-gram setting missed it
    sig = dedup.signatures([ko, copy, other], cfg.bands * cfg.rows, cfg.ngram, cfg.seed)
    keys = dedup.band_keys(sig, cfg.bands, cfg.rows)
    assert (keys[0] == keys[1]).any() and dedup.estimated_jaccard(sig[0], sig[1]) >= cfg.near_threshold
    assert not (keys[0] == keys[2]).any() and dedup.estimated_jaccard(sig[0], sig[2]) < 0.2
