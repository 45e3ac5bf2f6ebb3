"""Bayesian ridge regression committee of seed paper 002 (van der Oord et al., *Hyperactive learning*, HAL).

A linear model on (last-layer) features: the site energy is ``E_i = c . B_i`` (eq. 2) and the total energy
``E = c . B`` with ``B = sum_i B_i``. Forces are linear in ``c`` too, ``F_j = D_j c`` with the *force features*
``D_j = -dB/dr_j``.

Shapes and units used throughout (one structure of ``N`` atoms, ``d`` features, ``K`` committee members):

* ``atom_features``: ``(N, d)``, the per-atom features ``B_i`` (any unit; the coefficients carry eV per feature unit);
* ``features``: ``(..., d)``, total-energy features ``B = sum_i B_i`` (vectorised over leading axes);
* ``force_features``: ``(N, 3, d)``, ``D_j = -d(sum_i B_i)/dr_j`` in feature units per Å, so ``D @ c`` is in eV/Å;
* energies in eV, forces and bias forces in eV/Å, precisions ``alpha`` in 1/eV² per squared feature unit and
  ``lambda_`` in 1/(weighted target unit)².

Implemented: the weighted design matrix of the loss eq. (18)-(19); Bayesian ridge regression with the isotropic prior
eq. (23), posterior eq. (22) / (4), evidence maximisation of ``alpha`` (prior precision) and ``lambda_`` (noise
precision) for the log evidence eq. (27) by MacKay's fixed-point updates; posterior committee sampling, the committee
energy standard deviation ``sigma~_E`` (eq. 5, exact version eq. 3); the relative force uncertainty ``f_i`` (eq. 6),
the stopping criteria (eq. 7-8) and the gradient of ``sigma~`` (eq. 9-10), which is the HAL bias force (eq. 11).
A constant offset (intercept) is not fitted separately: append a constant per-atom feature if one is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import float_array

__all__ = [
    'DEFAULT_COMMITTEE_SIZE',
    'DEFAULT_EPSILON',
    'DEFAULT_S_TOL',
    'BayesianRidge',
    'HALEvaluation',
    'build_design_matrix',
    'committee_energy_std',
    'energy_std_gradient',
    'hal_stop',
    'relative_force_uncertainty',
    'softmax_score',
]

#: Committee size ``K`` used in the paper.
DEFAULT_COMMITTEE_SIZE = 32
#: Regulariser ``epsilon`` of eq. (6) in eV/Å ("often set to around 0.2 eV/Å").
DEFAULT_EPSILON = 0.2
#: Default softmax tolerance ``s_tol`` of eq. (8).
DEFAULT_S_TOL = 0.5


# ----------------------------------------------------------------------------------------------------------------------
# design matrix, eq. (18)-(19)
# ----------------------------------------------------------------------------------------------------------------------


def build_design_matrix(
    features: Any,
    energies: Any,
    force_features: Sequence[Any] | None = None,
    forces: Sequence[Any] | None = None,
    w_e: float = 5.0,
    w_f: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted design matrix ``Psi`` and targets ``y`` such that ``||y - Psi c||^2`` is the loss eq. (18).

    ``features``: ``(S, d)`` total-energy features ``B_R`` of ``S`` structures; ``energies``: ``(S,)`` in eV.
    ``force_features``: per structure ``(N_s, 3, d)`` force features ``-dB/dr`` (1/Å); ``forces``: per structure
    ``(N_s, 3)`` in eV/Å. Energy rows are scaled by ``sqrt(w_e)``, force rows by ``sqrt(w_f)`` (paper defaults of the Si
    example, ``w_E / w_F = 5 / 1``). Rows are ordered: all energies first, then the forces of each structure
    (atom-major, then x, y, z). Returns ``(Psi, y)`` of shapes ``(N_obs, d)`` and ``(N_obs,)``.
    """
    if w_e < 0 or w_f < 0:
        raise ValueError(f'weights must be non-negative, got w_e={w_e}, w_f={w_f}')
    features = float_array(features, 'features', 2)
    energies = float_array(energies, 'energies', 1)
    if energies.shape[0] != features.shape[0]:
        raise ValueError(f'{features.shape[0]} feature rows but {energies.shape[0]} energies')
    rows = [math.sqrt(w_e) * features]
    targets = [math.sqrt(w_e) * energies]
    if (force_features is None) != (forces is None):
        raise ValueError('force_features and forces must be given together')
    if force_features is not None and forces is not None:
        if len(force_features) != len(forces):
            raise ValueError(f'{len(force_features)} force-feature blocks but {len(forces)} force arrays')
        for index, (block, force) in enumerate(zip(force_features, forces, strict=True)):
            block = float_array(block, f'force_features[{index}]', 3)
            force = float_array(force, f'forces[{index}]', 2)
            if block.shape[:2] != force.shape or block.shape[1] != 3 or block.shape[2] != features.shape[1]:
                raise ValueError(
                    f'structure {index}: force features {block.shape} do not match forces {force.shape} '
                    f'and {features.shape[1]} features'
                )
            rows.append(math.sqrt(w_f) * block.reshape(-1, block.shape[2]))
            targets.append(math.sqrt(w_f) * force.reshape(-1))
    return np.concatenate(rows, axis=0), np.concatenate(targets)


# ----------------------------------------------------------------------------------------------------------------------
# model-agnostic committee formulas, eq. (5)-(10)
# ----------------------------------------------------------------------------------------------------------------------


def committee_energy_std(committee_energies: Any, mean_energy: Any, noise_precision: float | None = None) -> np.ndarray:
    """Committee estimate ``sigma~_E`` of eq. (5) in eV.

    ``committee_energies``: ``(K, ...)`` energies ``E^k``; ``mean_energy``: ``(...)`` the mean prediction ``E-bar``
    (for the Bayesian committee the posterior-mean model, not the committee average). ``noise_precision`` is
    ``lambda``; its ``1/lambda`` term is left out when ``None``.
    """
    energies = float_array(committee_energies, 'committee_energies')
    mean = float_array(mean_energy, 'mean_energy')
    variance = np.mean((energies - mean) ** 2, axis=0)
    if noise_precision is not None:
        variance = variance + 1.0 / noise_precision
    return np.sqrt(variance)


def relative_force_uncertainty(
    committee_forces: Any, mean_forces: Any = None, eps: float = DEFAULT_EPSILON
) -> np.ndarray:
    """Relative force uncertainty ``f_i`` of eq. (6), dimensionless, shape ``(N,)``.

    ``committee_forces``: ``(K, N, 3)`` in eV/Å; ``mean_forces``: ``(N, 3)`` mean prediction ``F-bar_i`` (the
    committee average when ``None``); ``eps`` in eV/Å.
    ``f_i = (1/K) sum_k ||F_i^k - F-bar_i|| / (||F-bar_i|| + eps)``.
    """
    forces = float_array(committee_forces, 'committee_forces', 3)
    if eps <= 0:
        raise ValueError(f'eps must be positive, got {eps}')
    mean = forces.mean(axis=0) if mean_forces is None else float_array(mean_forces, 'mean_forces', 2)
    deviation = np.linalg.norm(forces - mean, axis=-1).mean(axis=0)
    return deviation / (np.linalg.norm(mean, axis=-1) + eps)


def softmax_score(f: Any) -> np.ndarray:
    """Softmax ``s(f_i) = exp(f_i) / sum_j exp(f_j)`` over the atoms of one structure, eq. (8); values in ``[0, 1]``."""
    f = float_array(f, 'f', 1)
    if f.size == 0:
        raise ValueError('f must hold at least one atom')
    shifted = np.exp(f - f.max())
    return shifted / shifted.sum()


def hal_stop(f: Any, f_tol: float | None = None, s_tol: float | None = DEFAULT_S_TOL) -> bool:
    """HAL stopping criterion: ``max_i f_i > f_tol`` (eq. 7) and/or ``max_i s(f_i) > s_tol`` (eq. 8).

    With the defaults only the softmax criterion eq. (8) with ``s_tol = 0.5`` is used (the paper's choice). When both
    tolerances are given the dynamics stops as soon as either is exceeded; passing ``s_tol=None`` gives eq. (7) alone.
    """
    if f_tol is None and s_tol is None:
        raise ValueError('at least one of f_tol and s_tol must be given')
    f = float_array(f, 'f', 1)
    stop = False
    if f_tol is not None:
        stop = stop or bool(f.max() > f_tol)
    if s_tol is not None:
        stop = stop or bool(softmax_score(f).max() > s_tol)
    return stop


def energy_std_gradient(
    committee_energies: Any, mean_energy: float, committee_forces: Any, mean_forces: Any, sigma: float
) -> np.ndarray:
    """Gradient ``grad sigma~`` w.r.t. positions, eq. (9)-(10), shape ``(N, 3)`` in eV/Å.

    ``committee_energies``: ``(K,)`` eV; ``mean_energy``: ``E-bar`` eV; ``committee_forces``: ``(K, N, 3)`` with
    ``F^k = -grad E^k``; ``mean_forces``: ``(N, 3)`` with ``F-bar = -grad E-bar``; ``sigma``: ``sigma~`` of eq. (5).
    ``grad sigma~^2 = (2/K) sum_k (E^k - E-bar)(F-bar - F^k)`` and ``grad sigma~ = grad sigma~^2 / (2 sigma~)``.
    The HAL bias force is ``F^sigma = grad sigma~`` (eq. 11); the biased forces of ``E - tau sigma`` are
    ``F-bar + tau grad sigma~``.
    """
    energies = float_array(committee_energies, 'committee_energies', 1)
    forces = float_array(committee_forces, 'committee_forces', 3)
    mean_forces = float_array(mean_forces, 'mean_forces', 2)
    if sigma <= 0:
        raise ValueError(f'sigma must be positive, got {sigma}')
    deviation = energies - float(mean_energy)
    grad_variance = 2.0 / energies.shape[0] * np.einsum('k,kna->na', deviation, mean_forces[None] - forces)
    return grad_variance / (2.0 * sigma)


# ----------------------------------------------------------------------------------------------------------------------
# Bayesian ridge regression, eq. (22)-(27)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HALEvaluation:
    """Committee quantities of one structure (see :meth:`BayesianRidge.evaluate`).

    ``energy`` (eV) and ``forces`` ``(N, 3)`` (eV/Å) of the posterior-mean model; ``sigma`` = ``sigma~_E`` (eV, eq. 5);
    ``grad_sigma`` ``(N, 3)`` (eV/Å, eq. 9-10, the bias force eq. 11); ``f`` ``(N,)`` (eq. 6); ``softmax`` ``(N,)``
    (eq. 8); ``committee_energies`` ``(K,)`` and ``committee_forces`` ``(K, N, 3)``.
    """

    energy: float
    forces: np.ndarray
    sigma: float
    grad_sigma: np.ndarray
    f: np.ndarray
    softmax: np.ndarray
    committee_energies: np.ndarray
    committee_forces: np.ndarray

    def stop(self, f_tol: float | None = None, s_tol: float | None = DEFAULT_S_TOL) -> bool:
        """Stopping criterion eq. (7)/(8) for this structure, see :func:`hal_stop`."""
        return hal_stop(self.f, f_tol=f_tol, s_tol=s_tol)

    def biased_forces(self, tau: float) -> np.ndarray:
        """Forces of the HAL energy ``E - tau sigma`` (eq. 1): ``F-bar + tau grad sigma~``, eV/Å."""
        return self.forces + tau * self.grad_sigma


class BayesianRidge:
    """Bayesian ridge regression with evidence maximisation (paper 002, eq. 22-27).

    Prior ``c ~ N(0, alpha^-1 I)`` (eq. 23), i.i.d. Gaussian noise of precision ``lambda`` (eq. 21). The posterior has
    ``Sigma^-1 = alpha I + lambda Psi^T Psi`` and mean ``c-bar = lambda Sigma Psi^T y`` (eq. 22 / 4). ``alpha`` and
    ``lambda`` maximise the log evidence eq. (27); the maximiser is found with MacKay's fixed-point updates
    ``alpha = gamma / ||c-bar||^2``, ``lambda = (N_obs - gamma) / ||y - Psi c-bar||^2`` with the effective number of
    parameters ``gamma = sum_j lambda e_j / (alpha + lambda e_j)`` (``e_j`` the eigenvalues of ``Psi^T Psi``), whose
    fixed point is exactly the stationary point of eq. (27). Pass ``alpha`` / ``lambda_`` to keep either fixed.

    Fitted attributes: ``alpha_``, ``lambda_``, ``coef_`` (``c-bar``, ``(d,)``), ``log_evidence_``, ``n_iter_``,
    ``converged_``, and after :meth:`sample_committee` ``committee_`` (``(K, d)``).
    """

    def __init__(
        self,
        alpha: float | None = None,
        lambda_: float | None = None,
        max_iter: int = 500,
        tol: float = 1e-8,
        alpha_init: float = 1.0,
        lambda_init: float | None = None,
    ) -> None:
        for name, value in (('alpha', alpha), ('lambda_', lambda_), ('alpha_init', alpha_init)):
            if value is not None and not value > 0:
                raise ValueError(f'{name} must be positive, got {value}')
        if lambda_init is not None and not lambda_init > 0:
            raise ValueError(f'lambda_init must be positive, got {lambda_init}')
        self.alpha = alpha
        self.lambda_fixed = lambda_
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.alpha_init = float(alpha_init)
        self.lambda_init = lambda_init
        self.committee_: np.ndarray | None = None

    # -- fitting -------------------------------------------------------------------------------------------------------

    def fit(self, design: Any, targets: Any) -> BayesianRidge:
        """Fit on the (weighted) design matrix ``Psi`` ``(N_obs, d)`` and targets ``y`` ``(N_obs,)``, eq. (19)-(27)."""
        psi = float_array(design, 'design', 2)
        y = float_array(targets, 'targets', 1)
        if psi.shape[0] != y.shape[0]:
            raise ValueError(f'design has {psi.shape[0]} rows but there are {y.shape[0]} targets')
        if psi.shape[0] == 0:
            raise ValueError('cannot fit on zero observations')
        if not (np.all(np.isfinite(psi)) and np.all(np.isfinite(y))):
            raise ValueError('design and targets must be finite')
        n_obs, n_basis = psi.shape
        eigvals, eigvecs = np.linalg.eigh(psi.T @ psi)
        eigvals = np.clip(eigvals, 0.0, None)
        projected = eigvecs.T @ (psi.T @ y)  # Q^T Psi^T y
        self._psi, self._y = psi, y
        self.eigvals_, self.eigvecs_, self._projected = eigvals, eigvecs, projected
        self.n_obs_, self.n_basis_ = n_obs, n_basis

        variance = float(np.var(y))
        alpha = self.alpha if self.alpha is not None else self.alpha_init
        if self.lambda_fixed is not None:
            lam = self.lambda_fixed
        elif self.lambda_init is not None:
            lam = self.lambda_init
        else:
            lam = 1.0 / variance if variance > 0 else 1.0
        tiny = np.finfo(np.float64).tiny
        converged = self.alpha is not None and self.lambda_fixed is not None
        n_iter = 0
        while not converged and n_iter < self.max_iter:
            n_iter += 1
            coef = self._mean(alpha, lam)
            gamma = float(np.sum(lam * eigvals / (alpha + lam * eigvals)))
            new_alpha = alpha if self.alpha is not None else gamma / max(float(coef @ coef), tiny)
            residual = float(np.sum((y - psi @ coef) ** 2))
            new_lam = lam if self.lambda_fixed is not None else max(n_obs - gamma, 0.0) / max(residual, tiny)
            new_alpha, new_lam = max(new_alpha, tiny), max(new_lam, tiny)
            change = max(abs(new_alpha - alpha) / alpha, abs(new_lam - lam) / lam)
            alpha, lam = new_alpha, new_lam
            converged = change < self.tol
        self.alpha_, self.lambda_ = float(alpha), float(lam)
        self.n_iter_, self.converged_ = n_iter, bool(converged)
        self.coef_ = self._mean(self.alpha_, self.lambda_)
        self.log_evidence_ = self.log_evidence(self.alpha_, self.lambda_)
        self.committee_ = None
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, 'coef_'):
            raise RuntimeError('BayesianRidge is not fitted yet; call fit() first')

    def _mean(self, alpha: float, lam: float) -> np.ndarray:
        """Posterior mean ``c-bar = lambda Sigma Psi^T y`` (eq. 22) for given hyper-parameters."""
        return self.eigvecs_ @ (lam * self._projected / (alpha + lam * self.eigvals_))

    def log_evidence(self, alpha: float, lambda_: float) -> float:
        """Log marginal likelihood ``ln p(y | alpha, lambda)`` of eq. (27) on the fitted data, with ``c = c-bar``."""
        self._check_fitted()
        coef = self._mean(alpha, lambda_)
        residual = float(np.sum((self._y - self._psi @ coef) ** 2))
        log_det_sigma = -float(np.sum(np.log(alpha + lambda_ * self.eigvals_)))
        return (
            0.5 * self.n_basis_ * math.log(alpha)
            + 0.5 * self.n_obs_ * math.log(lambda_)
            - 0.5 * lambda_ * residual
            - 0.5 * alpha * float(coef @ coef)
            + 0.5 * log_det_sigma
            - 0.5 * self.n_obs_ * math.log(2.0 * math.pi)
        )

    @property
    def covariance_(self) -> np.ndarray:
        """Posterior covariance ``Sigma = (alpha I + lambda Psi^T Psi)^-1`` (eq. 4), ``(d, d)``."""
        self._check_fitted()
        scale = 1.0 / (self.alpha_ + self.lambda_ * self.eigvals_)
        return (self.eigvecs_ * scale) @ self.eigvecs_.T

    # -- committee -----------------------------------------------------------------------------------------------------

    def sample_committee(self, n_members: int = DEFAULT_COMMITTEE_SIZE, seed: Any = None) -> np.ndarray:
        """Draw ``K`` parameter vectors ``c^k ~ N(c-bar, Sigma)`` (exact posterior samples), ``(K, d)``.

        ``seed``: int, ``numpy.random.Generator`` or ``None``. The committee is stored as ``committee_`` and used by
        the other methods unless one is passed explicitly.
        """
        self._check_fitted()
        if n_members < 1:
            raise ValueError(f'the committee needs at least one member, got {n_members}')
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((n_members, self.n_basis_))
        scale = 1.0 / np.sqrt(self.alpha_ + self.lambda_ * self.eigvals_)
        self.committee_ = self.coef_ + (noise * scale) @ self.eigvecs_.T
        return self.committee_

    def _committee(self, committee: Any) -> np.ndarray:
        if committee is not None:
            committee = float_array(committee, 'committee', 2)
            if committee.shape[1] != self.n_basis_:
                raise ValueError(f'committee has {committee.shape[1]} parameters, the model {self.n_basis_}')
            return committee
        if self.committee_ is None:
            raise RuntimeError('no committee: call sample_committee() first or pass committee=')
        return self.committee_

    # -- predictions ---------------------------------------------------------------------------------------------------

    def predict(self, features: Any) -> np.ndarray:
        """Posterior-mean energy ``E-bar = c-bar . B`` in eV for total features ``(..., d)``."""
        self._check_fitted()
        return float_array(features, 'features') @ self.coef_

    def predictive_std(self, features: Any) -> np.ndarray:
        """Exact posterior-predictive standard deviation ``sigma_E = sqrt(1/lambda + B^T Sigma B)`` (eq. 3), eV."""
        self._check_fitted()
        projected = float_array(features, 'features') @ self.eigvecs_
        variance = np.sum(projected**2 / (self.alpha_ + self.lambda_ * self.eigvals_), axis=-1)
        return np.sqrt(1.0 / self.lambda_ + variance)

    def committee_energy_std(self, features: Any, committee: Any = None) -> np.ndarray:
        """Committee estimate ``sigma~_E`` (eq. 5) in eV for total features ``B`` of shape ``(..., d)``."""
        self._check_fitted()
        features = float_array(features, 'features')
        members = self._committee(committee)
        energies = np.moveaxis(features @ members.T, -1, 0)
        return committee_energy_std(energies, features @ self.coef_, self.lambda_)

    def relative_force_uncertainty(
        self, force_features: Any, eps: float = DEFAULT_EPSILON, committee: Any = None
    ) -> np.ndarray:
        """``f_i`` of eq. (6) for force features ``(N, 3, d)``; ``F-bar`` is the posterior-mean force."""
        self._check_fitted()
        force_features = float_array(force_features, 'force_features', 3)
        members = self._committee(committee)
        forces = np.einsum('nad,kd->kna', force_features, members)
        return relative_force_uncertainty(forces, force_features @ self.coef_, eps=eps)

    def evaluate(
        self, atom_features: Any, force_features: Any, eps: float = DEFAULT_EPSILON, committee: Any = None
    ) -> HALEvaluation:
        """All HAL quantities of one structure from per-atom features ``(N, d)`` and force features ``(N, 3, d)``.

        ``force_features[j] = -d(sum_i B_i)/dr_j``. Returns energies/forces of the mean model, ``sigma~`` (eq. 5), its
        gradient (eq. 9-10), ``f_i`` (eq. 6) and the softmax scores (eq. 8).
        """
        self._check_fitted()
        atom_features = float_array(atom_features, 'atom_features', 2)
        force_features = float_array(force_features, 'force_features', 3)
        if force_features.shape[0] != atom_features.shape[0] or force_features.shape[1] != 3:
            raise ValueError(
                f'force features {force_features.shape} do not match {atom_features.shape[0]} atoms (N, 3, d)'
            )
        members = self._committee(committee)
        total = atom_features.sum(axis=0)
        energy = float(total @ self.coef_)
        energies = members @ total
        forces = force_features @ self.coef_
        committee_forces = np.einsum('nad,kd->kna', force_features, members)
        sigma = float(committee_energy_std(energies, energy, self.lambda_))
        grad = energy_std_gradient(energies, energy, committee_forces, forces, sigma)
        f = relative_force_uncertainty(committee_forces, forces, eps=eps)
        return HALEvaluation(
            energy=energy,
            forces=forces,
            sigma=sigma,
            grad_sigma=grad,
            f=f,
            softmax=softmax_score(f),
            committee_energies=energies,
            committee_forces=committee_forces,
        )
