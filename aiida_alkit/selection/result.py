"""What every batch-selection method shares: the :class:`SelectionResult` it returns and the batch-size check.

Its own module so that :mod:`aiida_alkit.selection.greedy` and :mod:`aiida_alkit.selection.dopt` both import it and
neither has to import the other for it (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['SelectionResult', 'check_batch_size']


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of a batch selection.

    ``indices`` are pool indices in pick order (int64), ``gains`` the score of each pick at the time it was made
    (float64, same length), ``method`` the selection method name. ``status`` is ``None`` unless the greedy criterion
    ran out (e.g. MaxDet beyond the feature rank) and the batch was completed by a documented fallback.
    """

    indices: np.ndarray
    gains: np.ndarray
    method: str
    status: str | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def check_batch_size(batch_size: int, n_pool: int) -> int:
    """``batch_size`` as an int, or a ``ValueError`` when it is not an integer in ``[1, n_pool]``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f'batch_size must be an integer, got {batch_size!r}')
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    if batch_size > n_pool:
        raise ValueError(f'batch_size={batch_size} exceeds the number of pool points ({n_pool})')
    return batch_size
