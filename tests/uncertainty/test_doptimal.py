"""Tests of MaxVol, the D-optimal active set and the extrapolation grade (seed document 004)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aiida_alkit.uncertainty.doptimal import ActiveSet, maxvol


def _abs_det(matrix):
    return abs(np.linalg.det(matrix))


def test_maxvol_coefficients_bounded_by_tol():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 12)) * rng.uniform(0.1, 3.0, 12)
    result = maxvol(a, tol=1.01)
    assert result.converged
    assert len(set(result.indices.tolist())) == 12
    assert np.abs(result.coefficients).max() <= 1.01 + 1e-10
    np.testing.assert_allclose(result.coefficients, a @ np.linalg.inv(a[result.indices]), atol=1e-9)
    np.testing.assert_allclose(result.coefficients[result.indices], np.eye(12), atol=1e-9)
    # better than (or equal to) the LU-pivoted starting guess
    start = maxvol(a, tol=1.01, max_iters=0)
    assert start.iterations == 0
    assert _abs_det(a[result.indices]) >= _abs_det(a[start.indices])


def test_maxvol_is_a_local_maximum_of_the_volume():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 3))
    result = maxvol(a, tol=1.0 + 1e-12)
    best = _abs_det(a[result.indices])
    for j, i in itertools.product(range(3), range(9)):
        swapped = result.indices.copy()
        swapped[j] = i
        assert _abs_det(a[swapped]) <= best * (1 + 1e-9)
    exhaustive = max(_abs_det(a[list(rows)]) for rows in itertools.combinations(range(9), 3))
    assert best >= 0.3 * exhaustive  # MaxVol is quasi-optimal; on this instance it is close to the global maximum


def test_maxvol_input_errors():
    with pytest.raises(ValueError):
        maxvol(np.ones((2, 3)))
    with pytest.raises(np.linalg.LinAlgError):
        maxvol(np.ones((10, 3)))  # rank one
    with pytest.raises(ValueError):
        maxvol(np.eye(3), initial=[0, 0, 1])


def test_extrapolation_grade_interpolation_and_extrapolation():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((200, 6))
    active = ActiveSet(tol=1.01).fit(train)
    assert np.all(active.indices_ >= 0)
    np.testing.assert_allclose(active.matrix_, train[active.indices_])
    grades = active.extrapolation_grade(train)
    assert grades.shape == (200,)
    assert grades.max() <= 1.01 + 1e-9
    np.testing.assert_allclose(grades[active.indices_], 1.0)
    inside = 0.5 * (train[3] + train[7])  # convex-ish combination of training rows
    assert active.extrapolation_grade(inside) <= 1.01
    outside = 5.0 * np.abs(train).max() * np.ones(6)
    gamma = active.extrapolation_grade(outside)
    assert isinstance(gamma, float) and gamma > 1.0
    # gamma is the factor by which |det| grows when the row replaces the best active row
    coefficients = active.coefficients(outside)
    j = int(np.argmax(np.abs(coefficients)))
    replaced = active.matrix_.copy()
    replaced[j] = outside
    assert _abs_det(replaced) / _abs_det(active.matrix_) == pytest.approx(gamma)


def test_update_keeps_determinant_non_decreasing():
    rng = np.random.default_rng(3)
    active = ActiveSet().fit(rng.standard_normal((40, 5)))
    log_det = active.log_abs_det()
    seen = 40
    for scale in (0.5, 1.0, 2.0, 1.0):
        new = scale * rng.standard_normal((15, 5))
        entered = active.update(new)
        assert active.log_abs_det() >= log_det - 1e-12
        log_det = active.log_abs_det()
        assert np.all((entered >= seen) & (entered < seen + 15))
        assert set(entered.tolist()) <= set(active.indices_.tolist())
        seen += 15
        assert active.n_seen_ == seen
    assert len(set(active.indices_.tolist())) == 5
    # a clearly extrapolating configuration enters the active set
    far = 20.0 * np.ones((1, 5))
    assert active.extrapolation_grade(far[0]) > 1
    assert active.update(far).tolist() == [seen]


def test_fewer_rows_than_features_use_unit_row_padding():
    rng = np.random.default_rng(4)
    first = rng.standard_normal((2, 5))
    active = ActiveSet().fit(first)
    assert sorted(active.indices_.tolist()).count(-1) == 3
    assert {0, 1} <= set(active.indices_.tolist())
    assert abs(np.linalg.det(active.matrix_)) > 0
    np.testing.assert_allclose(active.extrapolation_grade(first), 1.0)
    entered = active.update(rng.standard_normal((6, 5)))
    assert -1 not in active.indices_.tolist()
    assert len(entered) >= 3
    assert active.extrapolation_grade(rng.standard_normal((50, 5))).shape == (50,)


def test_classify_thresholds():
    active = ActiveSet(gamma_select=2.0, gamma_break=10.0)
    assert active.classify(0.5) == 'reliable'
    assert active.classify(1.5) == 'reliable'
    assert active.classify(2.0) == 'reliable'
    assert active.classify(3.0) == 'select'
    assert active.classify(10.0) == 'select'
    assert active.classify(10.5) == 'break'
    np.testing.assert_array_equal(active.classify([1.0, 5.0, 50.0]), ['reliable', 'select', 'break'])
    with pytest.raises(ValueError):
        ActiveSet(gamma_select=5.0, gamma_break=2.0)
