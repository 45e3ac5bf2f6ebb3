"""ConfigurationArrays: layout, round trips, subsets, hashing and bad-input errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_alkit.io.arrays import ConfigurationArrays, concatenated_ranges


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


def _former_voigt_to_full(stress):
    """The hand-written conversion ``io.arrays`` had before it used ``ase.stress`` (the reference of the tests)."""
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _former_full_to_voigt(stress):
    return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])


def _with_stress(stresses):
    structures = []
    for stress in stresses:
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((4, 3)), stress=stress)
        structures.append(atoms)
    return ConfigurationArrays.from_atoms(structures)


def test_stress_conversions_equal_the_former_ones(rng):
    voigt = rng.normal(size=(7, 6))
    arrays = _with_stress(voigt)
    np.testing.assert_array_equal(arrays.stress, [_former_voigt_to_full(row) for row in voigt])
    back = np.array([atoms.get_stress() for atoms in arrays.to_atoms()])
    np.testing.assert_array_equal(back, [_former_full_to_voigt(_former_voigt_to_full(row)) for row in voigt])
    np.testing.assert_array_equal(back, voigt)  # the round trip is exact
    full = rng.normal(size=(5, 3, 3))
    symmetric = full + full.transpose(0, 2, 1)  # a stress tensor is symmetric
    exported = np.array([atoms.get_stress() for atoms in _with_stress(symmetric).to_atoms()])
    np.testing.assert_array_equal(exported, [_former_full_to_voigt(tensor) for tensor in symmetric])


def test_asymmetric_stress_exports_its_symmetric_part(rng):
    """The one difference from the former conversion: ASE averages yz/zy, xz/zx, xy/yx (the upper triangle before)."""
    full = rng.normal(size=(3, 3))
    exported = _with_stress([full]).get_atoms(0).get_stress()
    np.testing.assert_array_equal(exported[:3], np.diag(full))
    np.testing.assert_array_equal(exported[3:], (full + full.T)[[1, 0, 0], [2, 2, 1]] / 2)  # yz, xz, xy


def test_concatenated_ranges(rng):
    starts = rng.integers(0, 100, size=20)
    lengths = rng.integers(0, 5, size=20)
    lengths[[0, 7]] = 0  # empty ranges are skipped
    expected = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
    result = concatenated_ranges(starts, lengths)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)
    assert concatenated_ranges(np.array([3, 9]), np.array([0, 0])).shape == (0,)
    np.testing.assert_array_equal(concatenated_ranges([5, 0], np.array([2, 3], dtype=np.int32)), [5, 6, 0, 1, 2])
