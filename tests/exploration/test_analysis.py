"""Coverage by weighted recursive partitioning and auto-correlation on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.exploration.analysis import (
    autocorrelation,
    autocorrelation_time,
    coverage,
    coverage_curve,
    effective_sample_size,
)

BOUNDS = [(-np.pi, np.pi), (-np.pi, np.pi)]  # e.g. the dihedrals φ, ψ


def test_coverage_of_known_point_sets():
    # d = 2, 2 splits per dimension: k = 4; levels 1..3 have 4, 16, 64 nodes worth 1/4, 1/16, 1/64 each
    one = np.array([[0.1, 0.2]])
    assert coverage(one, BOUNDS, splits=2, height=3) == pytest.approx((1 / 4 + 1 / 16 + 1 / 64) / 3)
    # every finest cell visited once -> every node of every level visited -> 1
    centres = (np.arange(8) + 0.5) / 8 * 2 * np.pi - np.pi
    grid = np.stack(np.meshgrid(centres, centres), axis=-1).reshape(-1, 2)
    assert coverage(grid, BOUNDS, 2, 3) == pytest.approx(1.0)
    # all samples in one quadrant: a quarter of every level
    quadrant = grid[(grid[:, 0] < 0) & (grid[:, 1] < 0)]
    assert coverage(quadrant, BOUNDS, 2, 3) == pytest.approx(0.25)
    # revisits earn nothing; points outside the bounds are ignored
    assert coverage(np.repeat(one, 10, axis=0), BOUNDS, 2, 3) == coverage(one, BOUNDS, 2, 3)
    assert coverage(np.array([[10.0, 0.0]]), BOUNDS, 2, 3) == 0.0
    # the upper bound belongs to the last cell
    assert coverage(np.array([[np.pi, np.pi]]), BOUNDS, 2, 1) == pytest.approx(0.25)


def test_breadth_first_exploration_is_rewarded_over_getting_stuck():
    rng = np.random.default_rng(0)
    spread = rng.uniform(-np.pi, np.pi, (200, 2))
    stuck = rng.uniform(-np.pi, -np.pi / 2, (200, 2))  # one sixteenth of the space, densely sampled
    assert coverage(spread, BOUNDS, 2, 4) > 2 * coverage(stuck, BOUNDS, 2, 4)
    curve = coverage_curve(spread, BOUNDS, 2, 4)
    assert np.all(np.diff(curve) >= 0) and curve[-1] == pytest.approx(coverage(spread, BOUNDS, 2, 4))
    # different splits per dimension: k = 3 x 2 = 6 nodes on level 1
    assert coverage(np.array([[0.0, 0.0]]), BOUNDS, splits=(3, 2), height=1) == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        coverage(spread, BOUNDS, splits=1)


def _ar1(phi: float, n: int, seed: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, *shape))
    x = np.zeros((n, *shape))
    x[0] = noise[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def test_autocorrelation_of_an_ar1_process():
    phi = 0.8
    x = _ar1(phi, 40000, 1)
    acf = autocorrelation(x, max_lag=10)
    assert acf[0] == 1.0
    np.testing.assert_allclose(acf, phi ** np.arange(11), atol=0.03)
    assert autocorrelation_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)  # 9
    assert effective_sample_size(x) == pytest.approx(40000 / 9, rel=0.1)


def test_autocorrelation_of_multicomponent_observables():
    # positions-like (T, N, 3): every component is AR(1) with φ = 0.5 -> τ = 3
    x = _ar1(0.5, 5000, 2, shape=(4, 3))
    assert autocorrelation_time(x) == pytest.approx(3.0, rel=0.1)
    white = np.random.default_rng(3).standard_normal((20000, 5))
    assert autocorrelation_time(white) == pytest.approx(1.0, abs=0.05)
    # a sine (with many periods) has C(t) ≈ cos(2π t / period)
    t = np.arange(10000)
    acf = autocorrelation(np.sin(2 * np.pi * t / 50), max_lag=50)
    np.testing.assert_allclose(acf, np.cos(2 * np.pi * np.arange(51) / 50), atol=0.02)
    constant = autocorrelation(np.ones(10))
    assert constant[0] == 1.0 and np.all(constant[1:] == 0)


def _expected_ar1_estimates(phi: float, n: int) -> tuple[np.ndarray, float]:
    """Large-sample limit of the pooled estimators on AR(1) series of length n: exact, from the covariance matrix.

    Centring on the sample mean biases C(t) by about -(1 - C(t)) τ/n, far more than the (1 - t/T) weight; so a short
    series is compared with the exact expectation E[Σ_s δx_s δx_{s+t}]/(n - t) (δx = x - x̄) of the unbiased ACF, and
    with the TFP τ computed from it, instead of with the asymptotic τ = (1 + φ)/(1 - φ).
    """
    t = np.arange(n)
    covariance = phi ** np.abs(t[:, None] - t[None, :]) / (1 - phi**2)
    centre = np.eye(n) - 1.0 / n
    centred = centre @ covariance @ centre
    acf = np.array([np.trace(centred, offset=lag) / (n - lag) for lag in range(n)])
    acf /= acf[0]
    cut = int(np.flatnonzero(acf < 0)[0])
    lags = np.arange(1, cut)
    return acf, float(1.0 + 2.0 * np.sum((1.0 - lags / n) * acf[1:cut]))


def test_autocorrelation_estimators_are_the_unbiased_acf_and_the_tfp_time():
    """Unbiased ACF (pairs normalised by T - t) and τ = 1 + 2 Σ (1 - t/T) C(t) (TFP), each weight applied once.

    8000 pooled AR(1) series of 100 steps (φ = 0.95): the biased 1/T ACF is off by up to 0.17 at lag 49 and the
    doubly weighted τ by 6 %; the estimators here agree with their exact expectations within 0.01 and 1.5 %.
    """
    phi, n = 0.95, 100
    x = _ar1(phi, n, 4, shape=(8000,))
    expected_acf, expected_tau = _expected_ar1_estimates(phi, n)
    np.testing.assert_allclose(autocorrelation(x, max_lag=49), expected_acf[:50], atol=0.03)
    assert autocorrelation_time(x) == pytest.approx(expected_tau, rel=0.03)  # 16.2 (asymptotic τ: 39)
