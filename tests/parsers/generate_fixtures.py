"""Regenerate the parser fixtures in ``fixtures/<parser>/<case>/`` by running the real jobs once (2-3 minutes).

Not collected by a plain ``pytest`` run (the name does not start with ``test_``); run it on purpose with::

    .venv/bin/pytest tests/parsers/generate_fixtures.py

Each case folder receives the files of the job's ``retrieved`` folder and the files of its retrieved temporary list
(potential, pool, scores, labels), copied from the job's work folder. The test modules check the parsed outputs
against the ``data_regression`` files next to them: rerun ``pytest --force-regen tests/parsers`` after regenerating.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_alkit.calculations.functions import merge_datasets
from aiida_alkit.data import DatasetData

from ..conftest import label_with_emt

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
TINY = {'species': ['Cu'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]}
#: Parameters of each case, also given as the ``parameters`` input of the parser tests' nodes.
TRAIN = {
    'adam': {'model': TINY, 'training': {'epochs': 3, 'batch_size': 4}},
    'diverged': {
        'model': TINY,
        'training': {
            'epochs': 5,
            'batch_size': 2,
            'learning_rates': {'nn': 1e12, 'representation': 1e12, 'shift': 1e12, 'scale': 1e12},
        },
    },
    'out_of_walltime': {'model': TINY, 'max_seconds': 0.5, 'training': {'epochs': 1000, 'batch_size': 4}},
}
EXPLORE = {
    'committee': {
        'walkers': 2,
        'steps': 12,
        'sample_every': 4,
        'bias': {'kind': 'committee', 'relative_tau': 0.2},
        'features': {'kind': 'sketch', 'dim': 16},
    },
    'empty': {
        'walkers': 2,
        'steps': 6,
        'sample_every': 3,
        'timestep_fs': 10.0,
        'features': None,
        'stop': {'min_distance_fraction': 0.999},
    },
}


def _copy(node: orm.CalcJobNode, temporary: tuple[str, ...], parser: str, case: str) -> None:
    """The retrieved files and the temporary outputs of ``node`` into ``fixtures/<parser>/<case>/``."""
    target = FIXTURES / parser / case
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    retrieved = node.outputs.retrieved
    for name in retrieved.base.repository.list_object_names():
        (target / name).write_bytes(retrieved.base.repository.get_object_content(name, mode='rb'))
    work = pathlib.Path(node.outputs.remote_folder.get_remote_path())
    for name in temporary:
        if (work / name).is_file():
            shutil.copy(work / name, target / name)


@pytest.fixture
def training_set(aiida_profile) -> DatasetData:
    structures = []
    for seed in range(8):
        atoms = bulk('Cu', 'fcc', a=3.61 + 0.02 * (seed % 3), cubic=True)
        atoms.rattle(0.08, seed=seed)
        structures.append(label_with_emt(atoms))
    dataset = DatasetData.from_atoms(structures).store()
    return merge_datasets(dataset, round_index=orm.Int(0), validation_fraction=orm.Float(0.25), seed=orm.Int(1))


def _train(code: orm.InstalledCode, dataset: DatasetData, parameters: dict) -> tuple[dict, orm.CalcJobNode]:
    builder = CalculationFactory('alkit.train').get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict({'num_threads': 1, 'device': 'cpu', **parameters})
    builder.metadata.options.max_wallclock_seconds = 600
    return run_get_node(builder)


def test_generate_train(alkit_python_code, training_set):
    for case, parameters in TRAIN.items():
        _, node = _train(alkit_python_code, training_set, parameters)
        assert node.exit_status == {'adam': 0, 'diverged': 410, 'out_of_walltime': 411}[case], node.exit_message
        _copy(node, ('potential.pt',), 'train', case)


def test_generate_explore(alkit_python_code, training_set):
    committee = {'model': TINY, 'committee_size': 2, 'training': {'epochs': 2, 'batch_size': 4}}
    single = {'model': TINY, 'training': {'epochs': 2}}
    for case, parameters in EXPLORE.items():
        results, node = _train(alkit_python_code, training_set, committee if case == 'committee' else single)
        assert node.is_finished_ok, node.exit_message
        builder = CalculationFactory('alkit.explore').get_builder()
        builder.code = alkit_python_code
        builder.potential = results['potential']
        builder.seeds = training_set
        builder.training = training_set
        builder.parameters = orm.Dict({'num_threads': 1, 'device': 'cpu', **parameters})
        builder.metadata.options.max_wallclock_seconds = 600
        _, node = run_get_node(builder)
        assert node.exit_status == {'committee': 0, 'empty': 410}[case], node.exit_message
        _copy(node, ('pool.npz', 'scores.npz'), 'explore', case)


def test_generate_label_ase(alkit_python_code):
    for case, broken in (('partial', (2,)), ('all_failed', (0, 1))):
        structures = []
        for seed in range(4 if case == 'partial' else 2):
            atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
            atoms.rattle(0.05, seed=seed)
            if seed in broken:  # two atoms 0.9 Å apart: EMT forces far above max_force
                atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]
            structures.append(atoms)
        builder = CalculationFactory('alkit.label.ase').get_builder()
        builder.code = alkit_python_code
        builder.configurations = DatasetData.from_atoms(structures).store()
        builder.calculator = orm.Str('ase.calculators.emt.EMT')
        builder.metadata.options.max_wallclock_seconds = 600
        _, node = run_get_node(builder)
        assert node.exit_status == {'partial': 0, 'all_failed': 410}[case], node.exit_message
        _copy(node, ('labelled.npz',), 'label_ase', case)
