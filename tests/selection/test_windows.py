"""Tests of the ALKPU / DP-GEN selection windows and random selection (seed paper 000, section 3 and Table 2)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.selection.windows import (
    ACCURATE,
    CANDIDATE,
    FAILED,
    alkpu_window,
    committee_trust_window,
    random_selection,
)


def test_alkpu_window_counts_on_planted_values():
    kpu = np.array([0.5, 1.25, 1.5, 2.0, 2.5, np.nan, 1.9, 1.2])
    result = alkpu_window(kpu, kpu_trained=1.0)  # window [1.25, 2.0], closed
    assert (result.lo, result.hi) == (1.25, 2.0)
    np.testing.assert_array_equal(
        result.flags, [ACCURATE, CANDIDATE, CANDIDATE, CANDIDATE, FAILED, FAILED, CANDIDATE, ACCURATE]
    )
    assert (result.n_accurate, result.n_candidate, result.n_failed) == (2, 4, 2)
    np.testing.assert_array_equal(result.indices, [1, 2, 3, 6])
    assert result.indices.dtype == np.int64
    np.testing.assert_array_equal(np.flatnonzero(result.candidate), [1, 2, 3, 6])
    assert result.accurate.sum() + result.candidate.sum() + result.failed.sum() == len(kpu)
    scaled = alkpu_window(kpu * 0.1, kpu_trained=0.1, c0=1.25, c1=2.0)
    assert scaled.n_candidate == 4


def test_committee_trust_window_defaults_and_paper_setting():
    dev = np.array([0.01, 0.04, 0.05, 0.1, 0.15, 0.19, 0.3])
    default = committee_trust_window(dev)  # DP-GEN defaults [0.05, 0.15]
    assert (default.n_accurate, default.n_candidate, default.n_failed) == (2, 3, 2)
    paper = committee_trust_window(dev, lo=0.02, hi=0.2)
    assert (paper.n_accurate, paper.n_candidate, paper.n_failed) == (1, 5, 1)
    np.testing.assert_array_equal(paper.indices, [1, 2, 3, 4, 5])


def test_random_cap_is_reproducible_and_unique():
    rng = np.random.default_rng(0)
    kpu = np.concatenate([rng.uniform(0.0, 1.2, 2000), rng.uniform(1.3, 1.9, 1000), rng.uniform(2.1, 9.0, 7)])
    capped = alkpu_window(kpu, 1.0, max_selected=100, seed=42)
    assert len(capped) == capped.n_selected == 100
    assert len(set(capped.indices.tolist())) == 100
    assert np.all(capped.candidate[capped.indices])
    assert (capped.n_accurate, capped.n_candidate, capped.n_failed) == (2000, 1000, 7)  # counts before the cap
    again = alkpu_window(kpu, 1.0, max_selected=100, seed=42)
    np.testing.assert_array_equal(capped.indices, again.indices)  # same pick order
    other = alkpu_window(kpu, 1.0, max_selected=100, seed=43)
    assert not np.array_equal(np.sort(capped.indices), np.sort(other.indices))
    # cap above the number of candidates: all of them, ascending
    loose = committee_trust_window(kpu, lo=1.25, hi=2.0, max_selected=5000, seed=1)
    np.testing.assert_array_equal(loose.indices, np.arange(2000, 3000))
    assert len(alkpu_window(kpu, 1.0, max_selected=0, seed=1)) == 0


def test_random_selection():
    result = random_selection(50, 20, seed=3)
    assert len(result) == 20 and len(set(result.indices.tolist())) == 20
    assert result.indices.min() >= 0 and result.indices.max() < 50
    np.testing.assert_array_equal(result.indices, random_selection(50, 20, seed=3).indices)
    assert (result.n_accurate, result.n_candidate, result.n_failed) == (0, 50, 0)
    np.testing.assert_array_equal(np.sort(random_selection(7, 7, seed=0).indices), np.arange(7))
    with pytest.raises(ValueError, match='batch of 8 from a pool of only 7'):
        random_selection(7, 8, seed=0)


def test_input_errors():
    with pytest.raises(ValueError):
        alkpu_window([1.0], kpu_trained=0.0)
    with pytest.raises(ValueError):
        alkpu_window([1.0], kpu_trained=1.0, c0=2.0, c1=1.0)
    with pytest.raises(ValueError):
        committee_trust_window([0.1], lo=0.2, hi=0.1)
    with pytest.raises(ValueError):
        committee_trust_window(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        committee_trust_window([0.1], max_selected=-1)
    with pytest.raises(ValueError):
        random_selection(5, -1)
