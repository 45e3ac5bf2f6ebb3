"""`alkit.train` run for real: Adam, RLEKF (P and KPU_trained saved), committee, divergence, validation."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_alkit.calculations.functions import merge_datasets
from aiida_alkit.data import DatasetData
from aiida_alkit.models.committee import Committee
from aiida_alkit.models.gmnn import GMNN

from ..conftest import label_with_emt

TrainCalculation = CalculationFactory('alkit.train')
TINY = {'species': ['Cu'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]}


@pytest.fixture
def training_set(aiida_profile):
    structures = []
    for seed in range(8):
        atoms = bulk('Cu', 'fcc', a=3.61 + 0.02 * (seed % 3), cubic=True)
        atoms.rattle(0.08, seed=seed)
        structures.append(label_with_emt(atoms))
    dataset = DatasetData.from_atoms(structures).store()
    return merge_datasets(dataset, round_index=orm.Int(0), validation_fraction=orm.Float(0.25), seed=orm.Int(1))


def _run(code, dataset, parameters):
    builder = TrainCalculation.get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict({'num_threads': 1, 'device': 'cpu', **parameters})
    builder.metadata.options.max_wallclock_seconds = 600
    return run_get_node(builder)


def test_adam(alkit_python_code, training_set, tmp_path):
    results, node = _run(alkit_python_code, training_set, {'model': TINY, 'training': {'epochs': 3, 'batch_size': 4}})
    assert node.exit_status == 0, node.exit_message
    potential = results['potential']
    assert potential.model_kind == 'gmnn'
    assert potential.species == ['Cu']
    assert potential.metrics['valid_forces_rmse_ev_per_ang'] > 0
    assert len(results['metrics']['history']['history']) >= 3
    model = GMNN.load(_export(potential, tmp_path))
    assert model.hyperparameters.hidden_widths == (8, 8)
    # the job's time budget defaults to 0.9 x the scheduler's walltime (600 s here)
    assert json.loads(node.base.repository.get_object_content('parameters.json'))['max_seconds'] == pytest.approx(540)


def _export(potential, folder):
    path = folder / 'potential.pt'
    potential.export(path)
    return path


def test_rlekf_saves_p_and_kpu(alkit_python_code, training_set):
    parameters = {'model': TINY, 'optimizer': 'rlekf', 'rlekf': {'epochs': 1, 'block_size': 64, 'p0': 100.0}}
    results, node = _run(alkit_python_code, training_set, parameters)
    assert node.exit_status == 0, node.exit_message
    potential = results['potential']
    assert 'rlekf' in potential.base.attributes.get('extras')
    assert potential.base.attributes.get('kpu_trained') > 0
    assert potential.load().extras['rlekf']


def test_committee(alkit_python_code, training_set, tmp_path):
    parameters = {'model': TINY, 'committee_size': 2, 'training': {'epochs': 2, 'batch_size': 4}}
    results, node = _run(alkit_python_code, training_set, parameters)
    assert node.exit_status == 0, node.exit_message
    assert results['potential'].model_kind == 'gmnn-committee'
    assert results['potential'].metrics['valid_forces_rmse_ev_per_ang'] > 0  # errors of the committee mean
    assert len(Committee.load(_export(results['potential'], tmp_path)).members) == 2


@pytest.mark.faults
def test_divergence_has_its_exit_code(alkit_python_code, training_set):
    rates = {'nn': 1e12, 'representation': 1e12, 'shift': 1e12, 'scale': 1e12}
    parameters = {'model': TINY, 'training': {'epochs': 5, 'batch_size': 2, 'learning_rates': rates}}
    _, node = _run(alkit_python_code, training_set, parameters)
    assert node.exit_status == TrainCalculation.exit_codes.ERROR_TRAINING_DIVERGED.status


def test_bad_parameters_are_refused(alkit_python_code, training_set):
    with pytest.raises(ValueError, match='unknown training parameters'):
        _run(alkit_python_code, training_set, {'training': {'epoch': 3}})
    with pytest.raises(ValueError, match='committee'):
        _run(alkit_python_code, training_set, {'optimizer': 'rlekf', 'committee_size': 4})
    with pytest.raises(ValueError, match='lacks'):
        _run(alkit_python_code, training_set, {'model': {**TINY, 'species': ['Al']}})


def test_a_mace_model_is_trained_by_the_job(alkit_python_code, training_set, tmp_path):
    """`model.kind: mace` through the real job: a MACE potential node whose file loads as MACE, avg_num_neighbors
    taken from the training set; a warm start of the other kind is refused before the job runs."""
    from aiida_alkit.models.mace import MACEPotential
    from aiida_alkit.models.potential import load_potential

    model = {'kind': 'mace', 'cutoff': 4.0, 'channels': 4, 'max_ell': 1, 'radial_mlp': [8], 'mlp_width': 4}
    results, node = _run(alkit_python_code, training_set, {'model': model, 'training': {'epochs': 2, 'batch_size': 4}})
    assert node.exit_status == 0, node.exit_message
    potential = results['potential']
    assert potential.model_kind == 'mace'
    loaded = load_potential(_export(potential, tmp_path))
    assert isinstance(loaded, MACEPotential) and loaded.hyperparameters.avg_num_neighbors > 1
    gmnn, _ = _run(alkit_python_code, training_set, {'model': TINY, 'training': {'epochs': 1, 'batch_size': 4}})
    builder = TrainCalculation.get_builder()
    builder.code = alkit_python_code
    builder.dataset = training_set
    builder.initial_potential = gmnn['potential']
    builder.parameters = orm.Dict({'model': model, 'num_threads': 1, 'device': 'cpu'})
    with pytest.raises(ValueError, match=r"is a 'gmnn' potential, but model\.kind is 'mace'"):
        run_get_node(builder)
