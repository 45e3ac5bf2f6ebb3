"""The one input check of the uncertainty modules (``float_array``), and the messages the modules give through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_alkit.uncertainty import conformal, diagonal, doptimal, hal
from aiida_alkit.uncertainty._checks import float_array


def test_tensors_and_sequences_become_float64_arrays():
    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3) * 1.5
    array = float_array(tensor, 'x', ndim=2)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64
    np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3) * 1.5)
    assert float_array([1, 2]).tolist() == [1.0, 2.0]
    assert np.isnan(float_array([np.nan])[0])  # only finite=True refuses NaN


def test_messages():
    with pytest.raises(ValueError, match=r'^features must have 2 dimensions, got shape \(3,\)$'):
        float_array([1.0, 2.0, 3.0], 'features', 2)
    with pytest.raises(ValueError, match=r'^a must be finite$'):
        float_array([[1.0, np.inf]], 'a', 2, finite=True)


def test_every_module_uses_the_one_check():
    assert hal.float_array is doptimal.float_array is conformal.float_array is diagonal.float_array is float_array
    for module in (hal, doptimal, conformal, diagonal):
        assert not hasattr(module, '_array')


def test_module_messages_unchanged():
    with pytest.raises(ValueError, match=r'features must have 2 dimensions, got shape \(4,\)'):
        hal.build_design_matrix(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match=r'^a must be finite$'):
        doptimal.maxvol(np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match='a must have 2 dimensions'):
        doptimal.maxvol(np.ones(3))
    np.testing.assert_allclose(diagonal.qbc_energy(torch.tensor([[1.0, 2.0], [3.0, 2.0]])), [1.0, 0.0])
    np.testing.assert_allclose(conformal.atomic_force_rmse(torch.ones(2, 3), np.zeros((2, 3))), [1.0, 1.0])
