"""Diagonal kernels of ``seeds/001`` Sec. 3.1.5 (eq. 24-25): values that need only predictions.

* :func:`qbc_energy`, :func:`qbc_forces` -- QBC(E), QBC(F): committee disagreement σ_E^ens, σ_F^ens (eq. 25),
  population standard deviations (1/N_ens) across the members;
* :func:`ae_energy`, :func:`ae_forces` -- AE(E), AE(F): absolute errors ΔE, ΔF against reference labels (eq. 24);
  benchmarks only, since they need the labels;
* :func:`rnd` -- RND: i.i.d. uniform random values u_S ∈ [0, 1), reproducible with a seed.

The kernel of each is ``k(S, S') = value(S) δ_{S,S'}``. Inputs are numpy arrays or torch tensors; outputs are float64
numpy arrays of shape (B,). Structures of a flat atom layout are given by their sizes ``n_atoms`` (B,). No AiiDA import.
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import float_array

__all__ = ['ae_energy', 'ae_forces', 'qbc_energy', 'qbc_forces', 'rnd']

ArrayLike = np.ndarray | torch.Tensor


def _sizes(n_atoms: ArrayLike | None, n_total: int) -> np.ndarray:
    sizes = np.array([n_total]) if n_atoms is None else float_array(n_atoms).astype(np.int64).reshape(-1)
    if sizes.sum() != n_total or (sizes < 1).any():
        raise ValueError(f'n_atoms must be positive and add up to the number of atoms ({n_total}), got {sizes}')
    return sizes


def _segment_mean(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (N,) over consecutive segments of lengths ``sizes``."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.add.reduceat(values, starts) / sizes


def qbc_energy(member_energies: ArrayLike) -> np.ndarray:
    """QBC(E): σ_E^ens(S) = sqrt(1/N_ens sum_k (E_k(S) - Ē(S))²) (eq. 25), eV, from (N_ens, B) member energies."""
    energies = float_array(member_energies)
    if energies.ndim != 2 or energies.shape[0] < 1:
        raise ValueError(f'member_energies must have shape (N_ens, B), got {energies.shape}')
    return energies.std(axis=0)


def qbc_forces(member_forces: ArrayLike, n_atoms: ArrayLike | None = None) -> np.ndarray:
    """QBC(F): σ_F^ens(S) = sqrt(1/N_ens sum_k 1/(3 N_at) sum_j ||F_kj - F̄_j||²) (eq. 25), eV/Å.

    :param member_forces: (N_ens, N, 3) member forces of all atoms, eV/Å.
    :param n_atoms: (B,) structure sizes (``None``: one structure).
    """
    forces = float_array(member_forces)
    if forces.ndim != 3 or forces.shape[2] != 3:
        raise ValueError(f'member_forces must have shape (N_ens, N, 3), got {forces.shape}')
    sizes = _sizes(n_atoms, forces.shape[1])
    per_atom = np.square(forces - forces.mean(axis=0)).sum(axis=2).mean(axis=0)  # (N,) mean over members
    return np.sqrt(_segment_mean(per_atom, sizes) / 3.0)


def ae_energy(predicted: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """AE(E): ΔE(S) = abs(E^ref - E(S, θ)) (eq. 24), eV, from (B,) energies."""
    predicted, reference = float_array(predicted).reshape(-1), float_array(reference).reshape(-1)
    if predicted.shape != reference.shape:
        raise ValueError(f'shapes differ: {predicted.shape} and {reference.shape}')
    return np.abs(reference - predicted)


def ae_forces(predicted: ArrayLike, reference: ArrayLike, n_atoms: ArrayLike | None = None) -> np.ndarray:
    """AE(F): ΔF(S) = 1/(3 N_at) sum_i sum_j abs(F_ij^ref - F_ij(S, θ)) (eq. 24), eV/Å, from (N, 3) forces."""
    predicted, reference = float_array(predicted).reshape(-1, 3), float_array(reference).reshape(-1, 3)
    if predicted.shape != reference.shape:
        raise ValueError(f'shapes differ: {predicted.shape} and {reference.shape}')
    sizes = _sizes(n_atoms, predicted.shape[0])
    return _segment_mean(np.abs(reference - predicted).sum(axis=1), sizes) / 3.0


def rnd(n_structures: int, seed: int | None = 0) -> np.ndarray:
    """RND: u_S drawn i.i.d. from U[0, 1) for ``n_structures`` structures (Sec. 3.1.5); same seed, same values."""
    if n_structures < 0:
        raise ValueError(f'n_structures must be non-negative, got {n_structures}')
    return np.random.default_rng(seed).random(int(n_structures))
