"""LabelWorkChain: ASE and pw.x engines, failed labels kept with their reasons, concurrency waves."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase import Atoms
from ase.build import bulk

from aiida_alkit.profile import PW_CODE, ensure_resources

LabelWorkChain = WorkflowFactory('alkit.label')


def _copper(seed: int, broken: bool = False) -> orm.StructureData:
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
    atoms.rattle(0.05, seed=seed)
    if broken:
        atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]
    return orm.StructureData(ase=atoms).store()


def test_ase_engine(alkit_python_code):
    structures = {'pick_0': _copper(0), 'pick_1': _copper(1, broken=True), 'pick_2': _copper(2)}
    results, node = run_get_node(
        LabelWorkChain,
        structures=structures,
        engine=orm.Str('ase'),
        ase={
            'code': alkit_python_code,
            'calculator': orm.Str('ase.calculators.emt.EMT'),
            'options': orm.Dict({'max_wallclock_seconds': 1234}),
        },
    )
    assert node.is_finished_ok, node.exit_message
    (job,) = [n for n in node.called if n.process_label == 'AseLabelCalculation']
    assert job.get_option('max_wallclock_seconds') == 1234  # scheduler options reach the job
    labelled = results['labelled']
    assert list(labelled.arrays.info['pick']) == ['pick_0', 'pick_2']
    assert list(labelled.arrays.info['structure_uuid']) == [structures['pick_0'].uuid, structures['pick_2'].uuid]
    assert list(results['failures'].keys()) == ['pick_1']
    assert 'eV/Å' in results['failures']['pick_1']


def test_a_failed_ase_job_is_a_failure_record_of_every_structure(aiida_localhost):
    """A label job that produces nothing (its code exits at once: a real failed job, no mock) leaves a failure record
    for every structure, built by the ``failure_record`` calcfunction from those structures (no node stored by the
    work chain itself)."""
    broken = orm.InstalledCode(label='false', computer=aiida_localhost, filepath_executable='/bin/false').store()
    structures = {'pick_0': _copper(0), 'pick_1': _copper(1)}
    results, node = run_get_node(
        LabelWorkChain,
        structures=structures,
        engine=orm.Str('ase'),
        ase={'code': broken, 'calculator': orm.Str('ase.calculators.emt.EMT')},
    )
    assert node.exit_status == LabelWorkChain.exit_codes.ERROR_NO_LABELS.status
    failures = results['failures']
    assert sorted(failures.keys()) == ['pick_0', 'pick_1']
    assert all('AseLabelCalculation' in reason for reason in failures.get_dict().values())
    assert failures.creator.process_label == 'failure_record'
    inputs = {link.link_label: link.node.pk for link in failures.creator.base.links.get_incoming().all()}
    assert inputs['pick_0'] == structures['pick_0'].pk and inputs['pick_1'] == structures['pick_1'].pk


def test_missing_engine_inputs_are_refused(alkit_python_code):
    with pytest.raises(ValueError, match=r'needs ase\.calculator'):
        run_get_node(LabelWorkChain, structures={'a': _copper(0)}, ase={'code': alkit_python_code})
    with pytest.raises(ValueError, match='engine must be one of'):
        run_get_node(LabelWorkChain, structures={'a': _copper(0)}, engine=orm.Str('vasp'))


@pytest.fixture
def pw_code(aiida_profile):
    ensure_resources()
    return orm.load_code(f'{PW_CODE}@localhost')


@pytest.mark.pwx
def test_pw_engine_in_waves_with_a_rejected_label(pw_code):
    still = bulk('Al', 'fcc', a=4.05)
    pushed = Atoms('Al2', cell=np.diag([2.86, 2.86, 4.05]), pbc=True, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]])
    pushed.positions[1, 2] += 0.15
    structures = {'a': orm.StructureData(ase=still), 'b': orm.StructureData(ase=pushed)}
    results, node = run_get_node(
        LabelWorkChain,
        structures=structures,
        engine=orm.Str('pw'),
        pw={'code': pw_code, 'overrides': orm.Dict({'kpoints_distance': 0.5})},
        max_force=orm.Float(0.1),  # b's restoring force is larger: recorded as unphysical here
        max_concurrent=orm.Int(1),
    )
    assert node.is_finished_ok, node.exit_message
    assert list(results['labelled'].arrays.info['pick']) == ['a']
    assert results['labelled'].labels == ['energy', 'forces', 'stress']
    assert 'exceeds 0.1 eV/Å' in results['failures']['b']
    launched = [c for c in node.called if c.process_label == 'PwBaseWorkChain']
    assert len(launched) == 2
    # one at a time: the second pw.x job was created after the first had finished
    first, second = sorted(launched, key=lambda n: n.ctime)
    assert second.ctime >= first.mtime


@pytest.mark.pwx
@pytest.mark.faults
def test_pw_failure_is_recorded(pw_code):
    overrides = {
        'kpoints_distance': 0.5,
        'max_iterations': 1,
        'pw': {'parameters': {'ELECTRONS': {'electron_maxstep': 1}}},
    }
    results, node = run_get_node(
        LabelWorkChain,
        structures={'a': orm.StructureData(ase=bulk('Al', 'fcc', a=4.05))},
        engine=orm.Str('pw'),
        pw={'code': pw_code, 'overrides': orm.Dict(overrides)},
    )
    assert node.exit_status == LabelWorkChain.exit_codes.ERROR_NO_LABELS.status
    assert 'PwBaseWorkChain' in results['failures']['a']
