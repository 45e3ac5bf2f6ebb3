"""D-optimality (MaxVol) selection of seed 004: label the candidates that enter the active set."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiida_alkit.selection.result import SelectionResult, check_batch_size
from aiida_alkit.uncertainty.doptimal import DEFAULT_GAMMA_SELECT, ActiveSet

__all__ = ['max_vol']


def max_vol(
    pool_features: Any, train_features: Any, batch_size: int, gamma_select: float = DEFAULT_GAMMA_SELECT
) -> SelectionResult:
    """MaxVol selection (seed 004, active learning with the extrapolation grade).

    The active set is fitted on ``train_features`` (M, m); pool rows with extrapolation grade γ > ``gamma_select``
    are offered to MaxVol together with the active rows, and the pool rows that enter the active set are selected,
    largest γ first, at most ``batch_size``. Gains are the γ of the picks (dimensionless).
    """
    pool = np.asarray(pool_features, dtype=np.float64)
    train = np.asarray(train_features, dtype=np.float64)
    if pool.ndim != 2 or train.ndim != 2 or pool.shape[1] != train.shape[1]:
        raise ValueError(f'pool and training features must be 2-d with equal widths, got {pool.shape}, {train.shape}')
    batch_size = check_batch_size(batch_size, pool.shape[0])
    active = ActiveSet(gamma_select=gamma_select, gamma_break=max(gamma_select, 10.0)).fit(train)
    gamma = np.atleast_1d(active.extrapolation_grade(pool))
    candidates = np.flatnonzero(gamma > gamma_select)
    entering = active.update(pool[candidates]) - train.shape[0]
    picks = candidates[entering]
    picks = picks[np.argsort(-gamma[picks], kind='stable')][:batch_size]
    status = None if picks.size == batch_size else f'only {picks.size} candidates extrapolate beyond γ={gamma_select}'
    return SelectionResult(
        indices=picks.astype(np.int64), gains=gamma[picks].astype(np.float64), method='maxvol', status=status
    )
