"""Neighbour lists (vesin, and vesin-torch on a device) against ASE, and batch construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.models.batching import batch_from_arrays, batch_from_atoms, batch_from_configurations
from aiida_alkit.models.neighbors import _vesin_torch_pairs, neighbor_list, neighbor_pairs


def _pairs(i, j, shifts) -> list[tuple[int, ...]]:
    return sorted(zip(i.tolist(), j.tolist(), *(shifts[:, k].tolist() for k in range(3)), strict=True))


def _list(positions, cell, pbc, cutoff, backend='vesin'):
    """neighbor_list, or for 'vesin-torch' the tensors of neighbor_pairs as arrays (built by vesin-torch itself)."""
    if backend != 'vesin-torch':
        return neighbor_list(positions, cell, pbc, cutoff, backend=backend)
    pairs = neighbor_pairs(positions, cell, pbc, cutoff, backend='vesin-torch')
    assert all(values.dtype == torch.int64 for values in pairs)
    return tuple(values.numpy() for values in pairs)


def _assert_same_as_ase(atoms: Atoms, cutoff: float, backend: str = 'vesin') -> int:
    if backend == 'vesin-torch':  # the device path really ran (no fall-back to the host's list)
        positions, cell = atoms.positions.astype(float), np.asarray(atoms.cell[:], dtype=float)
        assert _vesin_torch_pairs(positions, cell, atoms.pbc.copy(), cutoff, torch.device('cpu')) is not None
    i, j, shifts = _list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff, backend=backend)
    reference = ase_neighbor_list('ijS', atoms, cutoff)
    assert _pairs(i, j, shifts) == _pairs(*reference)
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell[:]
    assert np.all(np.linalg.norm(vectors, axis=1) < cutoff)
    return len(i)


@pytest.mark.parametrize('backend', ['vesin', 'ase', 'vesin-torch'])
def test_cutoff_larger_than_tiny_triclinic_cell(backend):
    """A 2-atom triclinic cell much smaller than the cutoff: many images of every atom, including its own."""
    atoms = Atoms(
        'SiC',
        scaled_positions=[[0.0, 0.0, 0.0], [0.3, 0.4, 0.55]],
        cell=[[2.1, 0.0, 0.0], [0.6, 2.3, 0.0], [0.4, -0.5, 2.2]],
        pbc=True,
    )
    n_pairs = _assert_same_as_ase(atoms, cutoff=4.5, backend=backend)
    assert n_pairs > 50
    i, j, shifts = _list(atoms.positions, atoms.cell[:], atoms.pbc, 4.5, backend=backend)
    self_images = (i == j) & np.any(shifts != 0, axis=1)
    assert self_images.any()
    assert not np.any((i == j) & np.all(shifts == 0, axis=1))


@pytest.mark.parametrize('backend', ['vesin', 'vesin-torch'])
def test_bulk_rattled_and_single_atom_cell(backend):
    atoms = bulk('Si', 'diamond', a=5.43) * (2, 1, 1)
    atoms.rattle(0.05, seed=3)
    _assert_same_as_ase(atoms, cutoff=5.0, backend=backend)
    _assert_same_as_ase(bulk('Cu', 'fcc', a=3.6), cutoff=6.0, backend=backend)


@pytest.mark.parametrize('backend', ['vesin', 'vesin-torch'])
def test_molecule_without_cell(backend):
    atoms = molecule('CH3OH')
    assert not atoms.pbc.any()
    _assert_same_as_ase(atoms, cutoff=2.5, backend=backend)
    i, _, shifts = _list(atoms.positions, np.zeros((3, 3)), False, 2.5, backend=backend)
    assert len(i) > 0
    assert not shifts.any()


@pytest.mark.parametrize('backend', ['vesin', 'vesin-torch'])
@pytest.mark.parametrize('zero_vacuum_vector', [False, True])
def test_mixed_periodicity_slab(zero_vacuum_vector, backend):
    slab = fcc111('Al', size=(2, 2, 3), vacuum=4.0)
    slab.rattle(0.02, seed=1)
    assert slab.pbc.tolist() == [True, True, False]
    if zero_vacuum_vector:
        slab.cell[2] = 0.0
    _assert_same_as_ase(slab, cutoff=5.5, backend=backend)


@pytest.mark.parametrize('backend', ['vesin', 'vesin-torch'])
def test_isolated_atom_has_no_neighbours(backend):
    i, j, shifts = _list(np.zeros((1, 3)), np.zeros((3, 3)), False, 3.0, backend=backend)
    assert i.shape == (0,) and j.shape == (0,) and shifts.shape == (0, 3)
    i, j, shifts = _list(np.zeros((0, 3)), np.eye(3) * 5.0, True, 3.0, backend=backend)
    assert i.shape == (0,) and shifts.shape == (0, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match='cutoff'):
        neighbor_list(np.zeros((2, 3)), np.eye(3), True, 0.0)
    with pytest.raises(ValueError, match='backend'):
        neighbor_list(np.zeros((2, 3)), np.eye(3), True, 1.0, backend='nope')
    with pytest.raises(ValueError, match='independent'):
        neighbor_list(np.zeros((2, 3)), np.zeros((3, 3)), True, 1.0)
    with pytest.raises(ValueError, match='backend'):
        neighbor_pairs(np.zeros((2, 3)), np.eye(3), True, 1.0, backend='nope')
    for backend in ('vesin-torch', None):
        with pytest.raises(ValueError, match='cutoff'):
            neighbor_pairs(np.zeros((2, 3)), np.eye(3), True, -1.0, backend=backend)
        with pytest.raises(ValueError, match='independent'):
            neighbor_pairs(np.zeros((2, 3)), np.zeros((3, 3)), True, 1.0, backend=backend)


def test_device_lists_make_the_same_batch():
    """A batch whose lists vesin-torch built on the batch's device equals the host-built one (same pairs, order
    aside), for periodic, slab and molecule structures together."""
    slab = fcc111('Al', size=(2, 2, 3), vacuum=4.0)
    structures = [bulk('Al', 'fcc', a=4.05) * (2, 2, 2), slab, molecule('CH4')]
    for atoms in structures:
        atoms.rattle(0.03, seed=5)
    host = batch_from_atoms(structures, ['H', 'C', 'Al'], cutoff=4.5, labels=False)
    device = batch_from_arrays(
        np.concatenate([atoms.positions for atoms in structures]),
        np.concatenate([atoms.numbers for atoms in structures]),
        np.stack([atoms.cell[:] for atoms in structures]),
        np.stack([atoms.pbc for atoms in structures]),
        np.cumsum([0, *(len(atoms) for atoms in structures)]),
        ['H', 'C', 'Al'],
        4.5,
        list_backend='vesin-torch',
    )
    assert _pairs(device.edge_i, device.edge_j, device.edge_shifts) == _pairs(
        host.edge_i, host.edge_j, host.edge_shifts
    )
    assert torch.equal(device.positions, host.positions) and torch.equal(device.structure_index, host.structure_index)


def test_batch_concatenates_structures_with_global_indices():
    structures = [molecule('H2O'), bulk('Si', 'diamond', a=5.43), molecule('CH4')]
    batch = batch_from_atoms(structures, ['H', 'C', 'O', 'Si'], cutoff=3.0, labels=False)
    assert batch.n_structures == 3 and batch.n_atoms_total == 3 + 2 + 5
    assert batch.n_atoms.tolist() == [3, 2, 5]
    assert batch.structure_index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert batch.species.tolist() == [2, 0, 0, 3, 3, 1, 0, 0, 0, 0]
    assert batch.edge_shifts.dtype == torch.int64
    # every edge stays inside one structure, shifts only in the periodic one
    assert torch.equal(batch.structure_index[batch.edge_i], batch.structure_index[batch.edge_j])
    not_si = batch.structure_index[batch.edge_i] != 1
    assert not batch.edge_shifts[not_si].any()
    assert batch.periodic.tolist() == [False, True, False]
    assert batch.energy is None and batch.forces is None and batch.stress is None
    moved = batch.to(dtype=torch.float64)
    assert moved.positions.dtype == torch.float64 and moved.species.dtype == torch.int64


def test_batch_from_configuration_arrays_keeps_labels():
    structures = []
    for seed in range(3):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        atoms.rattle(0.02, seed=seed)
        stress = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]) * (seed + 1)
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 - seed, forces=np.full((4, 3), seed), stress=stress)
        structures.append(atoms)
    arrays = ConfigurationArrays.from_atoms(structures)
    batch = batch_from_configurations(arrays, ['Cu'], cutoff=3.0, indices=[2, 0], dtype=torch.float64)
    assert batch.energy.tolist() == [-5.0, -3.0]
    assert batch.forces.shape == (8, 3) and batch.forces[0, 0].item() == 2.0
    np.testing.assert_allclose(batch.stress[1].numpy(), arrays.stress[0])
    same = batch_from_atoms([structures[2], structures[0]], ['Cu'], cutoff=3.0, dtype=torch.float64)
    assert torch.equal(same.energy, batch.energy) and torch.equal(same.stress, batch.stress)


def test_unknown_element_is_an_error():
    with pytest.raises(ValueError, match='not among the model species'):
        batch_from_arrays(np.zeros((1, 3)), [8], np.zeros((1, 3, 3)), np.zeros((1, 3), bool), [0, 1], ['H'], cutoff=2.0)
