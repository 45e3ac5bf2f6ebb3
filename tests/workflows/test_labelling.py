"""Real pw.x labels through aiida-quantumespresso's PwBaseWorkChain (small Al cells, a few seconds each), and the
conversion of its outputs and the merging of settings against the former hand-written versions (no pw.x)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np
import pytest
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk

from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, ensure_resources
from aiida_alkit.workflows.labelling import (
    GPA_PER_EV_PER_ANG3,
    deep_merge,
    get_pw_builder,
    labelled_atoms_from_pw,
    stress_from_pw,
)


@pytest.fixture
def pw_code(aiida_profile):
    report = ensure_resources()
    assert not [line for line in report.lines if line[1] == 'missing'], report.render()
    return orm.load_code(f'{PW_CODE}@localhost')


def _label(code, atoms):
    builder = get_pw_builder(
        code, orm.StructureData(ase=atoms), pseudo_family=PSEUDO_FAMILY, overrides={'kpoints_distance': 0.5}
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return labelled_atoms_from_pw(node)


@pytest.mark.pwx
def test_compressed_cell_has_negative_ase_stress(pw_code):
    atoms = _label(pw_code, bulk('Al', 'fcc', a=3.80))  # 6 % compressed: pushes outwards
    stress = atoms.get_stress()
    assert np.all(stress[:3] < 0), stress  # ASE convention: compressed cell -> negative stress
    np.testing.assert_allclose(stress[:3], stress[0], rtol=1e-3)  # cubic symmetry
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-6)  # one atom: no force
    assert -100 < atoms.get_potential_energy() / len(atoms) < -10  # eV/atom for a 3-electron Al pseudo


@pytest.mark.pwx
def test_displaced_atom_feels_restoring_force(pw_code):
    atoms = Atoms('Al2', cell=np.diag([2.86, 2.86, 4.05]), pbc=True, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]])
    atoms.positions[1, 2] += 0.15  # push atom 1 along +z towards its image
    labelled = _label(pw_code, atoms)
    forces = labelled.get_forces()
    assert forces[1, 2] < -0.05  # pulled back along -z
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-3)  # Newton's third law
    assert labelled.info['label_uuid']


@pytest.mark.pwx
def test_smoke_job(pw_code):
    from aiida_alkit.cli.demo import run_smoke
    from aiida_alkit.data import DatasetData

    lines: list[str] = []
    labelled = run_smoke(echo=lines.append, setup=False)
    assert len(labelled) == 2
    text = '\n'.join(lines)
    assert text.count('exit_status 0') == 2
    assert 'energy -' in text
    stored = orm.QueryBuilder().append(DatasetData, filters={'label': 'alkit smoke: labelled by pw.x'}).all(flat=True)
    assert stored and stored[-1].labels == ['energy', 'forces', 'stress']


def _former_deep_merge(base: dict, update: Mapping) -> dict:
    """``deep_merge`` as it was written by hand before it used aiida-quantumespresso's ``recursive_merge``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _former_deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _former_stress(stress_gpa):
    stress = -np.asarray(stress_gpa) / 160.21766208
    return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])


MERGE_CASES = [
    ({'a': 1, 'b': {'c': 2, 'd': [1, 2]}}, {'b': {'d': [3]}, 'e': None}),
    ({'a': {'b': {'c': 1}}, 'x': 5}, {'a': {'b': None}, 'x': {'y': 1}}),  # None and a dict replace a dict / a number
    ({'a': {'b': 1}}, {'a': 'flat'}),
    ({'schedule': {'temperatures': [300]}, 'max_rounds': 3}, {}),
    ({}, {'new': {'nested': [1, {'deep': 2}]}}),
]


@pytest.mark.parametrize(('base', 'update'), MERGE_CASES)
def test_deep_merge_as_before(base, update):
    merged = deep_merge(base, update)
    assert merged == _former_deep_merge(base, update)
    assert list(merged) == list(_former_deep_merge(base, update))  # same key order


def test_deep_merge_shares_nothing_with_its_inputs():
    base = {'train': {'parameters': {'widths': [32, 32]}}, 'select': {'batch_size': 4}}
    update = {'explore': {'steps': [10, 20]}, 'train': {'options': {}}}
    before = copy.deepcopy((base, update))
    merged = deep_merge(base, update)
    merged['train']['parameters']['widths'].append(64)
    merged['select']['batch_size'] = 8
    merged['explore']['steps'].clear()
    assert (base, update) == before


def test_gpa_constant_is_the_former_float():
    assert GPA_PER_EV_PER_ANG3 == 160.21766208


def test_stress_from_pw_as_before(rng):
    for _ in range(5):
        full = rng.normal(scale=10.0, size=(3, 3))
        symmetric = full + full.T  # QE prints a symmetric tensor
        np.testing.assert_array_equal(stress_from_pw(symmetric), _former_stress(symmetric))
    compressed = np.diag([5.0, 5.0, 5.0])  # GPa, QE's sign: positive when compressed
    np.testing.assert_allclose(stress_from_pw(compressed), [-5.0 / 160.21766208] * 3 + [0.0] * 3)


class _Array:
    def __init__(self, **arrays):
        self.arrays = arrays

    def get_arraynames(self):
        return list(self.arrays)

    def get_array(self, name):
        return self.arrays[name]


def test_labelled_atoms_from_pw_without_pw(rng):
    """The conversion on a stand-in for a finished PwBaseWorkChain: energy, last forces, stress as before."""
    atoms = bulk('Al', 'fcc', a=4.0, cubic=True)
    stress = rng.normal(size=(2, 3, 3))
    stress = stress + stress.transpose(0, 2, 1)
    forces = rng.normal(size=(2, 4, 3))
    node = SimpleNamespace(
        is_finished_ok=True,
        uuid='0123',
        inputs=AttributeDict({'pw': SimpleNamespace(structure=SimpleNamespace(get_ase=atoms.copy))}),
        outputs=SimpleNamespace(
            output_parameters=SimpleNamespace(get_dict=lambda: {'energy': -12.5}),
            output_trajectory=_Array(forces=forces, stress=stress),
        ),
    )
    labelled = labelled_atoms_from_pw(node)
    assert labelled.get_potential_energy() == -12.5
    np.testing.assert_array_equal(labelled.get_forces(), forces[-1])
    np.testing.assert_array_equal(labelled.get_stress(), _former_stress(stress[-1]))
    assert labelled.info['label_uuid'] == '0123'
