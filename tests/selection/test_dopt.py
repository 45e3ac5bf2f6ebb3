"""MaxVol selection: picks extrapolating candidates that enter the active set, largest γ first."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.selection.greedy import select_batch
from aiida_alkit.uncertainty.doptimal import ActiveSet


def test_picks_extrapolating_rows():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 5))
    inside = rng.normal(size=(30, 5)) * 0.1  # well inside the training hull: γ < 1
    outside = rng.normal(size=(6, 5)) * 20.0  # far outside: γ >> 1
    pool = np.concatenate([inside, outside])
    result = select_batch('maxvol', pool, train, batch_size=3)
    assert result.method == 'maxvol'
    assert set(result.indices) <= set(range(30, 36))
    assert len(set(result.indices)) == 3
    assert np.all(np.diff(result.gains) <= 0)
    gamma = ActiveSet().fit(train).extrapolation_grade(pool)
    np.testing.assert_allclose(result.gains, gamma[result.indices])


def test_nothing_extrapolates():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 4))
    result = select_batch('maxvol', rng.normal(size=(10, 4)) * 0.01, train, batch_size=2)
    assert result.indices.size == 0
    assert 'extrapolate' in result.status


def test_errors():
    with pytest.raises(ValueError, match='batch'):
        select_batch('maxvol', np.ones((3, 2)), np.eye(2), batch_size=5)
