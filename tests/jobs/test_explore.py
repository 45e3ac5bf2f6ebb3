"""The explore job's stop criteria from the papers, run for real at job level: the calibrated gradient-feature
uncertainty (seed 003), HAL's softmax criterion (seed 002) and the D-optimality extrapolation grade (seed 004).
Each is checked with a threshold that must fire at once and one that never can."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs import explore
from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters

from ..conftest import label_with_emt

TINY = {'species': ['Cu'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]}


@pytest.fixture(scope='module')
def job_folder(tmp_path_factory):
    """A folder with an (untrained) tiny potential, seeds, and a labelled training set with a validation split."""
    folder = tmp_path_factory.mktemp('explore')
    GMNN(GMNNHyperparameters.from_dict(TINY)).save(folder / explore.POTENTIAL_FILE)
    structures = []
    for seed in range(8):
        atoms = bulk('Cu', 'fcc', a=3.61 + 0.02 * (seed % 3), cubic=True)
        atoms.rattle(0.08, seed=seed)
        structures.append(label_with_emt(atoms))
    train = ConfigurationArrays.from_atoms(structures)
    train.info['split'] = np.array(['train'] * 5 + ['valid'] * 3)
    train.save(folder / explore.TRAINING_FILE)
    ConfigurationArrays.from_atoms(structures[:2]).save(folder / explore.SEEDS_FILE)
    return folder


def _run(folder, bias: dict, stop: dict) -> dict:
    parameters = {
        'walkers': 2,
        'steps': 6,
        'sample_every': 2,
        'num_threads': 1,
        'device': 'cpu',
        'features': None,
        'bias': bias,
        'stop': stop,
    }
    (folder / 'parameters.json').write_text(json.dumps(parameters))
    assert explore.main([str(folder)]) == 0, (folder / 'results.json').read_text()
    stops = json.loads((folder / explore.STOPS_FILE).read_text())
    return {walker: entry['reason'] for walker, entry in stops.items()}


@pytest.mark.parametrize('bias', [{'kind': 'gradient', 'relative_tau': 0.2}, {'kind': 'none'}])
def test_calibrated_uncertainty_stop(job_folder, bias):
    fired = _run(job_folder, bias, {'uncertainty': 1e-6})
    assert set(fired.values()) == {'uncertainty'}
    pool = ConfigurationArrays.load(job_folder / explore.POOL_FILE)
    assert np.isfinite(pool.info['max_atom_force_unc']).all()  # calibrated atom uncertainty, eV/Å
    never = _run(job_folder, bias, {'uncertainty': 1e6})
    assert 'uncertainty' not in set(never.values())


def test_hal_softmax_stop(job_folder):
    bias = {'kind': 'hal', 'relative_tau': 0.1}
    fired = _run(job_folder, bias, {'hal': {'s_tol': 0.01}})  # the softmax over 4 atoms is at least 1/4
    assert set(fired.values()) == {'hal_s_tol'}
    never = _run(job_folder, bias, {'hal': {'s_tol': 1.0}})  # a softmax never exceeds 1
    assert 'hal_s_tol' not in set(never.values())


def test_extrapolation_grade_stop(job_folder):
    fired = _run(job_folder, {'kind': 'none'}, {'gamma_break': 1.0})
    assert set(fired.values()) == {'extrapolation'}
    pool = ConfigurationArrays.load(job_folder / explore.POOL_FILE)
    assert (pool.info['gamma'][np.isfinite(pool.info['gamma'])] > 1.0).any()
    never = _run(job_folder, {'kind': 'none'}, {'gamma_break': 1e12})
    assert 'extrapolation' not in set(never.values())


def test_stop_parameters_are_validated():
    from aiida_alkit.calculations.explore import validate_explore_parameters

    assert 'unknown stop parameters' in validate_explore_parameters({'stop': {'softmax': 1}})
    assert 'stop.hal needs bias.kind "hal"' in validate_explore_parameters({'stop': {'hal': {'s_tol': 0.5}}})
    assert 'gamma_break must be >= 1' in validate_explore_parameters({'stop': {'gamma_break': 0.5}})
    assert validate_explore_parameters({'bias': {'kind': 'hal'}, 'stop': {'hal': {'s_tol': 0.5}}}) is None
