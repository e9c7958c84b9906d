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
    hasher = dedup.MinHasher(256, seed=3)
    edited = TEXT.replace("busy", "crowded")  # one word of 29
    other = "Busan is the largest port city in Korea, famous for Haeundae beach and seafood markets."
    for b in (edited, other):
        est = dedup.estimated_jaccard(hasher.signature(dedup.shingle_hashes(TEXT)),
                                      hasher.signature(dedup.shingle_hashes(b)))
        assert abs(est - jaccard(TEXT, b)) < 0.1
    assert jaccard(TEXT, edited) > 0.8 > jaccard(TEXT, other)


def test_long_texts_are_chunked_identically():
    hasher = dedup.MinHasher(64)
    h = dedup.shingle_hashes(TEXT * 50)
    assert np.array_equal(hasher.signature(h, chunk=7), hasher.signature(h))


def test_band_keys_equal_only_where_bands_equal():
    sig = np.arange(120, dtype=np.uint32)
    other = sig.copy()
    other[0] += 1  # first band differs
    a, b = dedup.band_keys(sig, 20, 6), dedup.band_keys(other, 20, 6)
    assert a[0] != b[0] and np.array_equal(a[1:], b[1:])
    assert len(set(a.tolist())) == 20  # band index is mixed in


def test_banding_probability_for_default_shape():
    assert dedup.candidate_probability(0.8, 20, 6) > 0.99
    assert dedup.candidate_probability(0.3, 20, 6) < 0.02


def test_clusters_verify_candidates_and_keep_the_smallest_order():
    sig = {1: np.zeros(10), 2: np.zeros(10), 3: np.zeros(10), 4: np.ones(10)}
    sig[3][:1] = 5  # 0.9 similar to 1 and 2
    out = dedup.near_duplicates({(2, 3), (1, 2), (1, 4)}, sig, threshold=0.8)
    assert out == {2: 1, 3: 1}  # 4 was a false candidate: estimated Jaccard 0


def test_korean_near_copy_is_similar():
    ko = "서울은 대한민국의 수도이며 한강을 따라 발달한 대도시이다. 조선 시대부터 정치와 경제의 중심지였다."
    assert jaccard(ko, ko.replace("대도시이다", "도시이다")) > 0.8
