"""ConfigurationArrays: layout, round trips, subsets, hashing and bad-input errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_alkit.io.arrays import ConfigurationArrays


def _assert_same_atoms(a, b):
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.cell[:], b.cell[:])
    np.testing.assert_array_equal(a.pbc, b.pbc)


def test_from_atoms_layout_and_labels(copper_structures):
    arrays = ConfigurationArrays.from_atoms(copper_structures)
    assert len(arrays) == 5
    assert arrays.n_atoms_total == 5 * 32
    assert arrays.labels == ('energy', 'forces', 'stress')
    assert arrays.species == ['Cu']
    np.testing.assert_array_equal(arrays.offsets, np.arange(6) * 32)
    assert sorted(arrays.info) == ['round', 'source', 'step', 'walker']
    np.testing.assert_array_equal(arrays.info['walker'], np.arange(5))
    atoms = arrays.get_atoms(3)
    _assert_same_atoms(atoms, copper_structures[3])
    assert atoms.get_potential_energy() == copper_structures[3].get_potential_energy()
    np.testing.assert_array_equal(atoms.get_forces(), copper_structures[3].get_forces())
    np.testing.assert_allclose(atoms.get_stress(), copper_structures[3].get_stress())
    assert atoms.info == {'source': 'emt', 'round': 0, 'walker': 3, 'step': 30}


def test_save_load_round_trip_without_pickle(copper_structures):
    arrays = ConfigurationArrays.from_atoms(copper_structures)
    buffer = io.BytesIO()
    arrays.save(buffer)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as raw:  # the file itself must not need pickle
        assert 'info.source' in raw.files
    buffer.seek(0)
    loaded = ConfigurationArrays.load(buffer)
    assert loaded.sha256() == arrays.sha256()
    for original, copy in zip(copper_structures, loaded.to_atoms(), strict=True):
        _assert_same_atoms(original, copy)


def test_mixed_sizes_subset_and_concatenate():
    water = molecule('H2O')
    water.center(vacuum=3.0)
    structures = [bulk('Al', 'fcc', a=4.05), water, bulk('Cu', 'fcc', a=3.61, cubic=True)]
    arrays = ConfigurationArrays.from_atoms(structures)
    assert list(arrays.sizes) == [1, 3, 4]
    picked = arrays.subset([2, 0, 2])
    assert list(picked.sizes) == [4, 1, 4]
    _assert_same_atoms(picked.get_atoms(0), structures[2])
    _assert_same_atoms(picked.get_atoms(1), structures[0])
    joined = ConfigurationArrays.concatenate([arrays, picked])
    assert len(joined) == 6
    _assert_same_atoms(joined.get_atoms(4), structures[0])
    with pytest.raises(IndexError, match='index 3 out of range'):
        arrays.subset([3])


def test_sha256_tracks_content(copper_structures):
    arrays = ConfigurationArrays.from_atoms(copper_structures)
    first = arrays.sha256()
    assert first == ConfigurationArrays.from_atoms(copper_structures).sha256()
    arrays.positions[5, 0] += 1e-9
    assert arrays.sha256() != first


def test_partial_labels_are_rejected(copper_structures):
    copper_structures[2].calc = None
    with pytest.raises(ValueError, match='configuration 2: has no energy'):
        ConfigurationArrays.from_atoms(copper_structures)


# ---------------------------------------------------------------------------- bad input, one test per case
def test_empty_list():
    with pytest.raises(ValueError, match='empty list'):
        ConfigurationArrays.from_atoms([])


def test_nan_positions(copper_structures):
    copper_structures[1].positions[4, 2] = np.nan
    with pytest.raises(ValueError, match='configuration 1: positions contain NaN or inf'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_inf_energy(copper_structures):
    atoms = copper_structures[3]
    atoms.calc = SinglePointCalculator(atoms, energy=np.inf, forces=atoms.get_forces(), stress=atoms.get_stress())
    with pytest.raises(ValueError, match='configuration 3: energy contains NaN or inf'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_nan_forces(copper_structures):
    atoms = copper_structures[4]
    forces = atoms.get_forces().copy()
    forces[0, 0] = np.nan
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=forces, stress=atoms.get_stress())
    with pytest.raises(ValueError, match='configuration 4: forces contain NaN or inf'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_unknown_element(copper_structures):
    copper_structures[2].numbers[0] = 0  # 'X', not an element
    with pytest.raises(ValueError, match=r'configuration 2: unknown element.*got 0'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_forces_shape_mismatch(copper_structures):
    atoms = copper_structures[1]
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, stress=atoms.get_stress())
    atoms.calc.results['forces'] = np.zeros((31, 3))
    with pytest.raises(ValueError, match=r'configuration 1: forces have shape \(31, 3\), expected \(32, 3\)'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_overlapping_atoms(copper_structures):
    atoms = copper_structures[3]
    atoms.positions[7] = atoms.positions[6] + [0.3, 0.0, 0.0]
    with pytest.raises(ValueError, match='configuration 3: atoms overlap'):
        ConfigurationArrays.from_atoms(copper_structures)


def test_overlap_through_periodic_image():
    atoms = Atoms('Cu2', positions=[[0.1, 1.0, 1.0], [3.9, 1.0, 1.0]], cell=[4.0, 4.0, 4.0], pbc=True)
    with pytest.raises(ValueError, match=r'configuration 0: atoms overlap \(closest pair 0.200'):
        ConfigurationArrays.from_atoms([atoms])
    atoms.pbc = False  # without periodicity the two atoms are 3.8 Å apart
    ConfigurationArrays.from_atoms([atoms])


def test_zero_volume_periodic_cell():
    good = bulk('Cu', 'fcc', a=3.61)
    flat = Atoms('Cu', positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(ValueError, match='configuration 1: cell has zero volume'):
        ConfigurationArrays.from_atoms([good, flat])


def test_not_atoms():
    with pytest.raises(ValueError, match=r'configuration 0: expected an ase\.Atoms'):
        ConfigurationArrays.from_atoms(['Cu'])
