"""Input files of the alkit CalcJobs, written by ``prepare_for_submission`` into a temporary folder (no job runs):
``parameters.json``, the command line, the files copied in from the input nodes and the retrieve lists."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from aiida import orm

from aiida_alkit.data import DatasetData, PotentialData
from aiida_alkit.jobs.common import GRANTED_CORES_KEY, PARAMETERS_FILE, RESULTS_FILE

from ..parsers.conftest import FIXTURES, RETRIEVED, TEMPORARY

#: The tiny GM-NN (Cu) trained by a real train job, stored for the parser tests.
POTENTIAL_FILE = FIXTURES / 'train' / 'adam' / 'potential.pt'


@pytest.fixture
def dataset(aiida_profile, copper_structures) -> DatasetData:
    return DatasetData.from_atoms(copper_structures).store()


@pytest.fixture
def potential(aiida_profile) -> PotentialData:
    return PotentialData(file=POTENTIAL_FILE).store()


def _read_parameters(folder: pathlib.Path) -> dict[str, Any]:
    assert sorted(path.name for path in folder.iterdir()) == [PARAMETERS_FILE]  # data files come from the nodes
    return json.loads((folder / PARAMETERS_FILE).read_text())


def _check_common(calcinfo, code: orm.InstalledCode, job: str, entry_point: str) -> None:
    """One code run as ``python -m aiida_alkit.jobs.<job> .`` into job.out; results.json and job.out retrieved."""
    (codeinfo,) = calcinfo.codes_info
    assert codeinfo.code_uuid == code.uuid
    assert codeinfo.cmdline_params == ['-m', f'aiida_alkit.jobs.{job}', '.']
    assert codeinfo.stdout_name == 'job.out'
    assert codeinfo.join_files is True
    assert calcinfo.retrieve_list == [RESULTS_FILE, 'job.out', *RETRIEVED[entry_point]]
    assert calcinfo.retrieve_temporary_list == list(TEMPORARY[entry_point])


def _check_copies(calcinfo, expected: list[tuple[orm.Data, str]]) -> None:
    """``local_copy_list`` copies each node's repository file under the name the job reads, and the file exists."""
    assert calcinfo.local_copy_list == [(node.uuid, type(node).FILENAME, name) for node, name in expected]
    for node, _ in expected:
        assert type(node).FILENAME in node.base.repository.list_object_names()


def test_train(generate_calc_job, alkit_python_code, dataset):
    parameters = {'model': {'species': ['Cu'], 'cutoff': 4.0}, 'training': {'epochs': 3}}
    inputs = {
        'code': alkit_python_code,
        'dataset': dataset,
        'parameters': orm.Dict(parameters),
        'metadata': {'options': {'max_wallclock_seconds': 100}},
    }
    folder, calcinfo = generate_calc_job('alkit.train', inputs)
    written = _read_parameters(folder)
    assert written == {**parameters, 'max_seconds': pytest.approx(90.0), GRANTED_CORES_KEY: 1}  # 0.9 x walltime
    _check_common(calcinfo, alkit_python_code, 'train', 'alkit.train')
    _check_copies(calcinfo, [(dataset, 'dataset.npz')])
    assert not calcinfo.remote_copy_list


def test_train_warm_start_test_set_and_cores(generate_calc_job, alkit_python_code, dataset, potential):
    """An explicit ``max_seconds`` is kept; the initial potential and the test set are copied in; four cores per
    machine are granted to the job's threads."""
    test_set = dataset.subset([0, 1])
    inputs = {
        'code': alkit_python_code,
        'dataset': dataset,
        'initial_potential': potential,
        'test_dataset': test_set,
        'parameters': orm.Dict({'max_seconds': 30}),
        'metadata': {
            'options': {
                'max_wallclock_seconds': 100,
                'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1, 'num_cores_per_machine': 4},
            }
        },
    }
    folder, calcinfo = generate_calc_job('alkit.train', inputs)
    assert _read_parameters(folder) == {'max_seconds': 30, GRANTED_CORES_KEY: 4}
    _check_copies(calcinfo, [(dataset, 'dataset.npz'), (potential, 'initial.pt'), (test_set, 'test.npz')])


def test_train_resume_copies_the_checkpoint(generate_calc_job, alkit_python_code, aiida_localhost, dataset):
    parent = orm.RemoteData(computer=aiida_localhost, remote_path='/scratch/alkit/previous-job').store()
    inputs = {'code': alkit_python_code, 'dataset': dataset, 'parent_folder': parent}
    _, calcinfo = generate_calc_job('alkit.train', inputs)
    assert calcinfo.remote_copy_list == [
        (aiida_localhost.uuid, '/scratch/alkit/previous-job/checkpoint.pt', 'initial.pt')
    ]


def test_train_refuses_a_potential_and_a_parent_folder(
    generate_calc_job, alkit_python_code, aiida_localhost, dataset, potential
):
    parent = orm.RemoteData(computer=aiida_localhost, remote_path='/scratch').store()
    inputs = {'code': alkit_python_code, 'dataset': dataset, 'initial_potential': potential, 'parent_folder': parent}
    with pytest.raises(ValueError, match='not both'):
        generate_calc_job('alkit.train', inputs)


def test_explore(generate_calc_job, alkit_python_code, dataset, potential):
    parameters = {'walkers': 2, 'steps': 10, 'bias': {'kind': 'gradient', 'relative_tau': 0.2}, 'features': None}
    inputs = {
        'code': alkit_python_code,
        'potential': potential,
        'seeds': dataset,
        'training': dataset,
        'parameters': orm.Dict(parameters),
    }
    folder, calcinfo = generate_calc_job('alkit.explore', inputs)
    assert _read_parameters(folder) == {**parameters, GRANTED_CORES_KEY: 1}  # verbatim, no time budget added
    _check_common(calcinfo, alkit_python_code, 'explore', 'alkit.explore')
    _check_copies(calcinfo, [(potential, 'potential.pt'), (dataset, 'seeds.npz'), (dataset, 'training.npz')])


def test_explore_without_training_set(generate_calc_job, alkit_python_code, dataset, potential):
    """Unbiased MD needs no training set: only the potential and the seeds are copied."""
    inputs = {'code': alkit_python_code, 'potential': potential, 'seeds': dataset}
    folder, calcinfo = generate_calc_job('alkit.explore', inputs)
    assert _read_parameters(folder) == {GRANTED_CORES_KEY: 1}
    _check_copies(calcinfo, [(potential, 'potential.pt'), (dataset, 'seeds.npz')])


def test_label_ase(generate_calc_job, alkit_python_code, dataset):
    inputs = {
        'code': alkit_python_code,
        'configurations': dataset,
        'calculator': orm.Str('ase.calculators.emt.EMT'),
        'calculator_kwargs': orm.Dict({'asap_cutoff': True}),
        'properties': orm.List(['energy', 'forces']),
    }
    folder, calcinfo = generate_calc_job('alkit.label.ase', inputs)
    assert _read_parameters(folder) == {
        'calculator': 'ase.calculators.emt.EMT',
        'calculator_kwargs': {'asap_cutoff': True},
        'properties': ['energy', 'forces'],
        'max_force': 20.0,  # the default of the max_force input (eV/Å)
        GRANTED_CORES_KEY: 1,
    }
    _check_common(calcinfo, alkit_python_code, 'label', 'alkit.label.ase')
    _check_copies(calcinfo, [(dataset, 'configurations.npz')])
