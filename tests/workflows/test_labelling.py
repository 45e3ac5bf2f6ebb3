"""Real pw.x labels through aiida-quantumespresso's PwBaseWorkChain (small Al cells, a few seconds each)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk

from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, ensure_resources
from aiida_alkit.workflows.labelling import get_pw_builder, labelled_atoms_from_pw

pytestmark = pytest.mark.pwx


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


def test_compressed_cell_has_negative_ase_stress(pw_code):
    atoms = _label(pw_code, bulk('Al', 'fcc', a=3.80))  # 6 % compressed: pushes outwards
    stress = atoms.get_stress()
    assert np.all(stress[:3] < 0), stress  # ASE convention: compressed cell -> negative stress
    np.testing.assert_allclose(stress[:3], stress[0], rtol=1e-3)  # cubic symmetry
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-6)  # one atom: no force
    assert -100 < atoms.get_potential_energy() / len(atoms) < -10  # eV/atom for a 3-electron Al pseudo


def test_displaced_atom_feels_restoring_force(pw_code):
    atoms = Atoms('Al2', cell=np.diag([2.86, 2.86, 4.05]), pbc=True, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]])
    atoms.positions[1, 2] += 0.15  # push atom 1 along +z towards its image
    labelled = _label(pw_code, atoms)
    forces = labelled.get_forces()
    assert forces[1, 2] < -0.05  # pulled back along -z
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-3)  # Newton's third law
    assert labelled.info['label_uuid']


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
