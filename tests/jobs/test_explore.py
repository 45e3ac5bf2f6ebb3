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
    with np.load(job_folder / explore.SCORES_FILE) as scores:  # what the `hal` selection labels (seed 002)
        assert int(scores['hal_stop'].sum()) == len(fired)
        assert sorted(scores['walker'][scores['hal_stop']].tolist()) == sorted(int(w) for w in fired)
        assert (scores['relative_force_uncertainty'][scores['hal_stop']] > 0).all()
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


def test_neighbor_skin_parameter_is_validated_and_its_rebuilds_reported(job_folder):
    from aiida_alkit.calculations.explore import validate_explore_parameters as validate

    for bad in (-0.5, 'x', True, float('inf')):
        assert 'neighbor_skin_A must be a number >= 0' in validate({'neighbor_skin_A': bad})
    assert validate({'neighbor_skin_A': 0}) is None and validate({'neighbor_skin_A': 1.5}) is None
    counts = {}
    for skin in (0.0, 1.0):
        parameters = {'walkers': 2, 'steps': 6, 'num_threads': 1, 'device': 'cpu', 'features': None}
        (job_folder / 'parameters.json').write_text(json.dumps({**parameters, 'neighbor_skin_A': skin}))
        assert explore.main([str(job_folder)]) == 0, (job_folder / 'results.json').read_text()
        results = json.loads((job_folder / 'results.json').read_text())
        counts[skin] = results['neighbor_lists']
        assert set(results['timings_s']) == {'load', 'calibration', 'md', 'scores'}  # stage wall times, s
        assert all(value >= 0 for value in results['timings_s'].values()) and results['timings_s']['md'] > 0
    assert counts[0.0]['rebuilt'] == counts[0.0]['needed'] == counts[1.0]['needed'] >= 2 * 7
    assert counts[1.0]['rebuilt'] < counts[1.0]['needed'] / 2


def test_one_calibration_for_stop_and_scores(tmp_path):
    """One validation configuration of 4 atoms: the calibration is finite (atoms pooled, level clipped to 1 and
    recorded), and every candidate's calibrated score equals the calibrated atom uncertainty the walker stop saw."""
    GMNN(GMNNHyperparameters.from_dict(TINY)).save(tmp_path / explore.POTENTIAL_FILE)
    structures = []
    for seed in range(4):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.08, seed=seed)
        structures.append(label_with_emt(atoms))
    train = ConfigurationArrays.from_atoms(structures)
    train.info['split'] = np.array(['train'] * 3 + ['valid'])
    train.save(tmp_path / explore.TRAINING_FILE)
    ConfigurationArrays.from_atoms(structures[:2]).save(tmp_path / explore.SEEDS_FILE)
    parameters = {
        'walkers': 2,
        'steps': 6,
        'sample_every': 2,
        'num_threads': 1,
        'device': 'cpu',
        'features': {'kind': 'sketch', 'dim': 16},
        'bias': {'kind': 'gradient', 'relative_tau': 0.2},
        'stop': {'uncertainty': 1e6},
    }
    (tmp_path / 'parameters.json').write_text(json.dumps(parameters))
    assert explore.main([str(tmp_path)]) == 0, (tmp_path / 'results.json').read_text()
    record = json.loads((tmp_path / 'results.json').read_text())['calibration']
    assert record['rule'] == 'atoms' and record['n_structures'] == 1 and record['n_scores'] == 4
    assert record['level_clipped'] is True and record['quantile_level'] == 1.0
    assert record['q_hat'] is not None and 0 < record['q_hat'] < np.inf
    with np.load(tmp_path / explore.SCORES_FILE) as scores:
        calibrated = scores['calibrated_uncertainty']
    pool = ConfigurationArrays.load(tmp_path / explore.POOL_FILE)
    assert np.isfinite(calibrated).all() and (calibrated > 0).all()
    np.testing.assert_allclose(calibrated, pool.info['max_atom_force_unc'], rtol=1e-6)


def _npt_run(folder, bias: dict, **extra) -> tuple[ConfigurationArrays, dict]:
    parameters = {
        'walkers': 2,
        'steps': 6,
        'sample_every': 1,
        'num_threads': 1,
        'device': 'cpu',
        'features': None,
        'pressure_GPa': 0.0,
        'bias': bias,
        **extra,
    }
    (folder / 'parameters.json').write_text(json.dumps(parameters))
    assert explore.main([str(folder)]) == 0, (folder / 'results.json').read_text()
    return ConfigurationArrays.load(folder / explore.POOL_FILE), json.loads((folder / 'results.json').read_text())


@pytest.mark.parametrize('barostat', [{}, {'kind': 'berendsen', 'compressibility_per_GPa': 0.01, 'tau_fs': 100.0}])
def test_adaptive_bias_stress_with_burn_in_drives_the_barostat(job_folder, barostat):
    """bias.relative_stress_tau rescales the bias stress like the bias force (seed 003 eq. 8), both after
    bias.burn_in_steps (seed 002); the NPT cell moves under the default stochastic barostat and under Berendsen."""
    bias = {'kind': 'gradient', 'relative_tau': 0.2, 'relative_stress_tau': 0.5, 'burn_in_steps': 3, 'dim': 16}
    pool, _ = _npt_run(job_folder, bias, barostat=barostat)
    step, early = pool.info['step'], pool.info['step'] < 3
    assert set(step.tolist()) >= set(range(1, 7))
    for name in ('tau', 'tau_stress'):
        assert np.all(pool.info[name][early] == 0) and np.all(pool.info[name][~early] > 0), name
    volumes = pool.info['volume']
    assert np.all(np.isfinite(volumes)) and np.ptp(volumes[pool.info['walker'] == 0]) > 0


@pytest.fixture(scope='module')
def alloy_folder(tmp_path_factory):
    """An (untrained) tiny Cu-Au potential, Cu2Au2 seeds, and a labelled Cu-Au training set."""
    folder = tmp_path_factory.mktemp('explore_alloy')
    GMNN(GMNNHyperparameters.from_dict({**TINY, 'species': ['Cu', 'Au']})).save(folder / explore.POTENTIAL_FILE)
    structures = []
    for seed in range(4):
        atoms = bulk('Cu', 'fcc', a=3.75, cubic=True)
        atoms.symbols[[1, 2]] = 'Au'
        atoms.rattle(0.05, seed=seed)
        structures.append(label_with_emt(atoms))
    ConfigurationArrays.from_atoms(structures).save(folder / explore.TRAINING_FILE)
    ConfigurationArrays.from_atoms(structures[:2]).save(folder / explore.SEEDS_FILE)
    return folder


def test_hal_monte_carlo_runs_in_the_explore_job(alloy_folder):
    """HAL's swap and cell moves on E_HAL (seed 002) every 2 steps, reported as [accepted, attempted] per kind."""
    bias = {'kind': 'hal', 'relative_tau': 0.1, 'burn_in_steps': 0}
    monte_carlo = {'every': 2, 'swap': 1, 'cell': 1, 'cell_strain': 0.005}
    _, results = _npt_run(alloy_folder, bias, monte_carlo=monte_carlo, stop={'hal': {'s_tol': 1.0}})
    acceptance = results['mc_acceptance']
    assert acceptance['swap'][1] == acceptance['cell'][1] == 2 * 3  # 2 walkers, rounds at steps 2, 4, 6
    assert acceptance['volume'] == [0, 0]
    assert 0 <= acceptance['swap'][0] <= 6 and 0 <= acceptance['cell'][0] <= 6


def test_barostat_bias_and_monte_carlo_parameters_are_validated():
    from aiida_alkit.calculations.explore import validate_explore_parameters as validate

    assert 'bias.burn_in_steps must be an integer >= 0' in validate({'bias': {'burn_in_steps': -1}})
    assert 'bias.relative_stress_tau must be a number >= 0' in validate({'bias': {'relative_stress_tau': 'x'}})
    assert 'unknown bias parameters' in validate({'bias': {'stress_relative_tau': 0.1}})
    assert 'barostat.kind must be' in validate({'barostat': {'kind': 'mtk'}})
    assert 'barostat.tau_fs must be a positive number' in validate({'barostat': {'tau_fs': 0}})
    assert 'compressibility_per_GPa must be in (0, 10]' in validate({'barostat': {'compressibility_per_GPa': -1}})
    assert 'anisotropic needs barostat.kind "berendsen"' in validate({'barostat': {'anisotropic': True}})
    assert 'monte_carlo.every must be an integer >= 1' in validate({'monte_carlo': {'every': 0}})
    assert 'monte_carlo.swap must be an integer >= 0' in validate({'monte_carlo': {'swap': 0.5}})
    assert 'monte_carlo.cell_strain must be in (0, 0.5]' in validate({'monte_carlo': {'cell_strain': 2.0}})
    assert 'unknown monte_carlo parameters' in validate({'monte_carlo': {'shear': 1}})
    good = {
        'pressure_GPa': 1.0,
        'bias': {'kind': 'hal', 'relative_tau': 0.1, 'relative_stress_tau': 0.2, 'burn_in_steps': 100},
        'barostat': {'kind': 'berendsen', 'tau_fs': 500.0, 'compressibility_per_GPa': 0.007, 'anisotropic': True},
        'monte_carlo': {'every': 10, 'swap': 1, 'volume': 1, 'cell': 1, 'cell_strain': 0.01},
    }
    assert validate(good) is None


def test_feature_parameters_are_validated():
    from aiida_alkit.calculations.explore import validate_explore_parameters

    assert 'unknown features parameters' in validate_explore_parameters({'features': {'mean': True}})
    assert 'features.kind must be' in validate_explore_parameters({'features': {'kind': 'full'}})
    assert 'features.dim must be a positive integer' in validate_explore_parameters({'features': {'dim': 0}})
    assert 'normalise_per_atom must be true or false' in validate_explore_parameters(
        {'features': {'normalise_per_atom': 'yes'}}
    )
    assert validate_explore_parameters({'features': {'kind': 'sketch', 'dim': 8, 'normalise_per_atom': False}}) is None
    assert validate_explore_parameters({'features': None}) is None
