"""The vectorised minimum-distance check against ASE's neighbour list, on awkward cells."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from aiida_alkit.io.geometry import _min_distance_ase, min_interatomic_distances


@pytest.mark.parametrize('seed', range(4))
def test_matches_ase_neighbour_list(seed):
    rng = np.random.default_rng(seed)
    cells, positions, pbcs, sizes, cutoffs = [], [], [], [], []
    for trial in range(60):
        natoms = int(rng.integers(1, 12))
        cell = rng.normal(0, 1.0, (3, 3)) + np.eye(3) * rng.uniform(1.2, 4.0)  # skewed, sometimes tiny
        pbc = np.ones(3, bool) if trial % 3 == 0 else rng.random(3) < 0.6
        cells.append(cell)
        positions.append(rng.random((natoms, 3)) @ cell)
        pbcs.append(pbc)
        sizes.append(natoms)
        cutoffs.append(1.0)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    got = min_interatomic_distances(np.concatenate(positions), np.array(cells), np.array(pbcs), offsets, cutoff=1.0)
    for index in range(len(sizes)):
        expected = _min_distance_ase(positions[index], cells[index], pbcs[index], 1.0)
        assert got[index] == pytest.approx(expected, abs=1e-9), index


def test_crystal_with_planes_has_no_false_positive():
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (3, 3, 3)
    n = len(atoms)
    got = min_interatomic_distances(atoms.positions, atoms.cell[:][None], atoms.pbc[None], np.array([0, n]), 2.6)
    assert got[0] == pytest.approx(3.61 / np.sqrt(2))
    got = min_interatomic_distances(atoms.positions, atoms.cell[:][None], atoms.pbc[None], np.array([0, n]), 2.5)
    assert np.isinf(got[0])
