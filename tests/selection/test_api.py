"""The selection entry point: every method family, ranks and counts, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.selection.api import select


@pytest.fixture
def features():
    rng = np.random.default_rng(3)
    return rng.normal(size=(50, 6)), rng.normal(size=(20, 6))


@pytest.mark.parametrize('method', ['maxdet', 'maxdist', 'lcmd', 'maxdiag'])
def test_feature_methods(features, method):
    pool, train = features
    result = select(method, 5, pool_features=pool, train_features=train)
    assert len(set(result.indices)) == 5
    assert list(result.ranks[result.indices]) == [0, 1, 2, 3, 4]
    assert (result.ranks == -1).sum() == 45
    assert result.n_candidate == 50


def test_trust_window_counts():
    deviation = np.array([0.01, 0.1, 0.12, 0.5, np.nan, 0.06])
    result = select('trust', 10, scores={'max_force_deviation': deviation}, lo=0.05, hi=0.15)
    assert (result.n_accurate, result.n_candidate, result.n_failed) == (1, 3, 2)
    assert sorted(result.indices) == [1, 2, 5]


def test_alkpu_window():
    result = select('alkpu', 1, scores={'kpu': np.array([1.0, 1.5, 1.9, 3.0])}, kpu_trained=1.0, seed=4)
    assert result.n_candidate == 2
    assert result.indices.size == 1
    assert result.indices[0] in (1, 2)


def test_errors(features):
    pool, train = features
    with pytest.raises(ValueError, match='unknown selection method'):
        select('best', 2, pool_features=pool, train_features=train)
    with pytest.raises(ValueError, match='needs pool_features'):
        select('lcmd', 2)
    with pytest.raises(ValueError, match='batch'):
        select('maxdist', 60, pool_features=pool, train_features=train)
    with pytest.raises(ValueError, match='kpu_trained'):
        select('alkpu', 2, scores={'kpu': np.ones(3)})


def test_calibrated_threshold_splits_accurate_from_uncertain(features):
    pool, train = features
    calibrated = np.linspace(0.0, 0.49, 50)  # eV/Å; 15 candidates at most 0.15
    result = select(
        'lcmd',
        5,
        pool_features=pool,
        train_features=train,
        scores={'calibrated_uncertainty': calibrated},
        uncertain_above=0.15,
    )
    assert (result.n_accurate, result.n_candidate) == (16, 34)
    assert np.all(calibrated[result.indices] > 0.15)
    nothing_left = select(
        'lcmd',
        5,
        pool_features=pool,
        train_features=train,
        scores={'calibrated_uncertainty': np.zeros(50)},
        uncertain_above=0.15,
    )
    assert nothing_left.indices.size == 0 and nothing_left.n_accurate == 50
    with pytest.raises(ValueError, match='calibrated_uncertainty'):
        select('lcmd', 5, pool_features=pool, train_features=train, uncertain_above=0.15)


def test_maxvol_counts_reliable_candidates_as_accurate():
    """seed 004: a candidate with extrapolation grade <= gamma_select interpolates (accurate); only the others may be
    picked, and each candidate's score is its grade."""
    rng = np.random.default_rng(5)
    train = rng.normal(size=(12, 4))
    inside = 0.2 * train[:6]  # well inside the training hull: grade < 1
    outside = 5.0 * rng.normal(size=(4, 4))  # far out: grade >> 2
    pool = np.concatenate([inside, outside])
    result = select('maxvol', 3, pool_features=pool, train_features=train)
    assert result.n_accurate == 6 and result.n_candidate == 4
    assert set(result.indices) <= set(range(6, 10)) and result.indices.size == 3
    assert (result.scores[:6] <= 2.0).all() and (result.scores[6:] > 2.0).all()
    everything = select('maxvol', 3, pool_features=pool, train_features=train, gamma_select=1e9)
    assert everything.n_accurate == 10 and everything.indices.size == 0
