"""Faults of the DFT labeller inside real runs: an SCF that never converges, a pw.x binary that is missing, and a
pw.x process killed mid-run. Each is a failed label kept with its reason; no labelled data is lost."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, ensure_resources
from aiida_alkit.workflows.provenance import failed_labels

from ..conftest import label_with_emt
from .test_active_learning import TINY_OVERRIDES

ActiveLearningWorkChain = WorkflowFactory('alkit.active_learning')
LabelWorkChain = WorkflowFactory('alkit.label')

pytestmark = [pytest.mark.faults, pytest.mark.pwx]


def _aluminium(seed: int) -> orm.StructureData:
    atoms = bulk('Al', 'fcc', a=4.04, cubic=True)
    atoms.rattle(0.04, seed=seed)
    return orm.StructureData(ase=atoms).store()


def _code(label: str, executable: str, computer) -> orm.InstalledCode:
    return orm.InstalledCode(
        label=label, computer=computer, filepath_executable=executable, default_calc_job_plugin='quantumespresso.pw'
    ).store()


@pytest.mark.campaign
def test_unconverged_scf_is_retried_then_a_failed_label_and_the_campaign_goes_on(alkit_python_code):
    """``electron_maxstep`` 1: pw.x never converges; PwBaseWorkChain's handler retries (2 runs), the pick is a
    failed label with its reason, and the campaign runs its second round with the initial labels intact."""
    ensure_resources()
    initial = []
    for seed, strain in enumerate((0.98, 1.0, 1.02)):
        atoms = bulk('Al', 'fcc', a=4.04 * strain, cubic=True)
        atoms.rattle(0.04, seed=seed)
        initial.append(label_with_emt(atoms))
    dataset = DatasetData.from_atoms(initial).store()
    model = {**TINY_OVERRIDES['train']['parameters']['model'], 'species': ['Al']}
    overrides = {
        **TINY_OVERRIDES,
        'max_failed_fraction': 1.0,
        'train': {'parameters': {**TINY_OVERRIDES['train']['parameters'], 'model': model}},
        # every candidate counts as uncertain (a calibrated bound above 0), so that each round picks one structure
        'select': {'parameters': {'batch_size': 1, 'uncertain_above': 0.0}},
    }
    label = {
        'engine': 'pw',
        'pw': {
            'code': orm.load_code(f'{PW_CODE}@localhost'),
            'pseudo_family': PSEUDO_FAMILY,
            'overrides': {
                'kpoints_distance': 0.8,
                'max_iterations': 2,
                'pw': {'parameters': {'ELECTRONS': {'electron_maxstep': 1}}},
            },
        },
    }
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code, dataset, protocol='fast', strategy='gradient', overrides=overrides, label=label
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    rounds = results['report']['rounds']
    assert [entry['round'] for entry in rounds] == [1, 2]  # the campaign went on after round 1's failed label
    assert all(entry['selected'] == 1 and entry['failed_labels'] == 1 and entry['labelled'] == 0 for entry in rounds)
    # what the user sees: each failure with the PwBaseWorkChain that failed and why
    failures = failed_labels(node)
    assert [item['round'] for item in failures] == [1, 2]
    assert all('PwBaseWorkChain' in item['reason'] and item['structure'] for item in failures)
    pw_workchains = [n for n in node.called_descendants if n.process_label == 'PwBaseWorkChain']
    assert len(pw_workchains) == 2
    for workchain in pw_workchains:
        runs = [n for n in workchain.called if n.process_label == 'PwCalculation']
        assert len(runs) == 2, 'the electronic-convergence handler should have retried once'
        assert all(run.exit_status == 410 for run in runs)  # QE: electronic convergence not reached
    # no labelled data lost: the initial labels are all in the final training set, unchanged
    final = results['dataset']
    assert len(final) == len(dataset)
    assert sorted(final.arrays.energy) == pytest.approx(sorted(dataset.arrays.energy))


def test_missing_pw_binary_is_a_failed_label(aiida_localhost, tmp_path):
    ensure_resources()
    code = _code('pw-missing', str(tmp_path / 'no-such-dir' / 'pw.x'), aiida_localhost)
    results, node = run_get_node(
        LabelWorkChain,
        structures={'gone': _aluminium(0)},
        engine=orm.Str('pw'),
        pw={'code': code, 'overrides': orm.Dict({'kpoints_distance': 0.8, 'max_iterations': 1})},
    )
    assert node.exit_status == LabelWorkChain.exit_codes.ERROR_NO_LABELS.status
    assert 'labelled' not in results
    reason = results['failures']['gone']
    assert 'PwBaseWorkChain' in reason and 'exit status' in reason
    (calculation,) = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
    assert calculation.is_failed
    assert 'No such file' in calculation.outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt')


def test_pw_killed_mid_run_is_a_failed_label_and_the_others_are_kept(aiida_localhost, tmp_path):
    """The code is a two-line wrapper that runs the real pw.x under ``timeout -s KILL``: a SIGKILL in the middle of
    an SCF, as the OOM killer or an administrator would send. A stand-in is needed only to time the kill; the
    killed program is the real pw.x. The first structure is small (finishes in time), the second is 32 atoms."""
    ensure_resources()
    real = shutil.which('pw.x')
    assert real, 'pw.x must be installed (scripts/bootstrap.sh installs quantum-espresso)'
    wrapper = tmp_path / 'pw-killed-after-8s'
    wrapper.write_text(f'#!/bin/sh\nexec timeout -s KILL 8 {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    code = _code('pw-killed', os.fspath(wrapper), aiida_localhost)
    big = bulk('Al', 'fcc', a=4.04, cubic=True) * (2, 2, 2)
    big.rattle(0.05, seed=3)
    structures = {'small': orm.StructureData(ase=bulk('Al', 'fcc', a=4.04)).store(), 'big': orm.StructureData(ase=big)}
    overrides = {'kpoints_distance': 0.5, 'max_iterations': 1}
    results, node = run_get_node(
        LabelWorkChain, structures=structures, engine=orm.Str('pw'), pw={'code': code, 'overrides': orm.Dict(overrides)}
    )
    assert node.is_finished_ok, node.exit_message
    assert list(results['failures'].keys()) == ['big']
    assert 'PwBaseWorkChain' in results['failures']['big']
    labelled = results['labelled']
    assert list(labelled.arrays.info['pick']) == ['small']
    assert labelled.labels == ['energy', 'forces', 'stress']
