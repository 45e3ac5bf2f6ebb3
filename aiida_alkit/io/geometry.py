"""Vectorised geometric checks over many configurations at once (used for input validation).

Checking 100 000 configurations one by one with a neighbour-list library costs far too much per call for a
0.5 Å cutoff, and all-pairs distances are O(n²). Here all configurations of the same size are processed together
with a sort-and-sweep: atoms are sorted along the first lattice direction and only pairs whose separation along it
is below the cutoff are measured exactly. The sweep stops as soon as no pair is within the cutoff, so the work is
O(n log n) per configuration in practice.
"""

from __future__ import annotations

import numpy as np

__all__ = ['min_interatomic_distances']


def min_interatomic_distances(
    positions: np.ndarray, cells: np.ndarray, pbc: np.ndarray, offsets: np.ndarray, cutoff: float
) -> np.ndarray:
    """Shortest distance (Å) between two atoms, periodic images included, for every configuration.

    Only distances below ``cutoff`` are resolved; a configuration with no pair closer than ``cutoff`` gets ``inf``.

    :param positions: (n_atoms_total, 3) Å.
    :param cells: (n_configs, 3, 3) Å, rows are lattice vectors.
    :param pbc: (n_configs, 3) bool.
    :param offsets: (n_configs + 1,) atom offsets of the configurations.
    :param cutoff: Å, > 0.
    """
    n_configs = len(offsets) - 1
    result = np.full(n_configs, np.inf)
    sizes = np.diff(offsets)
    fully_periodic = pbc.all(axis=1)
    not_periodic = ~pbc.any(axis=1)
    heights = np.full(n_configs, np.inf)
    if fully_periodic.any():
        heights[fully_periodic] = _cell_heights(cells[fully_periodic]).min(axis=1)
    # Rounding fractional differences gives the minimum image for every pair closer than `cutoff` when all
    # perpendicular cell heights are at least 2 * cutoff; other cells (and mixed pbc) take the general route.
    fast = (not_periodic | (fully_periodic & (heights >= 2.0 * cutoff))) & (sizes > 0)
    for index in np.flatnonzero(~fast & (sizes > 0)):
        result[index] = _min_distance_ase(
            positions[offsets[index] : offsets[index + 1]], cells[index], pbc[index], cutoff
        )
    for size in np.unique(sizes[fast]):
        if size < 2:
            continue  # one atom: no pair, and its own images are >= 2 * cutoff away
        configs = np.flatnonzero(fast & (sizes == size))
        for periodic in (True, False):
            group = configs[fully_periodic[configs] == periodic]
            if group.size:
                result[group] = _sweep(positions, offsets, cells, group, int(size), periodic, cutoff)
    return result


def _cell_heights(cells: np.ndarray) -> np.ndarray:
    """Perpendicular heights (Å) of each cell along its three lattice directions: V / |a_j x a_k|."""
    volume = np.abs(np.linalg.det(cells))
    heights = np.empty(cells.shape[:2])
    for axis in range(3):
        a, b = cells[:, (axis + 1) % 3], cells[:, (axis + 2) % 3]
        area = np.linalg.norm(np.cross(a, b), axis=1)
        heights[:, axis] = np.divide(volume, area, out=np.zeros_like(volume), where=area > 0)
    return heights


def _sweep(
    positions: np.ndarray,
    offsets: np.ndarray,
    cells: np.ndarray,
    group: np.ndarray,
    size: int,
    periodic: bool,
    cutoff: float,
    chunk: int = 20000,
) -> np.ndarray:
    out = np.full(group.size, np.inf)
    atom_index = offsets[group][:, None] + np.arange(size)[None, :]
    for start in range(0, group.size, chunk):
        sel = slice(start, start + chunk)
        xyz = positions[atom_index[sel]]  # (b, n, 3)
        if periodic:
            cell = cells[group[sel]]
            coords = xyz @ np.linalg.inv(cell)
            coords -= np.floor(coords)
            metric = cell @ cell.transpose(0, 2, 1)
            # a pair closer than `cutoff` is closer than cutoff / height_i along every fractional axis i
            windows = cutoff / _cell_heights(cell)
        else:
            coords = xyz
            metric = None
            windows = np.full((xyz.shape[0], 3), cutoff)
        order = np.argsort(coords[:, :, 0], axis=1, kind='stable')
        coords = np.take_along_axis(coords, order[:, :, None], axis=1)
        # Candidate search in float32 on separate axes (half the memory traffic), with windows widened by a
        # margin far above float32 rounding; candidates are then measured exactly in float64.
        lead = np.ascontiguousarray(coords[:, :, 0], dtype=np.float32)
        others = [np.ascontiguousarray(coords[:, :, axis], dtype=np.float32) for axis in (1, 2)]
        widened = (windows * 1.001 + 1e-6).astype(np.float32)
        best = np.full(xyz.shape[0], np.inf)
        positions_in_row = np.arange(size)
        for shift in range(1, size):
            wrapped = positions_in_row >= size - shift
            gap = np.roll(lead, -shift, axis=1)
            gap -= lead
            gap[:, wrapped] += 1.0 if periodic else np.inf
            near = gap < widened[:, :1]
            if not near.any():
                break  # sorted along axis 0: larger shifts only have larger gaps
            for axis, values in zip((1, 2), others, strict=True):
                other = np.roll(values, -shift, axis=1)
                other -= values
                if periodic:
                    other -= np.round(other)
                near &= np.abs(other) < widened[:, axis : axis + 1]
            rows, cols = np.nonzero(near)
            if rows.size == 0:
                continue
            diff = coords[rows, (cols + shift) % size] - coords[rows, cols]
            if periodic:
                diff -= np.round(diff)
                dist2 = np.einsum('pi,pij,pj->p', diff, metric[rows], diff)
            else:
                dist2 = np.einsum('pi,pi->p', diff, diff)
            np.minimum.at(best, rows, dist2)
        best = np.sqrt(best)
        best[best >= cutoff] = np.inf
        out[sel] = best
    return out


def _min_distance_ase(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> float:
    """General (slow) route through ASE's neighbour list: any cell, mixed periodicity, tiny cells."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    atoms = Atoms(numbers=np.ones(len(positions), dtype=int), positions=positions, cell=cell, pbc=pbc)
    distances = neighbor_list('d', atoms, cutoff, self_interaction=False)
    return float(distances.min()) if distances.size else float('inf')
