"""Exploration analysis of seeds/003 (Methods): CV-space coverage and auto-correlation function/time.

**Coverage** ("tree-based weighted recursive partitioning"): the bounded d-dimensional CV space is the root of a
complete k-ary tree; each node is split ``s_j`` times along dimension j, so the arity is ``k = Π_j s_j`` and level
``l`` has ``k^l`` nodes (generalised hyper-rectangles). A node at level l carries the reward ``k^{-l}``, so every level
is worth 1 in total; a visited node (at least one sample inside) earns its reward once, revisits earn nothing. The
coverage is the collected reward over levels 1..h divided by h, in [0, 1]: exploring large unseen partitions first
(breadth-first) is rewarded, getting stuck in a small region is penalised. The root (level 0, always visited) is left
out of the normalisation. Samples outside the bounds are ignored.

**Auto-correlation** (seeds/003 eq. 29-31): ``C(t) = <δA(t_0)·δA(t_0 + t)> / <δA·δA>`` with δA = A - <A> summed over
the components of the observable (positions (T, N, 3), atom uncertainties (T, N), ...). The estimators are those of
TensorFlow Probability, which the paper uses: C(t) is the *unbiased* estimate (each lag's sum of products divided by
its number of pairs T - t, as ``tfp.stats.auto_correlation``; FFT), and the auto-correlation time
``τ = 1 + 2 Σ_{t=1}^{M-1} (1 - t/T) C(t)`` (``tfp.mcmc.effective_sample_size`` with ``filter_threshold=0``: M is the
first lag with C(M) < 0), ESS = T/τ. The weight (1 - t/T) is applied once: on the unbiased C(t) it makes each term the
biased 1/T estimate. For an AR(1) process, C(t) = φ^t and τ -> (1 + φ)/(1 - φ) for long series; short series give a
smaller τ, mostly because centring on the sample mean lowers every C(t) by about (1 - C(t)) τ/T.

No AiiDA import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    'autocorrelation',
    'autocorrelation_time',
    'coverage',
    'coverage_curve',
    'effective_sample_size',
]


def _node_indices(points: np.ndarray, bounds: np.ndarray, splits: np.ndarray, level: int) -> np.ndarray:
    """(T,) flat index of the level-``level`` node containing each point (-1 outside the bounds)."""
    low, high = bounds[:, 0], bounds[:, 1]
    per_dim = splits.astype(np.int64) ** level  # cells per dimension at this level
    scaled = (points - low) / (high - low)
    inside = np.all((scaled >= 0.0) & (scaled <= 1.0), axis=1)
    cells = np.minimum(np.floor(scaled * per_dim).astype(np.int64), per_dim - 1)
    cells = np.where(inside[:, None], cells, 0)
    flat = np.ravel_multi_index(cells.T, tuple(int(n) for n in per_dim)) if len(points) else np.zeros(0, np.int64)
    return np.where(inside, flat, -1)


def _prepare(
    points: np.ndarray, bounds: np.ndarray | Sequence, splits: int | Sequence[int], height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 2)
    if bounds.shape[0] != points.shape[1]:
        raise ValueError(f'bounds for {bounds.shape[0]} dimensions, points have {points.shape[1]}')
    if np.any(bounds[:, 1] <= bounds[:, 0]):
        raise ValueError('each dimension needs low < high')
    splits = np.broadcast_to(np.asarray(splits, dtype=np.int64), (points.shape[1],)).copy()
    if np.any(splits < 2) or height < 1:
        raise ValueError('need at least 2 splits per dimension and height >= 1')
    if np.prod(splits.astype(np.float64)) ** height > 2**62:
        raise ValueError('too many partitions for flat node indices; lower the height or the splits')
    return points, bounds, splits


def coverage_curve(
    points: np.ndarray, bounds: np.ndarray | Sequence, splits: int | Sequence[int] = 2, height: int = 4
) -> np.ndarray:
    """(T,) coverage of the CV space after each of the T samples (in order), in [0, 1].

    :param points: (T, d) collective variables (e.g. the dihedrals φ, ψ in rad), in the order they were sampled.
    :param bounds: (d, 2) lower/upper bound of each dimension.
    :param splits: splits per dimension s_j (one number or one per dimension); arity k = Π s_j.
    :param height: tree height h (levels 1..h are scored).
    """
    points, bounds, splits = _prepare(points, bounds, splits, height)
    arity = float(np.prod(splits))
    curve = np.zeros(len(points))
    for level in range(1, height + 1):
        nodes = _node_indices(points, bounds, splits, level)
        valid = np.flatnonzero(nodes >= 0)
        _, first = np.unique(nodes[valid], return_index=True)
        gains = np.zeros(len(points))
        gains[valid[first]] = arity ** (-level)
        curve += np.cumsum(gains)
    return curve / height


def coverage(
    points: np.ndarray, bounds: np.ndarray | Sequence, splits: int | Sequence[int] = 2, height: int = 4
) -> float:
    """Coverage of the CV space by all samples (last entry of :func:`coverage_curve`), in [0, 1]."""
    curve = coverage_curve(points, bounds, splits, height)
    return float(curve[-1]) if len(curve) else 0.0


def autocorrelation(series: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """Normalised auto-correlation C(t), t = 0..max_lag, of a time series (T, ...) (seeds/003 eq. 29).

    The first axis is time; all other axes are components whose covariances are summed,
    ``C(t) = [Σ_c Σ_{t0} δA_c(t0) δA_c(t0 + t) / (T - t)] / [Σ_c Σ_{t0} δA_c(t0)² / T]`` (unbiased estimator: each
    lag normalised by its T - t pairs, as ``tfp.stats.auto_correlation``; C(0) = 1). A constant series gives C = 0
    beyond lag 0.
    """
    data = np.asarray(series, dtype=np.float64)
    n = data.shape[0]
    if n < 2:
        raise ValueError('need at least two time steps')
    data = data.reshape(n, -1)
    data = data - data.mean(axis=0)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(data, n=size, axis=0)
    covariance = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n].sum(axis=1)
    max_lag = n - 1 if max_lag is None else min(int(max_lag), n - 1)
    if covariance[0] <= 0:
        out = np.zeros(max_lag + 1)
        out[0] = 1.0
        return out
    covariance = covariance[: max_lag + 1] / (n - np.arange(max_lag + 1))  # per pair: unbiased
    return covariance / covariance[0]


def autocorrelation_time(series: np.ndarray, max_lag: int | None = None) -> float:
    """Auto-correlation time τ = 1 + 2 Σ_{t=1}^{M-1} (1 - t/T) C(t), in time steps (seeds/003 eq. 30).

    C(t) is the unbiased :func:`autocorrelation`, M the first lag with C(M) < 0 (TensorFlow Probability's
    ``effective_sample_size`` with ``filter_threshold=0``).
    """
    n = np.asarray(series).shape[0]
    acf = autocorrelation(series, max_lag)
    negative = np.flatnonzero(acf < 0)
    cut = int(negative[0]) if negative.size else len(acf)
    lags = np.arange(1, cut)
    return float(1.0 + 2.0 * np.sum((1.0 - lags / n) * acf[1:cut]))


def effective_sample_size(series: np.ndarray, max_lag: int | None = None) -> float:
    """ESS = T / τ (seeds/003 eq. 31)."""
    return np.asarray(series).shape[0] / autocorrelation_time(series, max_lag)
