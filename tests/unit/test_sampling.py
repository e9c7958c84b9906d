"""Sampling: greedy, top-k, top-p, temperature and seeds behave as their definitions say."""

import numpy as np
import pytest

from lmforge.generate.sampling import sample_next

LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def test_temperature_zero_is_argmax():
    assert sample_next(LOGITS, 0.0, 0, 1.0, np.random.default_rng(0)).tolist() == [0, 3]


def test_top_k_1_and_tiny_top_p_are_greedy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert sample_next(LOGITS, 1.0, 1, 1.0, rng).tolist() == [0, 3]
        assert sample_next(LOGITS, 1.0, 0, 0.01, rng).tolist() == [0, 3]


def test_top_p_keeps_the_nucleus_only():
    rng = np.random.default_rng(0)
    draws = {int(sample_next(LOGITS[:1], 1.0, 0, 0.75, rng)[0]) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 is the smallest set reaching 0.75


def test_same_seed_same_samples_and_frequencies_follow_probs():
    a = [sample_next(LOGITS, 1.0, 0, 1.0, np.random.default_rng(7)).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(1)
    counts = np.bincount([sample_next(LOGITS[:1], 1.0, 0, 1.0, rng)[0] for _ in range(4000)], minlength=4)
    assert np.allclose(counts / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_the_distribution_as_p_to_the_one_over_t(temperature):
    """At T=0.5 the top token's share grows from 0.5 to 0.68; at T=2 it falls to 0.38: a sampler that
    ignored the temperature (or applied it twice, or to probabilities instead of logits) misses by far
    more than the 4000 draws' noise."""
    want = np.array([0.5, 0.3, 0.15, 0.05]) ** (1 / temperature)
    want /= want.sum()
    rng = np.random.default_rng(2)
    draws = [sample_next(LOGITS[:1], temperature, 0, 1.0, rng)[0] for _ in range(4000)]
    assert np.allclose(np.bincount(draws, minlength=4) / 4000, want, atol=0.03)
