"""The input check of the uncertainty modules: arrays or tensors in, float64 numpy arrays out. No AiiDA import."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ['float_array']


def float_array(value: Any, name: str = 'array', ndim: int | None = None, finite: bool = False) -> np.ndarray:
    """``value`` (numpy array, torch tensor or sequence) as a float64 numpy array.

    :param name: what the value is called in the error messages.
    :param ndim: the number of dimensions it must have (any when None).
    :param finite: refuse NaN and inf.
    :raises ValueError: ``'<name> must have <ndim> dimensions, got shape <shape>'`` or ``'<name> must be finite'``.
    """
    if hasattr(value, 'detach'):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f'{name} must have {ndim} dimensions, got shape {array.shape}')
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f'{name} must be finite')
    return array
