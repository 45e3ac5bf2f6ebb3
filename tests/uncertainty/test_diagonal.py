"""Diagonal kernels of seeds/001 Sec. 3.1.5 (eq. 24-25): QBC(E), QBC(F), AE(E), AE(F), RND."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_alkit.uncertainty.diagonal import ae_energy, ae_forces, qbc_energy, qbc_forces, rnd


def test_qbc_energy_is_numpy_std(rng):
    energies = rng.normal(size=(3, 10))
    np.testing.assert_allclose(qbc_energy(energies), np.std(energies, axis=0), rtol=1e-14)
    np.testing.assert_allclose(qbc_energy(torch.as_tensor(energies)), np.std(energies, axis=0), rtol=1e-14)
    np.testing.assert_array_equal(qbc_energy(np.ones((4, 3))), 0.0)
    with pytest.raises(ValueError):
        qbc_energy(np.ones(3))


def test_qbc_forces_eq25(rng):
    forces = rng.normal(size=(3, 9, 3))
    sizes = np.array([4, 5])
    mean = forces.mean(axis=0)
    expected = [
        np.sqrt(np.mean([np.sum((forces[k, a:b] - mean[a:b]) ** 2) / (3 * (b - a)) for k in range(3)]))
        for a, b in ((0, 4), (4, 9))
    ]
    np.testing.assert_allclose(qbc_forces(forces, sizes), expected, rtol=1e-12)
    # one structure: the root mean square over components of the component-wise population std
    single = qbc_forces(forces)
    np.testing.assert_allclose(single, [np.sqrt(np.mean(np.std(forces, axis=0) ** 2))], rtol=1e-12)
    with pytest.raises(ValueError):
        qbc_forces(forces, np.array([4, 4]))


def test_absolute_errors_eq24(rng):
    predicted, reference = rng.normal(size=5), rng.normal(size=5)
    np.testing.assert_allclose(ae_energy(predicted, reference), np.abs(reference - predicted))
    f_pred, f_ref = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    sizes = np.array([2, 5])
    diff = np.abs(f_ref - f_pred)
    np.testing.assert_allclose(ae_forces(f_pred, f_ref, sizes), [diff[:2].mean(), diff[2:].mean()], rtol=1e-12)
    np.testing.assert_allclose(ae_forces(torch.as_tensor(f_pred), f_ref), [diff.mean()], rtol=1e-12)
    with pytest.raises(ValueError):
        ae_energy(predicted, reference[:3])


def test_rnd_is_reproducible():
    first = rnd(20, seed=7)
    np.testing.assert_array_equal(first, rnd(20, seed=7))
    assert not np.array_equal(first, rnd(20, seed=8))
    assert first.shape == (20,) and np.all((first >= 0.0) & (first < 1.0))
    assert rnd(0).shape == (0,)
