"""One entry point for every selection method, as the campaign's select step calls it (no AiiDA import).

Feature methods follow seed 001's modes (its Sec. 3.2, the ``P`` / ``TP`` modes of its ref. 29, ``bmdal_reg``):

* the kernel is FEAT (the gradient features as they are) or, with ``posterior=True``, GP: pool *and* training
  features go through the same posterior transform of eq. 21-23 (σ² of Sec. 3.1.4 unless given);
* **MaxDist** (eq. 28) and **LCMD** (eq. 29-31) are TP mode: the training points are centres, distances are taken to
  ``X_train ∪ X_batch``;
* **MaxDet** (eq. 27) and **MaxDiag** (eq. 26) are P mode: only the pool enters the greedy step; with GP the
  training set enters through the transform (the posterior covariance), with FEAT it does not enter at all;
* **MaxVol** (seed 004) fits its active set on the training features.

``select(method, ...)`` returns a :class:`Selection`: the picked pool indices in pick order, the per-step gains,
one score and one rank per pool candidate (rank = position in the pick order, -1 if not picked) and the
accurate / candidate / failed counts of DP-GEN's table (for greedy methods every finite candidate counts as a
candidate).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiida_alkit.selection.greedy import nearest_training_distance, paper_sigma2, posterior_transform, select_batch
from aiida_alkit.selection.windows import alkpu_window, committee_trust_window, random_selection

__all__ = [
    'FEATURE_METHODS',
    'METHODS',
    'SELECTOR_ENTRY_POINT_GROUP',
    'TRAIN_CENTRE_METHODS',
    'Selection',
    'select',
    'select_by_features',
    'select_in_window',
    'selectors',
    'transformed_features',
]

FEATURE_METHODS = ('maxdet', 'maxdist', 'lcmd', 'maxdiag', 'maxvol')
WINDOW_METHODS = ('alkpu', 'trust')
#: Methods that label the frames at which a walker's stop criterion fired.
STOP_METHODS = ('hal',)
METHODS = (*FEATURE_METHODS, *WINDOW_METHODS, *STOP_METHODS, 'random')
#: Feature methods whose greedy step uses the training points as centres (TP mode of seed 001); the others are P mode.
TRAIN_CENTRE_METHODS = ('maxdist', 'lcmd')


@dataclass
class Selection:
    """Result of :func:`select` (see the module docstring)."""

    method: str
    indices: np.ndarray
    gains: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    n_accurate: int
    n_candidate: int
    n_failed: int
    status: str | None = None


def _ranks(n: int, indices: np.ndarray) -> np.ndarray:
    ranks = np.full(n, -1, dtype=np.int64)
    ranks[indices] = np.arange(indices.size)
    return ranks


def transformed_features(
    pool: np.ndarray, train: np.ndarray, posterior: bool, sigma2: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pool and training features in the kernel's feature space: unchanged (FEAT) or both mapped by the GP posterior
    transform of seed 001 eq. 23 (GP; σ² from ``sigma2`` or the data-dependent choice of its Sec. 3.1.4)."""
    if not posterior:
        return pool, train
    noise = paper_sigma2(train) if sigma2 is None else float(sigma2)
    return np.asarray(posterior_transform(pool, train, noise)), np.asarray(posterior_transform(train, train, noise))


def _mode_arguments(method: str, train: np.ndarray) -> tuple[np.ndarray | None]:
    """The training features the greedy step sees: centres (TP), the active set (MaxVol) or none (P mode)."""
    return (train,) if method in (*TRAIN_CENTRE_METHODS, 'maxvol') else (None,)


def _feature_scores(method: str, pool: np.ndarray, train: np.ndarray, posterior: bool) -> np.ndarray:
    """Per-candidate score of a feature method: the posterior variance k(x, x | D) with GP (seed 001 eq. 22), the
    distance to the nearest training point with FEAT in TP mode (seed 003 eq. 3), else the prior variance k(x, x)."""
    if not posterior and method in TRAIN_CENTRE_METHODS and train.shape[0]:
        return nearest_training_distance(pool, train)
    return np.einsum('ij,ij->i', pool, pool)


def _hal_stops(batch_size: int, scores: dict[str, np.ndarray]) -> Selection:
    """Seed 002: label the configurations at which HAL's stop criterion (eq. 7-8) fired, one per stopped walker,
    largest max relative force uncertainty f_i (eq. 6) first, at most ``batch_size``.

    Counts (DP-GEN's table, for the accurate-fraction convergence): the frames of walkers whose HAL run never fired
    are accurate (seed 002: HAL has converged when its runs no longer stop); the frames of walkers that stopped are
    candidates (their trajectory ran into extrapolation), of which the stop frames can be picked.
    """
    if 'hal_stop' not in scores:
        raise ValueError('method "hal" needs scores["hal_stop"] (an exploration with stop.hal)')
    stops = np.asarray(scores['hal_stop'], dtype=bool)
    values = np.asarray(scores.get('relative_force_uncertainty', np.zeros(stops.size)), dtype=np.float64)
    walkers = np.asarray(scores.get('walker', np.arange(stops.size)))
    on_stopped_walker = np.isin(walkers, walkers[stops])
    candidates = np.flatnonzero(stops)
    order = np.argsort(-np.nan_to_num(values[candidates], nan=-np.inf), kind='stable')
    indices = candidates[order][:batch_size].astype(np.int64)
    return Selection(
        method='hal',
        indices=indices,
        gains=values[indices],
        scores=values,
        ranks=_ranks(stops.size, indices),
        n_accurate=int((~on_stopped_walker).sum()),
        n_candidate=int(on_stopped_walker.sum()),
        n_failed=0,
    )


#: Entry-point group through which a plugin package adds selection methods: each entry point names a function with
#: the keyword interface of :func:`select` (``method``, ``batch_size``, ``pool_features``, ``train_features``,
#: ``scores``, ``seed`` and the method's own options, ``**_`` for the rest) that returns a :class:`Selection`.
SELECTOR_ENTRY_POINT_GROUP = 'alkit.selectors'
#: name -> selector of the built-in methods (:data:`METHODS`); plugins join through :func:`selectors`.
BUILTIN_SELECTORS: dict[str, Callable[..., Selection]] = {}


def selectors() -> dict[str, Callable[..., Selection]]:
    """Every selection method: the built-in ones and those of installed plugins (entry-point group
    :data:`SELECTOR_ENTRY_POINT_GROUP`; a plugin cannot replace a built-in method)."""
    return {**BUILTIN_SELECTORS, **{k: v for k, v in _plugin_selectors().items() if k not in BUILTIN_SELECTORS}}


@functools.cache
def _plugin_selectors() -> dict[str, Callable[..., Selection]]:
    """The installed plugins' selectors, looked up once per process (``select`` runs every round)."""
    from importlib.metadata import entry_points

    return {
        entry_point.name.lower(): entry_point.load() for entry_point in entry_points(group=SELECTOR_ENTRY_POINT_GROUP)
    }


def select(method: str, batch_size: int, **inputs: Any) -> Selection:
    """Select a batch from a candidate pool with the selector of ``method`` (:func:`selectors`).

    :param method: one of :data:`METHODS` or a plugin's method.
    :param batch_size: number of picks (the cap of window methods).
    :param inputs: what the method reads: ``pool_features`` (N, d) and ``train_features`` (M, d) gradient features
        (feature methods); ``scores``, per-candidate arrays: ``kpu`` (alkpu), ``max_force_deviation`` in eV/Å (trust),
        ``hal_stop`` and ``relative_force_uncertainty`` (hal), ``calibrated_uncertainty`` in eV/Å (``uncertain_above``);
        ``seed``; and the method's options (:func:`select_by_features`, :func:`select_in_window`).
    :raises ValueError: for an unknown method, missing inputs or a batch larger than the pool.
    """
    method = method.lower()
    available = selectors()
    if method not in available:
        raise ValueError(f'unknown selection method {method!r}; choose one of {tuple(available)}')
    inputs['scores'] = inputs.get('scores') or {}
    return available[method](method=method, batch_size=batch_size, **inputs)


def select_by_features(
    method: str,
    batch_size: int,
    *,
    pool_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    scores: dict[str, np.ndarray],
    posterior: bool = True,
    sigma2: float | None = None,
    uncertain_above: float | None = None,
    **options: Any,
) -> Selection:
    """The feature methods (:data:`FEATURE_METHODS`, module docstring).

    :param posterior: feature methods use the GP kernel: pool and training features both posterior-transformed
        (seed 001 eq. 21-23; σ² from ``sigma2`` or the paper's data-dependent choice); the candidate score is then the
        posterior variance. False: the FEAT kernel (score: distance to the nearest training point for MaxDist and
        LCMD, the squared feature norm for MaxDet and MaxDiag). See the module docstring for which method uses the
        training points how.
    :param options: method options, e.g. ``gamma_select`` of ``maxvol`` (default 2): candidates whose extrapolation
        grade is at most this count as accurate (seed 004), the scores are the grades.
    :param uncertain_above: candidates whose ``scores['calibrated_uncertainty']`` (eV/Å) is at most this are
        *accurate*; the batch is chosen among the others (seed 003's calibrated threshold; DP-GEN's accurate ratio
        then measures convergence). None: every candidate may be picked.
    """
    options = {key: value for key, value in options.items() if key not in _SHARED_INPUTS}
    if pool_features is None or train_features is None:
        raise ValueError(f'method {method!r} needs pool_features and train_features')
    pool = np.asarray(pool_features, dtype=np.float64)
    train = np.asarray(train_features, dtype=np.float64)
    n = pool.shape[0]
    eligible = np.arange(n)
    if uncertain_above is not None:
        if 'calibrated_uncertainty' not in scores:
            raise ValueError('uncertain_above needs scores["calibrated_uncertainty"] (eV/Å) from the exploration')
        calibrated = np.asarray(scores['calibrated_uncertainty'], dtype=np.float64)
        eligible = np.flatnonzero(~(calibrated <= float(uncertain_above)))  # NaN counts as uncertain
    grades = None
    if method == 'maxvol' and uncertain_above is None:  # seed 004: gamma <= gamma_select is reliable (accurate)
        from aiida_alkit.uncertainty.doptimal import DEFAULT_GAMMA_SELECT, ActiveSet

        gamma_select = float(options.get('gamma_select', DEFAULT_GAMMA_SELECT))
        active = ActiveSet(gamma_select=gamma_select, gamma_break=max(gamma_select, 10.0)).fit(train)
        grades = np.atleast_1d(np.asarray(active.extrapolation_grade(pool), dtype=np.float64))
        eligible = np.flatnonzero(grades > gamma_select)
    pool, train = transformed_features(pool, train, posterior and method != 'maxvol', sigma2)
    candidate_scores = grades if grades is not None else _feature_scores(method, pool, train, posterior)
    indices, gains, status = np.zeros(0, dtype=np.int64), np.zeros(0), None
    if eligible.size:
        restricted = uncertain_above is not None or grades is not None
        size = min(batch_size, eligible.size) if restricted else batch_size
        result = select_batch(method, pool[eligible], *_mode_arguments(method, train), size, **options)
        indices, gains, status = eligible[result.indices], result.gains, result.status
    return Selection(
        method=method,
        indices=indices,
        gains=gains,
        scores=candidate_scores,
        ranks=_ranks(n, indices),
        n_accurate=int(n - eligible.size),
        n_candidate=int(eligible.size),
        n_failed=0,
        status=status,
    )


#: Inputs :func:`select` passes to every selector; the feature methods do not forward them to the greedy step.
_SHARED_INPUTS = ('seed', 'n_pool', 'kpu_trained', 'c0', 'c1', 'lo', 'hi')


def select_in_window(
    method: str,
    batch_size: int,
    *,
    scores: dict[str, np.ndarray],
    seed: int = 0,
    kpu_trained: float | None = None,
    c0: float = 1.25,
    c1: float = 2.0,
    lo: float | None = None,
    hi: float | None = None,
    n_pool: int | None = None,
    **_: Any,
) -> Selection:
    """The window methods and the baseline: ``alkpu`` (KPU window c0, c1 around ``kpu_trained``, seed 000: the
    parameter, else ``scores['kpu_trained']`` as the explore job writes it from the RLEKF potential), ``trust``
    (committee force-deviation window [``lo``, ``hi``] eV/Å, DP-GEN) and ``random`` (``n_pool`` candidates)."""
    if method == 'random':
        n = n_pool if n_pool is not None else max(map(len, scores.values())) if scores else None
        if n is None:
            raise ValueError('method "random" needs n_pool (or any score array)')
        window = random_selection(n, batch_size, seed=seed)
        values = np.zeros(n)
    elif method == 'alkpu':
        if kpu_trained is None and 'kpu_trained' in scores:
            kpu_trained = float(np.asarray(scores['kpu_trained']).reshape(-1)[0])
        if 'kpu' not in scores or kpu_trained is None:
            raise ValueError(
                'method "alkpu" needs scores["kpu"] and kpu_trained (a parameter or scores["kpu_trained"])'
            )
        values = np.asarray(scores['kpu'], dtype=np.float64)
        window = alkpu_window(values, kpu_trained, c0=c0, c1=c1, max_selected=batch_size, seed=seed)
    else:
        if 'max_force_deviation' not in scores:
            raise ValueError('method "trust" needs scores["max_force_deviation"] (eV/Å)')
        values = np.asarray(scores['max_force_deviation'], dtype=np.float64)
        bounds = {key: value for key, value in (('lo', lo), ('hi', hi)) if value is not None}
        window = committee_trust_window(values, max_selected=batch_size, seed=seed, **bounds)
    indices = np.asarray(window.indices, dtype=np.int64)
    return Selection(
        method=method,
        indices=indices,
        gains=values[indices] if indices.size else np.zeros(0),
        scores=values,
        ranks=_ranks(values.size, indices),
        n_accurate=window.n_accurate,
        n_candidate=window.n_candidate,
        n_failed=window.n_failed,
    )


def _select_hal_stops(method: str, batch_size: int, *, scores: dict[str, np.ndarray], **_: Any) -> Selection:
    return _hal_stops(batch_size, scores)


BUILTIN_SELECTORS.update(
    {name: select_by_features for name in FEATURE_METHODS}
    | {name: select_in_window for name in (*WINDOW_METHODS, 'random')}
    | {'hal': _select_hal_stops}
)
