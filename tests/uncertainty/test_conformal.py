"""Tests of inductive conformal calibration (seed paper 003, Methods 'Conformal prediction')."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiida_alkit.uncertainty.conformal import (
    ConformalCalibrator,
    atomic_force_rmse,
    conformal_quantile,
    energy_error_per_atom,
)


def _synthetic(rng, n):
    """Unitless uncertainties and heteroscedastic errors (eV/Å) that they under-estimate by a factor ~0.3."""
    u = rng.uniform(0.2, 2.0, n)
    errors = np.abs(0.3 * u * rng.standard_normal(n)) + 0.02 * rng.exponential(size=n)
    return u, errors


@pytest.mark.parametrize('alpha', [0.1, 0.02])
def test_coverage_on_held_out_data_averaged_over_seeds(alpha):
    n_cal, n_test, n_seeds = 200, 2000, 60
    coverages = []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        u_cal, e_cal = _synthetic(rng, n_cal)
        u_test, e_test = _synthetic(rng, n_test)
        calibrator = ConformalCalibrator().fit(u_cal, e_cal, alpha=alpha)
        coverages.append(calibrator.coverage(u_test, e_test))
    mean = float(np.mean(coverages))
    # E[coverage] lies in [1 - alpha, 1 - alpha + 1/(n+1)]; per-seed coverage std is ~sqrt(alpha(1-alpha)/n)
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) / n_cal) / math.sqrt(n_seeds) + 3 * math.sqrt(
        alpha * (1 - alpha) / n_test
    ) / math.sqrt(n_seeds)
    assert mean >= 1 - alpha - tolerance
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + tolerance
    # the raw (uncalibrated) uncertainty under-covers badly
    assert np.mean(e_test <= u_test * 0.3) < 1 - alpha


def test_quantile_has_finite_sample_correction():
    scores = np.arange(1.0, 20.0)  # n = 19
    assert conformal_quantile(scores[::-1], 0.1) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.5) == 10.0  # ceil(20 * 0.5) = 10
    assert conformal_quantile(np.arange(1.0, 10.0), 0.05) == math.inf  # ceil(10 * 0.95) = 10 > 9
    with pytest.raises(ValueError):
        conformal_quantile(scores, 0.0)


def test_calibrate_and_threshold_inversion():
    rng = np.random.default_rng(0)
    u, errors = _synthetic(rng, 500)
    calibrator = ConformalCalibrator().fit(10.0 * u, errors, alpha=0.05)  # unitless u on another scale
    q = calibrator.scale_
    assert q == calibrator.quantile_ > 0
    assert calibrator.n_calibration_ == 500
    assert np.mean(errors <= calibrator.calibrate(10.0 * u)) >= 0.95
    # bounds do not depend on the unit of the raw uncertainty
    other = ConformalCalibrator().fit(u, errors, alpha=0.05)
    np.testing.assert_allclose(other.calibrate(u), calibrator.calibrate(10.0 * u))
    for error_threshold in (0.1, 1.0, 1.5):
        raw = calibrator.threshold(error_threshold)
        assert calibrator.calibrate(raw) == pytest.approx(error_threshold)
        values = np.array([raw * 0.99, raw * 1.01])
        np.testing.assert_array_equal(calibrator.calibrate(values) > error_threshold, values > raw)


def test_per_atom_and_per_structure_errors():
    forces = np.zeros((2, 3))
    reference = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(atomic_force_rmse(forces, reference), [math.sqrt(3.0), 1.0])
    np.testing.assert_allclose(energy_error_per_atom([1.0, -2.0], [0.0, 0.0], [4, 8]), [0.25, 0.25])


def test_errors_and_edge_cases():
    with pytest.raises(RuntimeError):
        ConformalCalibrator().calibrate([1.0])
    with pytest.raises(ValueError):
        ConformalCalibrator().fit([1.0, 2.0], [1.0], alpha=0.1)
    with pytest.raises(ValueError):
        ConformalCalibrator().fit([-1.0, 2.0], [1.0, 1.0], alpha=0.1)
    # zero uncertainty with a non-zero error is an infinite score
    calibrator = ConformalCalibrator().fit([0.0] * 5 + [1.0] * 15, [1.0] * 20, alpha=0.1)
    assert calibrator.quantile_ == math.inf


def test_small_calibration_sets_clip_the_level_and_say_so():
    """Fewer than ceil((n + 1)(1 - alpha)) scores: inf by the textbook rule, the largest score with ``clip`` (the
    level clipped to 1), and the record says which."""
    scores_u, errors = np.ones(5), np.array([0.1, 0.4, 0.2, 0.3, 0.5])
    textbook = ConformalCalibrator().fit(scores_u, errors, alpha=0.1)
    assert textbook.quantile_ == math.inf and textbook.record()['q_hat'] is None
    clipped = ConformalCalibrator().fit(scores_u, errors, alpha=0.1, clip=True, rule='atoms')
    assert clipped.quantile_ == 0.5
    record = clipped.record(n_structures=1)
    assert record == {
        'rule': 'atoms',
        'alpha': 0.1,
        'n_scores': 5,
        'quantile_level': 1.0,
        'level_clipped': True,
        'q_hat': 0.5,
        'n_structures': 1,
    }
    enough = ConformalCalibrator().fit(np.ones(19), np.arange(1.0, 20.0), alpha=0.1, clip=True)
    assert enough.quantile_ == 18.0 and not enough.record()['level_clipped']
    assert enough.record()['quantile_level'] == pytest.approx(18 / 19)
