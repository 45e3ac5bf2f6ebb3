"""Verlet-skin neighbour lists: the reused, filtered lists equal fresh ones; rebuilds happen only when needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from aiida_alkit.models.batching import VerletBatcher, batch_from_arrays

CUTOFF = 4.0


def _pairs(batch) -> set[tuple[int, ...]]:
    rows = np.column_stack([batch.edge_i.numpy(), batch.edge_j.numpy(), batch.edge_shifts.numpy()])
    return {tuple(int(value) for value in row) for row in rows}


def _flat(structures):
    sizes = [len(atoms) for atoms in structures]
    return {
        'positions': np.concatenate([atoms.positions for atoms in structures]),
        'numbers': np.concatenate([atoms.numbers for atoms in structures]),
        'cells': np.stack([atoms.cell[:] for atoms in structures]),
        'pbc': np.stack([atoms.pbc for atoms in structures]),
        'offsets': np.concatenate([[0], np.cumsum(sizes)]),
    }


def _assert_same_as_fresh(batcher: VerletBatcher, arrays: dict, keys=None) -> None:
    batch = batcher(**arrays, keys=keys)
    fresh = batch_from_arrays(**arrays, species=['Cu'], cutoff=CUTOFF, dtype=torch.float64)
    assert _pairs(batch) == _pairs(fresh)
    assert len(batch.edge_i) == len(fresh.edge_i)
    for name in ('positions', 'cells', 'species', 'structure_index', 'n_atoms', 'pbc'):
        assert torch.equal(getattr(batch, name), getattr(fresh, name)), name


def _walkers():
    small = bulk('Cu', 'fcc', a=3.61, cubic=True)
    large = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 1)
    small.rattle(0.05, seed=1)
    large.rattle(0.05, seed=2)
    return [small, large]


@pytest.mark.parametrize('list_backend', [None, 'vesin-torch'])
def test_reused_lists_equal_fresh_lists_under_moves_wrapping_and_cell_changes(list_backend):
    """Random walks with wrapping and cell rescaling/shearing: each call's pairs equal vesin's at the cutoff, with
    the lists built on the host or, as on a GPU, by vesin-torch on the batch's device."""
    rng = np.random.default_rng(0)
    arrays = _flat(_walkers())
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=1.0, dtype=torch.float64, list_backend=list_backend)
    for _ in range(40):
        arrays['positions'] = arrays['positions'] + rng.normal(0.0, 0.03, arrays['positions'].shape)
        deformation = np.eye(3) + rng.normal(0.0, 0.002, (3, 3))
        index = np.repeat([0, 1], np.diff(arrays['offsets']))
        arrays['positions'] = np.einsum('ni,ij->nj', arrays['positions'], deformation)
        arrays['cells'] = arrays['cells'] @ deformation
        fractional = np.einsum('ni,nij->nj', arrays['positions'], np.linalg.inv(arrays['cells'])[index])
        arrays['positions'] = np.einsum('ni,nij->nj', fractional % 1.0, arrays['cells'][index])  # wrap
        _assert_same_as_fresh(batcher, arrays, keys=[10, 11])
    assert batcher.requests == 80
    assert 2 <= batcher.rebuilds < 20  # the first build of each walker, then only every few steps


def test_an_atom_wrapped_through_the_cell_boundary_keeps_the_list():
    """An atom moving across a cell face and wrapped to the other side: same pairs, shifts corrected, no rebuild."""
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
    atoms.positions[0] = [0.02, 1.0, 1.0]
    arrays = _flat([atoms])
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=1.0, dtype=torch.float64)
    _assert_same_as_fresh(batcher, arrays)
    for x in (-0.05, 0.1):  # below the face: wrapped to x = L - 0.05; back inside
        arrays['positions'][0, 0] = x % atoms.cell[0, 0]
        _assert_same_as_fresh(batcher, arrays)
    assert batcher.rebuilds == 1
    # a displacement beyond skin/2 rebuilds
    arrays['positions'][0, 1] += 0.6
    _assert_same_as_fresh(batcher, arrays)
    assert batcher.rebuilds == 2


def test_two_atoms_approaching_each_other_need_the_factor_two():
    """Two atoms 5.02 Å apart (outside cutoff + skin) each move 0.53 Å towards the other: now 3.96 Å, a pair."""
    a = 3.55
    atoms = bulk('Cu', 'fcc', a=a, cubic=True) * (2, 2, 2)
    first = int(np.flatnonzero(np.linalg.norm(atoms.positions - [a, a, 0.0], axis=1) < 1e-6)[0])
    arrays = _flat([atoms])
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=1.0, dtype=torch.float64)
    batcher(**arrays)
    direction = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    arrays['positions'][0] += 0.53 * direction
    arrays['positions'][first] -= 0.53 * direction
    _assert_same_as_fresh(batcher, arrays)  # max displacement 0.53 Å > skin/2: rebuilt
    assert batcher.rebuilds == 2


def test_cell_contraction_enters_the_bound():
    """Shrinking the cell brings far pairs inside the cutoff: reuse while 2 max|e| + cutoff (‖h⁻¹H‖ - 1) < skin."""
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)  # shells 2.55, 3.61, 4.42, 5.10 Å
    arrays = _flat([atoms])
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=1.0, dtype=torch.float64)
    batcher(**arrays)

    def scaled(factor: float, shift: float = 0.0) -> dict:
        out = {key: value.copy() for key, value in arrays.items()}
        out['positions'] *= factor
        out['cells'] *= factor
        out['positions'][3, 2] += shift
        return out

    # e is measured in the build's cell: a move of 0.2 Å in the cell shrunk by 0.9 is e = 0.2/0.9 Å
    _assert_same_as_fresh(batcher, scaled(0.9, 0.2))  # 2 x 0.222 + 4 (1/0.9 - 1) = 0.89 Å < 1 Å: reused
    assert batcher.rebuilds == 1
    _assert_same_as_fresh(batcher, scaled(0.9, 0.3))  # 2 x 0.333 + 0.444 = 1.11 Å: rebuilt
    assert batcher.rebuilds == 2
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=1.0, dtype=torch.float64)
    batcher(**arrays)
    _assert_same_as_fresh(batcher, scaled(0.78))  # the 5.10 Å shell moves to 3.98 Å: must be rebuilt
    assert batcher.rebuilds == 2
    _assert_same_as_fresh(batcher, scaled(0.78 * 1.2))  # expansion costs nothing
    assert batcher.rebuilds == 2


def test_walker_subsets_new_keys_slabs_and_molecules():
    """Shrinking the walker set reuses the lists; non-periodic structures reuse theirs only with an unchanged cell."""
    slab = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
    slab.pbc = [True, True, False]
    molecule = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 1, 1)
    molecule.pbc = False
    molecule.cell = np.zeros((3, 3))
    structures = [*_walkers(), slab, molecule]
    arrays = _flat(structures)
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=0.8, dtype=torch.float64)
    _assert_same_as_fresh(batcher, arrays, keys=[0, 1, 2, 3])
    assert batcher.rebuilds == 4
    subset = _flat([structures[1], structures[3]])
    _assert_same_as_fresh(batcher, subset, keys=[1, 3])
    assert batcher.rebuilds == 4
    slab.cell[2, 2] += 0.01  # the non-periodic direction's vector changes: rebuild (only this walker)
    _assert_same_as_fresh(batcher, _flat(structures), keys=np.array([0, 1, 2, 3]))
    assert batcher.rebuilds == 5
    # a trial without storing does not replace the stored list; an unknown key builds
    moved = _flat(structures)
    moved['positions'][0] += 1.0
    _assert_same_as_fresh(VerletBatcher(['Cu'], CUTOFF, 0.8, dtype=torch.float64), moved)
    batcher(**moved, keys=[0, 1, 2, 3], store=False)
    assert batcher.rebuilds == 6
    batcher(**_flat(structures), keys=[0, 1, 2, 3])
    assert batcher.rebuilds == 6


def test_skin_zero_is_the_fresh_batch_and_negative_skin_is_rejected():
    arrays = _flat(_walkers())
    batcher = VerletBatcher(['Cu'], CUTOFF, skin=0.0, dtype=torch.float64)
    for _ in range(2):
        batch = batcher(**arrays)
        fresh = batch_from_arrays(**arrays, species=['Cu'], cutoff=CUTOFF, dtype=torch.float64)
        assert torch.equal(batch.edge_i, fresh.edge_i) and torch.equal(batch.edge_shifts, fresh.edge_shifts)
    assert batcher.rebuilds == batcher.requests == 4
    with pytest.raises(ValueError, match='skin'):
        VerletBatcher(['Cu'], CUTOFF, skin=-0.1)
    with pytest.raises(ValueError, match='not among the model species'):
        VerletBatcher(['Au'], CUTOFF, skin=1.0)(**arrays)
