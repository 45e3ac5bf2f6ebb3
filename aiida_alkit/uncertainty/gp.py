"""Uncertainties from gradient features: feature-space distances, GP posterior, atom-based uncertainties.

* :func:`feature_distances` -- ``Δ(S, S') = ||φ(S) - φ(S')||`` (``seeds/001`` eq. 10);
* :func:`posterior_variance` -- diagonal of the GP posterior kernel ``k(S, S | D) = σ² φ(S)^T (Φ^T Φ + σ² I)^{-1}
  φ(S)`` (``seeds/001`` eq. 21-22) with the data-dependent ``σ² = tr[Φ^T Φ] / (N_train d)`` (Sec. 3.1.4), using the
  posterior transform of :mod:`aiida_alkit.selection.greedy` (eq. 23);
* :func:`representative_subset` -- the training atom features picked by MaxDist (``seeds/001`` eq. 28), the
  "most representative subset" of ``seeds/003`` (Methods, batch selection);
* :class:`GradientUncertainty` -- the distance- and posterior-based atom uncertainties of ``seeds/003`` eq. 3-4 and
  the total (structure) uncertainties from structure features, with the structure-level aggregation max over atoms.

Uncertainties are standard-deviation-like: ``u_i = sqrt(min_j ||φ(G_i) - φ(G_j^train)||²)`` (eq. 3) and
``u_i = sqrt(k(G_i, G_i | D))`` (eq. 4), in the units of the features (eV per unit of the network parameters for
atomic features and summed structure features, eV/atom for per-atom-normalised ones). They are not calibrated;
conformal prediction (``seeds/003``) re-scales them to eV/Å. No AiiDA import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aiida_alkit.selection.greedy import max_dist, paper_sigma2, posterior_matrix

__all__ = [
    'GradientUncertainty',
    'UncertaintyPrediction',
    'feature_distances',
    'min_feature_distances',
    'paper_sigma2',
    'posterior_variance',
    'representative_subset',
    'segment_max',
]

ArrayLike = np.ndarray | torch.Tensor

#: Rows x columns processed at once in the chunked distance and posterior computations.
_BLOCK_ELEMENTS = 1 << 22
#: Methods of :class:`GradientUncertainty`.
METHODS = ('posterior', 'distance')


def _as_tensor(array: ArrayLike, name: str) -> torch.Tensor:
    """2-D float64 CPU/device tensor from numpy or torch."""
    tensor = array.detach() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    tensor = tensor.to(torch.float64)
    if tensor.ndim != 2:
        raise ValueError(f'{name} must have shape (n, d), got shape {tuple(tensor.shape)}')
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f'{name} must be finite')
    return tensor


def _row_chunks(n_rows: int, width: int) -> list[slice]:
    step = max(1, _BLOCK_ELEMENTS // max(1, width))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def feature_distances(features: ArrayLike, other: ArrayLike) -> np.ndarray:
    """Pairwise feature-space distances (n, m), ``sqrt(k(S,S) + k(S',S') - 2 k(S,S'))`` (``seeds/001`` eq. 10)."""
    a = _as_tensor(features, 'features')
    b = _as_tensor(other, 'other').to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'feature dimensions differ: {a.shape[1]} and {b.shape[1]}')
    sq = (a.square().sum(1)[:, None] + b.square().sum(1)[None, :]) - 2.0 * (a @ b.T)
    return sq.clamp_(min=0.0).sqrt_().cpu().numpy()


def min_feature_distances(features: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Distance (eq. 10) of every row of ``features`` to its nearest row of ``reference``, and that row's index.

    The nearest row is found with the kernel form of eq. (10) in blocks; its distance is then recomputed from the
    difference vector, so a query equal to a reference row has distance exactly zero.
    """
    query = _as_tensor(features, 'features')
    ref = _as_tensor(reference, 'reference').to(query.device)
    if ref.shape[0] == 0:
        raise ValueError('reference features are empty')
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f'feature dimensions differ: {query.shape[1]} and {ref.shape[1]}')
    ref_sq = ref.square().sum(1)
    nearest = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    for rows in _row_chunks(query.shape[0], ref.shape[0]):
        # argmin_j |r_j|² - 2 <q, r_j> (|q|² is common to the row)
        scores = torch.addmm(ref_sq[None, :], query[rows], ref.T, alpha=-2.0)
        nearest[rows] = torch.argmin(scores, dim=1)
    distances = torch.linalg.vector_norm(query - ref[nearest], dim=1)
    return distances.cpu().numpy(), nearest.cpu().numpy()


def posterior_variance(
    features: ArrayLike, train_features: ArrayLike, sigma2: float | None = None
) -> tuple[np.ndarray, float]:
    """GP posterior variances ``k(S, S | D)`` (``seeds/001`` eq. 21-22) of the rows of ``features``, and σ².

    ``σ² = None`` uses the data-dependent choice ``tr[Φ^T Φ] / (N_train d)`` (Sec. 3.1.4). Units: feature units
    squared. The variance of a training point is below σ²; far from the data it approaches ``||φ(S)||²``.
    """
    query = _as_tensor(features, 'features')
    train = _as_tensor(train_features, 'train_features').to(query.device)
    sigma2 = paper_sigma2(train) if sigma2 is None else float(sigma2)
    transform = posterior_matrix(train, sigma2)  # φ_GP = φ T with T T^T = σ² (Φ^T Φ + σ² I)^{-1}, eq. (23)
    return _transformed_sq_norms(query, transform), sigma2


def _transformed_sq_norms(query: torch.Tensor, transform: torch.Tensor) -> np.ndarray:
    out = torch.empty(query.shape[0], dtype=torch.float64, device=query.device)
    for rows in _row_chunks(query.shape[0], transform.shape[1]):
        out[rows] = (query[rows] @ transform).square().sum(1)
    return out.cpu().numpy()


def representative_subset(features: ArrayLike, size: int) -> np.ndarray:
    """Indices (pick order) of ``size`` rows chosen by MaxDist without training points (``seeds/001`` eq. 28).

    MaxDist starts from the row of largest norm and adds the row farthest from those chosen so far (``seeds/003``:
    the most representative subset of the training atomic gradient features). All rows when ``size >= n``.
    """
    n_rows = int(features.shape[0])
    if size >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return max_dist(features, None, int(size)).indices


def segment_max(values: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Maximum of ``values`` (N,) over the atoms of each structure (B,), ``n_atoms`` the structure sizes."""
    values = np.asarray(values, dtype=np.float64)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if n_atoms.sum() != values.shape[0] or (n_atoms < 1).any():
        raise ValueError('n_atoms must be positive and add up to the number of atomic values')
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    return np.maximum.reduceat(values, starts)


@dataclass
class UncertaintyPrediction:
    """Uncertainties of a set of structures (feature units, see the module docstring).

    :param atomic: (N,) atom-based uncertainties u_i (``seeds/003`` eq. 3 or 4), or ``None``.
    :param structure: (B,) max over the atoms of each structure of ``atomic`` (``seeds/003``), or ``None``.
    :param total: (B,) total uncertainties from the structure features (``seeds/001`` eq. 10 / 21), or ``None``.
    :param method: ``'posterior'`` or ``'distance'``.
    """

    atomic: np.ndarray | None
    structure: np.ndarray | None
    total: np.ndarray | None
    method: str


class GradientUncertainty:
    """Distance- or posterior-based uncertainties from gradient features (``seeds/003`` eq. 3-4, ``seeds/001`` 3.1).

    ``fit`` stores what the training data define: for ``'posterior'`` the posterior transforms of the atomic and
    structure training features (eq. 23, σ² data-dependent unless given); for ``'distance'`` a representative subset
    of at most ``n_representative`` training atom features chosen by MaxDist, and the structure training features.
    ``predict`` returns per-atom uncertainties, their maximum per structure, and the total (structure) uncertainty.

    :param method: ``'posterior'`` (eq. 4 / 21-22) or ``'distance'`` (eq. 3 / 10).
    :param sigma2: noise variance σ² (regularisation strength of eq. 4) for both atomic and structure features;
        ``None``: ``tr[Φ^T Φ] / (N_train d)`` of the respective training features (``seeds/001`` Sec. 3.1.4).
    :param n_representative: size of the MaxDist subset of training atom features (and training structures) used by
        the distance method; ``None`` keeps all.
    """

    def __init__(self, method: str = 'posterior', sigma2: float | None = None, n_representative: int | None = 2048):
        if method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {method!r}')
        if sigma2 is not None and not (sigma2 > 0.0 and math.isfinite(sigma2)):
            raise ValueError(f'sigma2 must be positive, got {sigma2}')
        if n_representative is not None and n_representative < 1:
            raise ValueError(f'n_representative must be positive, got {n_representative}')
        self.method = method
        self.sigma2 = sigma2
        self.n_representative = n_representative
        self.sigma2_atomic: float | None = None
        self.sigma2_structure: float | None = None
        self._atomic_state: torch.Tensor | None = None
        self._structure_state: torch.Tensor | None = None
        self.representative_indices: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self._atomic_state is not None or self._structure_state is not None

    def _prepare(self, train: torch.Tensor) -> tuple[torch.Tensor, float | None, np.ndarray | None]:
        if self.method == 'posterior':
            sigma2 = paper_sigma2(train) if self.sigma2 is None else self.sigma2
            return posterior_matrix(train, sigma2), sigma2, None
        size = train.shape[0] if self.n_representative is None else self.n_representative
        indices = representative_subset(train, size)
        return train[torch.as_tensor(indices, dtype=torch.long)], None, indices

    def fit(
        self, train: Any = None, *, atomic: ArrayLike | None = None, structure: ArrayLike | None = None
    ) -> GradientUncertainty:
        """Prepare from training features: a :class:`~aiida_alkit.uncertainty.features.GradientFeatures` or arrays.

        :param train: training features (its ``atomic`` and ``structure`` arrays are used when present).
        :param atomic: (M_atoms, d) training atomic features (alternative to ``train``).
        :param structure: (M, d) training structure features (alternative to ``train``).
        """
        if train is not None:
            atomic = train.atomic if atomic is None else atomic
            structure = train.structure if structure is None else structure
        if atomic is None and structure is None:
            raise ValueError('fit needs atomic and/or structure training features')
        self._atomic_state = self._structure_state = None
        self.representative_indices = None
        if atomic is not None:
            state, sigma2, indices = self._prepare(_as_tensor(atomic, 'atomic training features'))
            self._atomic_state, self.sigma2_atomic, self.representative_indices = state, sigma2, indices
        if structure is not None:
            state, sigma2, _ = self._prepare(_as_tensor(structure, 'structure training features'))
            self._structure_state, self.sigma2_structure = state, sigma2
        return self

    def _evaluate(self, features: ArrayLike, state: torch.Tensor) -> np.ndarray:
        query = _as_tensor(features, 'features').to(state.device)
        if query.shape[1] != state.shape[0 if self.method == 'posterior' else 1]:
            raise ValueError('feature dimension differs from the training features')
        if self.method == 'posterior':
            return np.sqrt(np.clip(_transformed_sq_norms(query, state), 0.0, None))
        return min_feature_distances(query, state)[0]

    def predict(
        self,
        features: Any = None,
        *,
        atomic: ArrayLike | None = None,
        structure: ArrayLike | None = None,
        n_atoms: np.ndarray | None = None,
    ) -> UncertaintyPrediction:
        """Uncertainties of new structures (see :class:`UncertaintyPrediction`).

        :param features: a ``GradientFeatures`` (computed with the same feature map as the training features).
        :param atomic: (N, d) atomic features, with ``n_atoms`` (B,) for the max over atoms.
        :param structure: (B, d) structure features.
        """
        if not self.fitted:
            raise RuntimeError('call fit() first')
        if features is not None:
            atomic = features.atomic if atomic is None else atomic
            structure = features.structure if structure is None else structure
            n_atoms = features.n_atoms if n_atoms is None else n_atoms
        atomic_unc = structure_unc = total_unc = None
        if atomic is not None and self._atomic_state is not None:
            atomic_unc = self._evaluate(atomic, self._atomic_state)
            if n_atoms is not None:
                structure_unc = segment_max(atomic_unc, n_atoms)
        if structure is not None and self._structure_state is not None:
            total_unc = self._evaluate(structure, self._structure_state)
        return UncertaintyPrediction(atomic=atomic_unc, structure=structure_unc, total=total_unc, method=self.method)
