"""Threshold-window selection: ALKPU's KPU window and DP-GEN's committee trust window (seed paper 000, section 3).

Every explored configuration falls into one of three classes (paper 000, Table 2: "Reliable / Selected / Discarded";
DP-GEN: accurate / candidate / failed):

* accurate -- uncertainty below the lower threshold: the model is trusted, nothing to label;
* candidate -- inside the closed window ``[lo, hi]``: worth labelling;
* failed -- above the upper threshold (or not finite): too far from physical configurations, discarded.

If there are more candidates than ``max_selected`` (the paper's "Maximum", 100 in Table 2), ``max_selected`` of them
are drawn uniformly at random without replacement (reproducible with ``seed``); otherwise all candidates are selected.

ALKPU: ``lo = c0 * KPU_trained``, ``hi = c1 * KPU_trained`` with ``c0 = 1.25``, ``c1 = 2.0``, where ``KPU_trained``
is the average KPU (force) of training data at the last training step. DP-GEN: ``[lo, hi]`` on the maximal
committee force deviation in eV/Å; DP-GEN's defaults are (0.05, 0.15), the ALKPU paper uses (0.02, 0.2) for Cu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    'ACCURATE',
    'ALKPU_C0',
    'ALKPU_C1',
    'CANDIDATE',
    'DPGEN_DEFAULT_TRUST',
    'FAILED',
    'PAPER_CU_TRUST',
    'PAPER_MAXIMUM',
    'WindowSelection',
    'alkpu_window',
    'committee_trust_window',
    'random_selection',
    'trust_window',
]

#: ALKPU window factors (paper 000).
ALKPU_C0, ALKPU_C1 = 1.25, 2.0
#: DP-GEN's default force trust levels (eV/Å).
DPGEN_DEFAULT_TRUST = (0.05, 0.15)
#: Trust levels used for DP-GEN in paper 000's Cu comparison (eV/Å).
PAPER_CU_TRUST = (0.02, 0.2)
#: "Maximum" number of selected configurations per round in paper 000's Table 2.
PAPER_MAXIMUM = 100

#: Per-candidate status codes stored in :attr:`WindowSelection.flags`.
ACCURATE, CANDIDATE, FAILED = 0, 1, 2


@dataclass(frozen=True)
class WindowSelection:
    """Outcome of a window (or random) selection over a pool of ``n`` configurations.

    ``indices``: selected pool indices in pick order (int64; ascending when no cap applied, random draw order
    otherwise); ``flags``: ``(n,)`` int8 status per configuration (:data:`ACCURATE`, :data:`CANDIDATE`,
    :data:`FAILED`); ``n_accurate`` / ``n_candidate`` / ``n_failed``: class counts (``n_candidate`` counts all
    candidates before the cap); ``lo`` / ``hi``: the window used (in the uncertainty's unit).
    """

    indices: np.ndarray
    flags: np.ndarray
    n_accurate: int
    n_candidate: int
    n_failed: int
    lo: float
    hi: float

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def accurate(self) -> np.ndarray:
        """Boolean mask of accurate configurations."""
        return self.flags == ACCURATE

    @property
    def candidate(self) -> np.ndarray:
        """Boolean mask of candidate configurations (inside the window)."""
        return self.flags == CANDIDATE

    @property
    def failed(self) -> np.ndarray:
        """Boolean mask of failed configurations (above the window or non-finite)."""
        return self.flags == FAILED

    @property
    def n_selected(self) -> int:
        return len(self)


def _check_cap(max_selected: int | None) -> None:
    if max_selected is not None and (isinstance(max_selected, bool) or int(max_selected) != max_selected):
        raise ValueError(f'max_selected must be an integer or None, got {max_selected!r}')
    if max_selected is not None and max_selected < 0:
        raise ValueError(f'max_selected must be non-negative, got {max_selected}')


def trust_window(
    values: Any, lo: float, hi: float, max_selected: int | None = None, seed: Any = None
) -> WindowSelection:
    """Classify ``values`` ``(n,)`` against the closed window ``[lo, hi]`` and select candidates (random cap).

    ``value < lo``: accurate; ``lo <= value <= hi``: candidate; ``value > hi`` or NaN / inf: failed.
    """
    if hasattr(values, 'detach'):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f'values must be one-dimensional, got shape {values.shape}')
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f'need finite lo <= hi, got lo={lo}, hi={hi}')
    _check_cap(max_selected)
    flags = np.full(values.shape, FAILED, dtype=np.int8)
    finite = np.isfinite(values)
    flags[finite & (values < lo)] = ACCURATE
    flags[finite & (values >= lo) & (values <= hi)] = CANDIDATE
    candidates = np.flatnonzero(flags == CANDIDATE).astype(np.int64)
    if max_selected is not None and candidates.size > max_selected:
        rng = np.random.default_rng(seed)
        indices = rng.choice(candidates, size=int(max_selected), replace=False).astype(np.int64)
    else:
        indices = candidates
    return WindowSelection(
        indices=indices,
        flags=flags,
        n_accurate=int(np.sum(flags == ACCURATE)),
        n_candidate=int(candidates.size),
        n_failed=int(np.sum(flags == FAILED)),
        lo=float(lo),
        hi=float(hi),
    )


def alkpu_window(
    kpu: Any,
    kpu_trained: float,
    c0: float = ALKPU_C0,
    c1: float = ALKPU_C1,
    max_selected: int | None = None,
    seed: Any = None,
) -> WindowSelection:
    """ALKPU selection: candidates satisfy ``c0 * KPU_trained <= KPU <= c1 * KPU_trained`` (paper 000, section 3).

    ``kpu``: ``(n,)`` KPU (force) of the explored configurations; ``kpu_trained``: mean KPU of training data at the
    last training step (same unit, > 0).
    """
    if not (math.isfinite(kpu_trained) and kpu_trained > 0):
        raise ValueError(f'kpu_trained must be positive and finite, got {kpu_trained}')
    if not 0 <= c0 <= c1:
        raise ValueError(f'need 0 <= c0 <= c1, got c0={c0}, c1={c1}')
    return trust_window(kpu, c0 * kpu_trained, c1 * kpu_trained, max_selected=max_selected, seed=seed)


def committee_trust_window(
    max_force_dev: Any,
    lo: float = DPGEN_DEFAULT_TRUST[0],
    hi: float = DPGEN_DEFAULT_TRUST[1],
    max_selected: int | None = None,
    seed: Any = None,
) -> WindowSelection:
    """DP-GEN selection on the maximal committee force deviation ``(n,)`` (eV/Å) with trust window ``[lo, hi]``."""
    return trust_window(max_force_dev, lo, hi, max_selected=max_selected, seed=seed)


def random_selection(n_pool: int, batch: int, seed: Any = None) -> WindowSelection:
    """``batch`` distinct pool indices drawn uniformly at random (baseline); all configurations count as candidates."""
    if int(n_pool) != n_pool or n_pool < 0:
        raise ValueError(f'n_pool must be a non-negative integer, got {n_pool!r}')
    if int(batch) != batch or batch < 0:
        raise ValueError(f'batch must be a non-negative integer, got {batch!r}')
    if batch > n_pool:
        raise ValueError(f'cannot select a batch of {batch} from a pool of only {n_pool} configurations')
    rng = np.random.default_rng(seed)
    indices = rng.choice(int(n_pool), size=int(batch), replace=False).astype(np.int64)
    return WindowSelection(
        indices=indices,
        flags=np.full(int(n_pool), CANDIDATE, dtype=np.int8),
        n_accurate=0,
        n_candidate=int(n_pool),
        n_failed=0,
        lo=-math.inf,
        hi=math.inf,
    )
