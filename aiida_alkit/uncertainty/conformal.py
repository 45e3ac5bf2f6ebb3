"""Inductive conformal prediction (ICP) for uncertainty calibration, seed paper 003 (Zaverkin et al. 2024), Methods.

Steps of the paper: (1) compute errors on a held-out calibration set of size ``n``; (2) compute the uncertainties
``u``; (3) form the nonconformity scores ``s = |error| / u``; (4) take the ``ceil((n + 1)(1 - alpha)) / n`` empirical
quantile ``q-hat`` of the scores; (5) the calibrated uncertainty of a new point is ``q-hat * u``. For exchangeable
data ``P(|error| <= q-hat * u) >= 1 - alpha`` (finite-sample coverage, eq. 28).

Usage:

* per atom (forces): ``errors`` = per-atom force RMSE ``sqrt(mean_a (F_ia - F_ia^ref)^2)`` in eV/Å (see
  :func:`atomic_force_rmse`), ``uncertainties`` = the atom-based uncertainties of the same atoms, pooled over all
  calibration structures. Atoms of one structure are correlated, so the guarantee is then approximate. To calibrate
  the "maximal" quantities of the paper's Fig. 2, pass per-structure ``max_i u_i`` and ``max_i error_i`` instead.
* per structure (energies): ``errors`` = ``|E - E^ref| / N_atoms`` in eV/atom (:func:`energy_error_per_atom`) and the
  per-structure uncertainties.

**Small calibration sets.** With ``n < ceil((n + 1)(1 - alpha))`` scores (n < 9 at alpha = 0.1) the finite-sample
quantile level exceeds 1 and the textbook ``q-hat`` is infinite. ``clip=True`` clips the level to 1 (``q-hat`` is
then the largest score, as the paper's reference code does); :meth:`ConformalCalibrator.record` reports whether
that happened. Pooling the per-atom scores of the calibration structures (the explore job's rule) gives n = number
of atoms, so one 32-atom structure already gives a finite ``q-hat`` at alpha = 0.1.

The uncertainty may be unitless (distance / posterior based): the calibrated bound carries the error unit, and
:meth:`ConformalCalibrator.threshold` turns an error threshold (e.g. 1.0 eV/Å) into the raw-uncertainty threshold
that an exploration run compares its uncalibrated uncertainties against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._checks import float_array

__all__ = [
    'ConformalCalibrator',
    'atomic_force_rmse',
    'conformal_quantile',
    'energy_error_per_atom',
    'max_atomic_force_rmse',
    'quantile_rank',
]


def atomic_force_rmse(forces: Any, reference: Any) -> np.ndarray:
    """Per-atom force RMSE over the Cartesian components, ``(..., N, 3) -> (..., N)``, eV/Å."""
    difference = float_array(forces, 'forces') - float_array(reference, 'reference')
    if difference.shape[-1] != 3:
        raise ValueError(f'forces must end in a Cartesian axis of length 3, got shape {difference.shape}')
    return np.sqrt(np.mean(difference**2, axis=-1))


def max_atomic_force_rmse(forces: Any, reference: Any, sizes: Any) -> np.ndarray:
    """Largest per-atom force RMSE of every structure, eV/Å: ``(N, 3)`` forces of structures of ``sizes`` atoms
    (concatenated) → ``(B,)``; the error that the calibrated max atom uncertainty bounds (seed 003 Fig. 2)."""
    per_atom = atomic_force_rmse(forces, reference)
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(per_atom, starts)


def energy_error_per_atom(energies: Any, reference: Any, n_atoms: Any) -> np.ndarray:
    """Absolute energy error per atom ``|E - E^ref| / N_atoms`` in eV/atom."""
    difference = float_array(energies, 'energies') - float_array(reference, 'reference')
    return np.abs(difference) / float_array(n_atoms, 'n_atoms')


def quantile_rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))``: the rank of the finite-sample corrected ``1 - alpha`` quantile among n scores."""
    # small guard against round-off in (n + 1)(1 - alpha) landing just above an integer
    return max(math.ceil((n + 1) * (1.0 - alpha) - 1e-9), 1)


def conformal_quantile(scores: Any, alpha: float, clip: bool = False) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score, i.e. the finite-sample corrected ``1 - alpha`` quantile.

    When ``ceil((n + 1)(1 - alpha)) > n`` (too few calibration points for that confidence) it is ``inf``, or with
    ``clip`` the largest score (quantile level clipped to 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f'alpha must lie in (0, 1), got {alpha}')
    scores = np.sort(float_array(scores, 'scores').ravel())
    n = scores.size
    if n == 0:
        raise ValueError('need at least one calibration score')
    if np.any(np.isnan(scores)):
        raise ValueError('calibration scores contain NaN')
    rank = quantile_rank(n, alpha)
    if rank > n:
        if not clip:
            return math.inf
        rank = n
    return float(scores[rank - 1])


class ConformalCalibrator:
    """Inductive conformal calibration of an uncertainty ``u`` into an error bound at confidence ``1 - alpha``.

    After :meth:`fit`, ``quantile_`` (= ``scale_``) is ``q-hat``, ``alpha_`` the miscoverage level,
    ``n_calibration_`` the number of calibration points and ``level_clipped_`` whether the quantile level was clipped
    to 1 (see the module docstring). :meth:`record` summarises them.
    """

    def fit(
        self, uncertainties: Any, errors: Any, alpha: float = 0.05, clip: bool = False, rule: str = 'points'
    ) -> ConformalCalibrator:
        """Calibrate on held-out ``uncertainties`` and ``errors`` (same shape, any; flattened).

        Nonconformity scores are ``|error| / u``; ``u`` must be non-negative (``u = 0`` with a non-zero error gives an
        infinite score, ``0 / 0`` counts as 0). ``clip``: a finite ``q-hat`` for too few points (level clipped to 1).
        ``rule``: a name for what the points are (e.g. 'atoms pooled over structures'), kept in :meth:`record`.
        """
        u = float_array(uncertainties, 'uncertainties').ravel()
        errors = np.abs(float_array(errors, 'errors')).ravel()
        if u.shape != errors.shape:
            raise ValueError(f'{u.size} uncertainties but {errors.size} errors')
        if np.any(u < 0) or not np.all(np.isfinite(u)) or not np.all(np.isfinite(errors)):
            raise ValueError('uncertainties must be finite and non-negative, errors finite')
        with np.errstate(divide='ignore', invalid='ignore'):
            scores = np.where(u > 0, errors / np.where(u > 0, u, 1.0), np.where(errors > 0, np.inf, 0.0))
        self.scores_ = scores
        self.alpha_ = float(alpha)
        self.n_calibration_ = int(scores.size)
        self.level_clipped_ = bool(clip) and quantile_rank(scores.size, alpha) > scores.size
        self.quantile_ = conformal_quantile(scores, alpha, clip=clip)
        self.rule_ = str(rule)
        return self

    def record(self, **extra: Any) -> dict[str, Any]:
        """JSON-ready summary: rule, alpha, number of scores, the quantile level used, whether it was clipped, q-hat
        (``None`` when infinite), plus ``extra`` items (e.g. the number of calibration structures)."""
        self._check_fitted()
        n = self.n_calibration_
        level = min(quantile_rank(n, self.alpha_), n) / n
        q_hat = self.quantile_ if math.isfinite(self.quantile_) else None
        return {
            'rule': self.rule_,
            'alpha': self.alpha_,
            'n_scores': n,
            'quantile_level': level,
            'level_clipped': bool(self.level_clipped_),
            'q_hat': q_hat,
            **extra,
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, 'quantile_'):
            raise RuntimeError('ConformalCalibrator is not fitted yet; call fit() first')

    @property
    def scale_(self) -> float:
        """Re-scaling factor ``q-hat`` (error unit per uncertainty unit)."""
        self._check_fitted()
        return self.quantile_

    def calibrate(self, uncertainties: Any) -> np.ndarray:
        """Calibrated uncertainties ``q-hat * u``: error bounds in the error unit (eV/Å or eV/atom)."""
        self._check_fitted()
        return self.quantile_ * float_array(uncertainties, 'uncertainties')

    def threshold(self, error_threshold: float) -> float:
        """Raw-uncertainty threshold ``error_threshold / q-hat`` equivalent to a calibrated error threshold.

        ``calibrate(u) > error_threshold`` exactly when ``u > threshold(error_threshold)``.
        """
        self._check_fitted()
        if error_threshold < 0:
            raise ValueError(f'error_threshold must be non-negative, got {error_threshold}')
        if self.quantile_ == 0:
            return math.inf
        return float(error_threshold / self.quantile_)

    def coverage(self, uncertainties: Any, errors: Any) -> float:
        """Fraction of ``|errors|`` not exceeding their calibrated bound (empirical coverage)."""
        bounds = self.calibrate(uncertainties)
        return float(np.mean(np.abs(float_array(errors, 'errors')) <= bounds))
