"""D-optimality active set and extrapolation grade (MaxVol), seed document 004 (MTP / MLIP-2 lecture notes).

Each configuration (or atomic environment) is represented by a row of ``m`` features, the derivatives
``dE/dtheta_j`` of its energy with respect to the ``m`` (linear) parameters -- for this project the last-layer
features. The *active set* is the ``m x m`` submatrix ``A`` of the training rows with maximal ``|det A|``, found by
MaxVol. The *extrapolation grade* of a new row ``b`` is ``gamma = max_j |c_j|`` with ``c = b A^-1``: the largest
factor by which ``|det A|`` grows if ``b`` replaces a row of ``A``. ``gamma <= 1`` interpolates, ``gamma > 1``
extrapolates. During exploration a configuration with ``gamma > gamma_select`` is kept for labelling and one with
``gamma > gamma_break`` stops the simulation. After labelling, the active set is updated by MaxVol over the rows of
``A`` and the new rows.

The notes state no numbers for the two thresholds; the defaults ``gamma_select = 2`` and ``gamma_break = 10`` are
the values commonly used with MLIP-2. For per-atom rows, the grade of a configuration is the maximum over its atoms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from ._checks import float_array

__all__ = ['DEFAULT_GAMMA_BREAK', 'DEFAULT_GAMMA_SELECT', 'ActiveSet', 'MaxVolResult', 'maxvol']

#: Default selection threshold ``gamma_select`` (MLIP-2 convention; not given in the notes).
DEFAULT_GAMMA_SELECT = 2.0
#: Default break threshold ``gamma_break`` (MLIP-2 convention; not given in the notes).
DEFAULT_GAMMA_BREAK = 10.0

#: Status labels returned by :meth:`ActiveSet.classify`.
RELIABLE, SELECT, BREAK = 'reliable', 'select', 'break'


@dataclass(frozen=True)
class MaxVolResult:
    """Outcome of :func:`maxvol`.

    ``indices``: ``(m,)`` rows of ``A`` forming the submatrix (position ``j`` of the submatrix is row ``indices[j]``);
    ``coefficients``: ``(n, m)`` matrix ``A @ inv(A[indices])``; ``iterations``: number of row swaps;
    ``converged``: whether ``max |coefficients| <= tol`` was reached within ``max_iters``.
    """

    indices: np.ndarray
    coefficients: np.ndarray
    iterations: int
    converged: bool


def _lu_pivot_rows(a: np.ndarray) -> np.ndarray:
    """The ``m`` pivot rows chosen by LU factorisation with partial (row) pivoting of a tall ``(n, m)`` matrix."""
    perm, _, _ = scipy.linalg.lu(a, p_indices=True)  # a == lower[perm] @ upper
    return np.argsort(perm, kind='stable')[: a.shape[1]]


def maxvol(a: Any, tol: float = 1.01, max_iters: int = 1000, initial: Any = None) -> MaxVolResult:
    """Square ``m x m`` submatrix of a tall matrix ``a`` (``n x m``, ``n >= m``) with locally maximal ``|det|``.

    Classical MaxVol: start from the LU-pivoted rows (or ``initial``), form ``C = a @ inv(a[I])`` and, while
    ``max |C_ij| > tol``, replace row ``I_j`` by row ``i``; that multiplies ``|det a[I]|`` by ``|C_ij| > tol``, so the
    volume grows strictly. ``C`` is updated by the Sherman-Morrison formula
    ``C <- C - C[:, j] (C[i, :] - e_j) / C_ij`` and recomputed exactly before convergence is declared.
    At convergence every row of ``a`` is a combination of the selected rows with coefficients ``|c| <= tol``.
    """
    a = float_array(a, 'a', 2, finite=True)
    n, m = a.shape
    if n < m:
        raise ValueError(f'maxvol needs a tall matrix (n >= m), got shape {a.shape}')
    if m == 0:
        raise ValueError('maxvol needs at least one column')
    if tol < 1.0:
        raise ValueError(f'tol must be >= 1, got {tol}')
    if initial is None:
        indices = _lu_pivot_rows(a)
    else:
        indices = np.asarray(initial, dtype=np.int64).copy()
        if indices.shape != (m,) or len(set(indices.tolist())) != m or indices.min() < 0 or indices.max() >= n:
            raise ValueError(f'initial must hold {m} distinct row indices of a, got {initial!r}')

    def coefficients_for(rows: np.ndarray) -> np.ndarray:
        square = a[rows]
        with warnings.catch_warnings():  # singularity is reported below with a clearer message
            warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
            lu = scipy.linalg.lu_factor(square, check_finite=False)
        if np.any(np.abs(np.diag(lu[0])) <= np.finfo(np.float64).eps * max(1.0, np.abs(square).max()) * m):
            raise np.linalg.LinAlgError('maxvol: the matrix does not have full column rank')
        return scipy.linalg.lu_solve(lu, a.T, trans=1, check_finite=False).T

    coefficients = coefficients_for(indices)
    iterations = 0
    since_refresh = 0
    while True:
        flat = int(np.argmax(np.abs(coefficients)))
        i, j = divmod(flat, m)
        if abs(coefficients[i, j]) <= tol:
            if since_refresh == 0:
                return MaxVolResult(indices, coefficients, iterations, True)
            coefficients = coefficients_for(indices)  # remove accumulated round-off, then re-check
            since_refresh = 0
            continue
        if iterations >= max_iters:
            return MaxVolResult(indices, coefficients_for(indices), iterations, False)
        pivot = coefficients[i, j]
        row = coefficients[i].copy()
        row[j] -= 1.0
        coefficients -= np.outer(coefficients[:, j] / pivot, row)
        indices[j] = i
        iterations += 1
        since_refresh += 1
        if since_refresh >= 50:
            coefficients = coefficients_for(indices)
            since_refresh = 0


class ActiveSet:
    """D-optimal active set of ``m`` feature rows with extrapolation grades.

    ``indices_``: ``(m,)`` running indices of the rows in the active set (the ``k``-th row ever offered to
    :meth:`fit` / :meth:`update` has index ``k``); ``-1`` marks a placeholder unit row used while fewer than ``m``
    linearly independent rows have been seen (the notes' "ones in the diagonal, zeros elsewhere").
    ``matrix_``: ``(m, m)`` active rows; ``n_seen_``: number of rows offered so far.
    """

    def __init__(
        self,
        gamma_select: float = DEFAULT_GAMMA_SELECT,
        gamma_break: float = DEFAULT_GAMMA_BREAK,
        tol: float = 1.01,
        max_iters: int = 1000,
    ) -> None:
        if not 1.0 <= gamma_select <= gamma_break:
            raise ValueError(f'need 1 <= gamma_select <= gamma_break, got {gamma_select}, {gamma_break}')
        self.gamma_select = float(gamma_select)
        self.gamma_break = float(gamma_break)
        self.tol = float(tol)
        self.max_iters = int(max_iters)

    def _check_fitted(self) -> None:
        if not hasattr(self, 'matrix_'):
            raise RuntimeError('ActiveSet is not fitted yet; call fit() first')

    def _set(self, matrix: np.ndarray, indices: np.ndarray) -> None:
        self.matrix_ = matrix
        self.indices_ = indices
        self._lu = scipy.linalg.lu_factor(matrix, check_finite=False)

    @staticmethod
    def _padding(rows: np.ndarray, m: int) -> np.ndarray:
        """Unit rows ``e_j`` completing fewer than ``m`` independent ``rows`` to a non-singular ``m x m`` matrix."""
        if rows.shape[0] == 0:
            return np.arange(m)
        _, _, pivots = scipy.linalg.qr(rows, mode='economic', pivoting=True)
        return np.sort(pivots[rows.shape[0] :])

    def fit(self, features: Any) -> ActiveSet:
        """Build the active set from training rows ``(n, m)`` by MaxVol (placeholder unit rows when ``n < m``)."""
        features = float_array(features, 'features', 2, finite=True)
        n, m = features.shape
        self.n_features_ = m
        self.n_seen_ = 0
        self._set(np.eye(m), np.full(m, -1, dtype=np.int64))
        if n == 0:
            return self
        if n >= m and np.linalg.matrix_rank(features) == m:
            result = maxvol(features, tol=self.tol, max_iters=self.max_iters)
            self._set(features[result.indices].copy(), result.indices.astype(np.int64))
            self.n_seen_ = n
            return self
        # rank-deficient or too few rows: greedily keep independent rows, pad with unit rows, then improve
        self.update(features)
        return self

    def update(self, new_features: Any) -> np.ndarray:
        """Re-run MaxVol over the active rows and ``new_features`` ``(p, m)``; return the entering new-row indices.

        MaxVol starts from the current active set, so once it holds ``m`` real rows ``|det matrix_|`` never decreases.
        While placeholders remain, every new linearly independent row is kept first (placeholders are re-chosen).
        The returned running indices (sorted) are the new rows that entered the active set, i.e. those to label and
        add to the training set.
        """
        self._check_fitted()
        new = float_array(new_features, 'new_features', 2, finite=True)
        if new.shape[1] != self.n_features_:
            raise ValueError(f'new_features have {new.shape[1]} columns, the active set {self.n_features_}')
        m = self.n_features_
        first_new = self.n_seen_
        self.n_seen_ += new.shape[0]
        if new.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        new_ids = first_new + np.arange(new.shape[0])
        real = self.indices_ >= 0
        if real.all():
            candidates = np.concatenate([self.matrix_, new])
            candidate_ids = np.concatenate([self.indices_, new_ids])
        else:
            # placeholders present: keep every independent real row, re-pad with complementary unit rows, then let
            # MaxVol swap placeholders (never real rows) for better rows
            pool = np.concatenate([self.matrix_[real], new])
            pool_ids = np.concatenate([self.indices_[real], new_ids])
            keep = self._independent_rows(pool, m)
            padding = self._padding(pool[keep], m) if keep.size < m else np.zeros(0, dtype=np.int64)
            rest = np.setdiff1d(np.arange(pool.shape[0]), keep)
            candidates = np.concatenate([pool[keep], np.eye(m)[padding], pool[rest]])
            candidate_ids = np.concatenate([pool_ids[keep], np.full(padding.size, -1, dtype=np.int64), pool_ids[rest]])
        result = maxvol(candidates, tol=self.tol, max_iters=self.max_iters, initial=np.arange(m))
        chosen_ids = candidate_ids[result.indices]
        self._set(candidates[result.indices].copy(), chosen_ids.copy())
        return np.sort(chosen_ids[chosen_ids >= first_new])

    @staticmethod
    def _independent_rows(rows: np.ndarray, m: int) -> np.ndarray:
        """Indices of at most ``m`` linearly independent rows (pivoted QR on the transpose), sorted."""
        if rows.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        _, r, pivots = scipy.linalg.qr(rows.T, mode='economic', pivoting=True)
        diagonal = np.abs(np.diag(r))
        rank = (
            int(np.sum(diagonal > diagonal.max() * max(rows.shape) * np.finfo(np.float64).eps)) if diagonal.size else 0
        )
        return np.sort(pivots[: min(rank, m)])

    def log_abs_det(self) -> float:
        """``ln |det A|`` of the active matrix."""
        self._check_fitted()
        return float(np.sum(np.log(np.abs(np.diag(self._lu[0])))))

    def coefficients(self, features: Any) -> np.ndarray:
        """Coefficients ``c = b A^-1`` of rows ``b`` ``(..., m)`` in the basis of the active rows."""
        self._check_fitted()
        features = float_array(features, 'features', finite=True)
        if features.shape[-1] != self.n_features_:
            raise ValueError(f'features have {features.shape[-1]} columns, the active set {self.n_features_}')
        flat = features.reshape(-1, self.n_features_)
        solved = scipy.linalg.lu_solve(self._lu, flat.T, trans=1, check_finite=False).T
        return solved.reshape(features.shape)

    def extrapolation_grade(self, features: Any) -> np.ndarray | float:
        """Extrapolation grade ``gamma = max_j |c_j|`` per row of ``features`` ``(..., m)``; a float for one row."""
        grades = np.abs(self.coefficients(features)).max(axis=-1)
        return float(grades) if np.ndim(grades) == 0 else grades

    def classify(self, gamma: Any) -> np.ndarray | str:
        """``'reliable'`` (gamma <= gamma_select), ``'select'`` (<= gamma_break) or ``'break'`` (> gamma_break)."""
        gamma = np.asarray(gamma, dtype=np.float64)
        labels = np.where(gamma > self.gamma_break, BREAK, np.where(gamma > self.gamma_select, SELECT, RELIABLE))
        return str(labels) if labels.ndim == 0 else labels
