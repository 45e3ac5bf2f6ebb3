"""Tests of the HAL Bayesian ridge committee (seed paper 002, eq. 3-10 and 22-27)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.uncertainty.hal import (
    BayesianRidge,
    build_design_matrix,
    committee_energy_std,
    energy_std_gradient,
    hal_stop,
    relative_force_uncertainty,
    softmax_score,
)


def _linear_data(n_obs=3000, n_basis=8, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    design = rng.standard_normal((n_obs, n_basis))
    coef = rng.standard_normal(n_basis)
    targets = design @ coef + noise * rng.standard_normal(n_obs)
    return design, targets, coef


def test_evidence_maximisation_recovers_noise_precision():
    design, targets, coef = _linear_data(noise=0.1)
    model = BayesianRidge().fit(design, targets)
    assert model.converged_
    assert model.lambda_ == pytest.approx(100.0, rel=0.1)  # 1 / 0.1^2; sampling error ~ sqrt(2 / N) = 2.6 %
    assert 0.05 < model.alpha_ < 20.0  # prior precision of N(0, 1) coefficients, only 8 "samples" of it
    np.testing.assert_allclose(model.coef_, coef, atol=0.01)


def test_fixed_point_is_the_maximum_of_the_log_evidence_eq27():
    design, targets, _ = _linear_data(n_obs=400, n_basis=6, noise=0.3, seed=1)
    model = BayesianRidge().fit(design, targets)
    alpha, lam = model.alpha_, model.lambda_
    assert model.log_evidence_ == pytest.approx(model.log_evidence(alpha, lam))
    step = 1e-4
    d_log_alpha = (model.log_evidence(alpha * np.exp(step), lam) - model.log_evidence(alpha * np.exp(-step), lam)) / (
        2 * step
    )
    d_log_lambda = (model.log_evidence(alpha, lam * np.exp(step)) - model.log_evidence(alpha, lam * np.exp(-step))) / (
        2 * step
    )
    assert abs(d_log_alpha) < 1e-4
    assert abs(d_log_lambda) < 1e-4
    for factor_a, factor_l in [(1.5, 1), (1 / 1.5, 1), (1, 1.2), (1, 1 / 1.2), (2, 0.5)]:
        assert model.log_evidence(alpha * factor_a, lam * factor_l) < model.log_evidence_


def test_log_evidence_matches_gaussian_marginal_likelihood():
    """Eq. (27) equals ln N(y | 0, alpha^-1 Psi Psi^T + lambda^-1 I), the marginal of eq. (25)."""
    design, targets, _ = _linear_data(n_obs=30, n_basis=5, noise=0.5, seed=2)
    model = BayesianRidge().fit(design, targets)
    alpha, lam = 0.7, 3.0
    cov = design @ design.T / alpha + np.eye(30) / lam
    _, logdet = np.linalg.slogdet(cov)
    expected = -0.5 * (targets @ np.linalg.solve(cov, targets) + logdet + 30 * np.log(2 * np.pi))
    assert model.log_evidence(alpha, lam) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize('shape', [(50, 6), (5, 12)])
def test_posterior_matches_closed_form_eq22(shape):
    design, targets, _ = _linear_data(n_obs=shape[0], n_basis=shape[1], noise=0.2, seed=3)
    model = BayesianRidge(alpha=0.5, lambda_=4.0).fit(design, targets)
    precision = 0.5 * np.eye(shape[1]) + 4.0 * design.T @ design  # eq. (4)
    covariance = np.linalg.inv(precision)
    np.testing.assert_allclose(model.covariance_, covariance, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model.coef_, 4.0 * covariance @ design.T @ targets, rtol=1e-8, atol=1e-12)
    # ridge equivalence: eta = alpha / lambda (eq. 24)
    ridge = np.linalg.solve(design.T @ design + 0.125 * np.eye(shape[1]), design.T @ targets)
    np.testing.assert_allclose(model.coef_, ridge, rtol=1e-8, atol=1e-12)
    # exact predictive std eq. (3)
    b = np.linspace(-1, 1, shape[1])
    assert model.predictive_std(b) == pytest.approx(np.sqrt(1 / 4.0 + b @ covariance @ b))


def test_committee_samples_have_posterior_mean_and_covariance():
    design, targets, _ = _linear_data(n_obs=20, n_basis=4, noise=0.5, seed=4)
    model = BayesianRidge().fit(design, targets)
    committee = model.sample_committee(40_000, seed=5)
    assert committee.shape == (40_000, 4)
    covariance = model.covariance_
    std = np.sqrt(np.diag(covariance))
    assert np.all(np.abs(committee.mean(axis=0) - model.coef_) < 4 * std / np.sqrt(40_000))
    sample_cov = np.cov(committee, rowvar=False)
    assert np.linalg.norm(sample_cov - covariance) / np.linalg.norm(covariance) < 0.03
    np.testing.assert_array_equal(model.sample_committee(8, seed=7), model.sample_committee(8, seed=7))
    assert model.sample_committee(32, seed=1).shape == (32, 4)


def _poly(x, degree=4):
    return np.stack([np.asarray(x, dtype=float) ** p for p in range(degree + 1)], axis=-1)


def test_committee_sigma_grows_away_from_data_and_matches_exact_eq3():
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, 200)
    targets = np.sin(2 * x) + 0.05 * rng.standard_normal(200)
    model = BayesianRidge().fit(_poly(x), targets)
    model.sample_committee(4000, seed=0)
    points = _poly([0.0, 0.9, 1.5, 3.0])
    sigma = model.committee_energy_std(points)
    assert np.all(np.diff(sigma) > 0)
    assert sigma[-1] > 10 * sigma[0]
    assert sigma[0] >= np.sqrt(1 / model.lambda_)  # eq. (5) includes the noise term 1/lambda
    np.testing.assert_allclose(sigma, model.predictive_std(points), rtol=0.05)
    # module function agrees with the method
    energies = model.committee_ @ points.T
    np.testing.assert_allclose(committee_energy_std(energies, model.predict(points), model.lambda_), sigma)


def test_relative_force_uncertainty_eq6():
    committee = np.zeros((2, 3, 3))
    committee[0, :, 0] = [1.0, 0.0, 2.0]
    committee[1, :, 0] = [3.0, 0.0, 2.0]
    mean = np.zeros((3, 3))
    mean[:, 0] = [2.0, 0.0, 2.0]
    f = relative_force_uncertainty(committee, mean, eps=0.2)
    np.testing.assert_allclose(f, [1.0 / 2.2, 0.0, 0.0])
    # with the committee mean as F-bar
    np.testing.assert_allclose(relative_force_uncertainty(committee, eps=0.5), [1.0 / 2.5, 0.0, 0.0])
    with pytest.raises(ValueError):
        relative_force_uncertainty(committee, mean, eps=0.0)


def test_softmax_score_and_stopping_criterion_eq7_eq8():
    f = np.array([0.1, 0.3, 0.2])
    s = softmax_score(f)
    np.testing.assert_allclose(s, np.exp(f) / np.exp(f).sum())
    assert s.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(softmax_score(f + 1000.0), s)  # numerically stable
    uniform = np.full(32, 0.08)
    assert not hal_stop(uniform)  # max softmax 1/32
    spike = uniform.copy()
    spike[5] = 0.08 + np.log(31) + 0.01  # exp(f_5) > sum of the others
    assert hal_stop(spike)
    spike[5] = 0.08 + np.log(31) - 0.01
    assert not hal_stop(spike)
    assert hal_stop(uniform, f_tol=0.05, s_tol=None)  # eq. (7)
    assert not hal_stop(uniform, f_tol=0.1, s_tol=None)
    assert hal_stop(uniform, f_tol=0.05)  # either criterion triggers
    with pytest.raises(ValueError):
        hal_stop(uniform, f_tol=None, s_tol=None)


# toy "last-layer features": per-atom radial Gaussians, with analytic force features -d(sum_i B_i)/dr_j
_CENTRES = np.array([0.9, 1.3, 1.7, 2.1, 2.5])


def _features(positions):
    diff = positions[:, None, :] - positions[None, :, :]
    dist = np.linalg.norm(diff, axis=-1)
    n = len(positions)
    mask = ~np.eye(n, dtype=bool)
    gauss = np.exp(-((dist[..., None] - _CENTRES) ** 2) / 0.18) * mask[..., None]  # (N, N, d)
    atom = gauss.sum(axis=1)
    dgauss = -2 * (dist[..., None] - _CENTRES) / 0.18 * gauss
    unit = np.where(mask[..., None], diff / np.where(mask, dist, 1.0)[..., None], 0.0)  # (N, N, 3)
    # d(sum_i B_i)/dr_j = 2 sum_l g'(r_jl) (r_j - r_l)/r_jl ; force features are minus that
    force = -2 * np.einsum('jld,jla->jad', dgauss, unit)
    return atom, force


def _toy_model(seed=0):
    rng = np.random.default_rng(seed)
    true_coef = np.array([0.5, -1.0, 0.3, 0.2, -0.1])
    base = np.array([[0, 0, 0], [1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5]], dtype=float)
    totals, energies, force_blocks, forces = [], [], [], []
    for _ in range(15):
        positions = base + 0.15 * rng.standard_normal(base.shape)
        atom, force = _features(positions)
        totals.append(atom.sum(axis=0))
        energies.append(atom.sum(axis=0) @ true_coef + 0.01 * rng.standard_normal())
        force_blocks.append(force)
        forces.append(force @ true_coef + 0.01 * rng.standard_normal((4, 3)))
    design, targets = build_design_matrix(np.array(totals), np.array(energies), force_blocks, forces, w_e=5.0, w_f=1.0)
    assert design.shape == (15 + 15 * 12, 5)
    np.testing.assert_allclose(design[0], np.sqrt(5.0) * totals[0])
    np.testing.assert_allclose(design[15:27], force_blocks[0].reshape(12, 5))
    model = BayesianRidge().fit(design, targets)
    model.sample_committee(32, seed=seed)
    return model, base


def test_force_features_are_minus_feature_gradient():
    rng = np.random.default_rng(3)
    positions = np.array([[0, 0, 0], [1.4, 0.1, 0], [0.2, 1.5, 0.1]]) + 0.05 * rng.standard_normal((3, 3))
    _, force = _features(positions)
    h = 1e-6
    for j in range(3):
        for a in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[j, a] += h
            minus[j, a] -= h
            numeric = -(_features(plus)[0].sum(0) - _features(minus)[0].sum(0)) / (2 * h)
            np.testing.assert_allclose(force[j, a], numeric, atol=1e-6)


def test_sigma_gradient_eq9_eq10_matches_finite_differences():
    model, base = _toy_model()
    positions = base + np.array([[0.3, -0.2, 0.1], [0.4, 0.2, 0.0], [0.0, 0.5, -0.3], [-0.2, 0.1, 0.6]])
    atom, force = _features(positions)
    result = model.evaluate(atom, force)
    assert result.sigma == pytest.approx(float(model.committee_energy_std(atom.sum(axis=0))))
    assert result.committee_forces.shape == (32, 4, 3)

    def sigma_at(pos):
        return float(model.committee_energy_std(_features(pos)[0].sum(axis=0)))

    def energy_at(pos):
        return float(model.predict(_features(pos)[0].sum(axis=0)))

    h = 1e-5
    numeric_grad = np.zeros((4, 3))
    numeric_forces = np.zeros((4, 3))
    for j in range(4):
        for a in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[j, a] += h
            minus[j, a] -= h
            numeric_grad[j, a] = (sigma_at(plus) - sigma_at(minus)) / (2 * h)
            numeric_forces[j, a] = -(energy_at(plus) - energy_at(minus)) / (2 * h)
    scale = np.abs(numeric_grad).max()
    assert scale > 0
    np.testing.assert_allclose(result.grad_sigma, numeric_grad, atol=1e-6 * max(scale, 1.0))
    np.testing.assert_allclose(result.forces, numeric_forces, atol=1e-6)
    # module-level eq. (9)-(10) agrees and HAL forces of E - tau sigma are F-bar + tau grad sigma
    direct = energy_std_gradient(
        result.committee_energies, result.energy, result.committee_forces, result.forces, result.sigma
    )
    np.testing.assert_allclose(direct, result.grad_sigma)
    np.testing.assert_allclose(result.biased_forces(0.1), result.forces + 0.1 * numeric_grad, atol=1e-6)
    np.testing.assert_allclose(result.f, model.relative_force_uncertainty(force))
    np.testing.assert_allclose(result.softmax.sum(), 1.0)


def test_input_validation():
    with pytest.raises(RuntimeError):
        BayesianRidge().sample_committee(4)
    design, targets, _ = _linear_data(n_obs=10, n_basis=3)
    with pytest.raises(ValueError):
        BayesianRidge().fit(design, targets[:5])
    model = BayesianRidge().fit(design, targets)
    with pytest.raises(RuntimeError):
        model.committee_energy_std(design[0])
    with pytest.raises(ValueError):
        build_design_matrix(design, targets, force_features=[np.zeros((2, 3, 3))])
