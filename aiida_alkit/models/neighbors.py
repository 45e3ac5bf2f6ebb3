"""Neighbour lists for the models: all pairs within a cutoff, for any cell and any periodicity.

The pair convention is the one of ASE and vesin: pair ``(i, j, S)`` means atom ``j`` in the periodic image shifted by
the integer cell vector ``S`` lies within the cutoff of atom ``i``, i.e. the vector from ``i`` to that image is
``r_j - r_i + S @ cell`` (Å). Lists are *full* (both ``(i, j, S)`` and ``(j, i, -S)`` are present) and may contain an
atom's own periodic images (``i == j`` with ``S != 0``) when the cutoff exceeds a cell length.

`vesin <https://github.com/Luthaf/vesin>`_ does the work: it is exact for any triclinic cell, for cutoffs larger than
half (or all) of the cell, for non-periodic systems (zero box, ``periodic=False``) and for mixed periodicity (slabs,
wires). ASE's ``neighbor_list`` is kept as a fall-back backend and as the test reference.

:func:`neighbor_pairs` gives the same pairs as torch tensors on a device. On a GPU it builds them there with vesin's
torch extension (``vesin-torch``), so that neither the positions' list nor the pairs cross the bus (on one H100,
Cu-6912: 0.07 µs/atom against 1.97 for vesin on the host); on the CPU it is :func:`neighbor_list` and one copy.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ['neighbor_list', 'neighbor_pairs']

_BACKENDS = ('vesin', 'ase')
_TENSOR_BACKENDS = ('vesin-torch', *_BACKENDS)


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool,
    cutoff: float,
    backend: str = 'vesin',
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs closer than ``cutoff`` (full list, periodic images included).

    :param positions: (n_atoms, 3) Cartesian coordinates, Å.
    :param cell: (3, 3) lattice vectors as rows, Å; may be all zeros for a non-periodic system. A non-periodic
        direction may have a zero lattice vector.
    :param pbc: periodicity per direction, (3,) bool or one bool.
    :param cutoff: cutoff radius, Å (pairs with distance below it are returned).
    :param backend: ``'vesin'`` (default) or ``'ase'``.
    :return: ``(i, j, S)``: int64 arrays of shapes (n_pairs,), (n_pairs,), (n_pairs, 3); the vector from atom ``i``
        to the neighbour is ``positions[j] - positions[i] + S @ cell``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f'unknown neighbour-list backend {backend!r}, expected one of {_BACKENDS}')
    positions, cell, pbc = _checked(positions, cell, pbc, cutoff)
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, 3), dtype=np.int64)
    if backend == 'vesin':
        try:
            return _vesin_pairs(positions, cell, pbc, float(cutoff))
        except (RuntimeError, ValueError):
            # vesin rejects some degenerate boxes that ASE accepts (e.g. a zero vector in a non-periodic direction
            # combined with periodic ones in older versions); ASE's implementation is exact, only slower.
            pass
    return _ase_pairs(positions, cell, pbc, float(cutoff))


def neighbor_pairs(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool,
    cutoff: float,
    device: str | torch.device = 'cpu',
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs of :func:`neighbor_list` (same arguments, same convention) as int64 tensors on ``device``.

    :param backend: ``'vesin-torch'`` builds the list on ``device`` from a float64 copy of the positions there;
        ``'vesin'`` or ``'ase'`` build it on the host and copy the pairs over. Default: ``'vesin-torch'`` on a
        device other than the CPU, ``'vesin'`` on the CPU. Where vesin-torch is not installed, cannot be loaded
        with this torch, or rejects the box, the host's list is used instead (same pairs).
    :return: ``(i, j, S)`` of shapes (n_pairs,), (n_pairs,), (n_pairs, 3), in no particular order.
    """
    device = torch.device(device)
    if backend is None:
        backend = 'vesin' if device.type == 'cpu' else 'vesin-torch'
    if backend not in _TENSOR_BACKENDS:
        raise ValueError(f'unknown neighbour-list backend {backend!r}, expected one of {_TENSOR_BACKENDS}')
    if backend == 'vesin-torch':
        positions, cell, pbc = _checked(positions, cell, pbc, cutoff)
        if positions.shape[0]:
            pairs = _vesin_torch_pairs(positions, cell, pbc, float(cutoff), device)
            if pairs is not None:
                return pairs
        backend = 'vesin'
    i, j, shifts = neighbor_list(positions, cell, pbc, cutoff, backend=backend)
    return tuple(torch.as_tensor(values, device=device) for values in (i, j, shifts))  # type: ignore[return-value]


def _checked(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray | bool, cutoff: float):
    """The arguments as float64 (n, 3), (3, 3) and (3,) bool arrays; ValueError for a bad cutoff or cell."""
    if not cutoff > 0:
        raise ValueError(f'the cutoff must be positive, got {cutoff!r} Å')
    positions = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-12 and not _periodic_vectors_independent(cell, pbc):
        raise ValueError(f'periodic directions {pbc.tolist()} need linearly independent lattice vectors, got {cell}')
    return positions, cell, pbc


def _vesin_torch_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """vesin-torch's full list on ``device``; None where it is unavailable or rejects the input."""
    try:
        from vesin.torch import NeighborList
    except (ImportError, OSError, RuntimeError):  # not installed, or built for another torch
        return None
    box = cell if pbc.any() else np.zeros((3, 3))
    periodic = torch.as_tensor(pbc, device=device)
    try:
        i, j, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
            points=torch.as_tensor(positions, device=device),
            box=torch.as_tensor(box, device=device),
            periodic=periodic,
            quantities='ijS',
        )
    except (RuntimeError, ValueError):
        return None
    return i.to(torch.int64), j.to(torch.int64), shifts.to(torch.int64).reshape(-1, 3)


def _periodic_vectors_independent(cell: np.ndarray, pbc: np.ndarray) -> bool:
    vectors = cell[pbc]
    return bool(np.linalg.matrix_rank(vectors, tol=1e-8) == vectors.shape[0])


def _vesin_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from vesin import NeighborList

    periodic: bool | list[bool] = bool(pbc[0]) if (pbc == pbc[0]).all() else pbc.tolist()
    box = cell if pbc.any() else np.zeros((3, 3))
    i, j, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=positions, box=box, periodic=periodic, quantities='ijS'
    )
    return (
        np.asarray(i, dtype=np.int64),
        np.asarray(j, dtype=np.int64),
        np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
    )


def _ase_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ase.neighborlist import primitive_neighbor_list

    i, j, shifts = primitive_neighbor_list('ijS', pbc, cell, positions, cutoff, self_interaction=False)
    return (
        np.asarray(i, dtype=np.int64),
        np.asarray(j, dtype=np.int64),
        np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
    )
