"""`alkit.explore` run for real: a trained tiny potential drives walkers; pool, scores and stops come back."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory

from .test_train import (
    TINY,
    training_set,  # noqa: F401  (fixture)
)
from .test_train import _run as run_train

ExploreCalculation = CalculationFactory('alkit.explore')


@pytest.fixture
def committee_potential(alkit_python_code, training_set):  # noqa: F811
    parameters = {'model': TINY, 'committee_size': 2, 'training': {'epochs': 2, 'batch_size': 4}}
    results, node = run_train(alkit_python_code, training_set, parameters)
    assert node.is_finished_ok, node.exit_message
    return results['potential']


def _explore(code, potential, seeds, training, **parameters):
    builder = ExploreCalculation.get_builder()
    builder.code = code
    builder.potential = potential
    builder.seeds = seeds
    builder.training = training
    settings = {'walkers': 2, 'steps': 12, 'sample_every': 4, 'num_threads': 1, 'device': 'cpu'}
    settings.update(parameters)
    builder.parameters = orm.Dict(settings)
    builder.metadata.options.max_wallclock_seconds = 600
    return run_get_node(builder)


def test_biased_exploration(alkit_python_code, committee_potential, training_set):  # noqa: F811
    results, node = _explore(
        alkit_python_code,
        committee_potential,
        training_set,
        training_set,
        bias={'kind': 'committee', 'relative_tau': 0.2},
        features={'kind': 'sketch', 'dim': 16},
    )
    assert node.exit_status == 0, node.exit_message
    pool = results['pool']
    info = pool.arrays.info
    assert len(pool) >= 2 * 3  # frames at steps 4, 8, 12 of both walkers (or their stop frames)
    assert set(info['walker']) == {0, 1}
    assert {'step', 'temperature'} <= set(info)
    scores = results['scores']
    assert scores.get_array('pool_features').shape == (len(pool), 16)
    assert scores.get_array('train_features').shape[0] == len(training_set)
    assert np.all(scores.get_array('max_force_deviation') >= 0)
    calibrated = scores.get_array('calibrated_uncertainty')  # eV/Å, conformal on the 2 validation configurations
    assert calibrated.shape == (len(pool),) and np.all(calibrated > 0)
    assert set(results['stops']['walkers']) == {'0', '1'}


@pytest.fixture
def single_potential(alkit_python_code, training_set):  # noqa: F811
    results, node = run_train(alkit_python_code, training_set, {'model': TINY, 'training': {'epochs': 2}})
    assert node.is_finished_ok, node.exit_message
    return results['potential']


@pytest.mark.parametrize('kind', ['gradient', 'hal'])
def test_feature_biased_exploration(alkit_python_code, single_potential, training_set, kind):  # noqa: F811
    # hal as the preset runs it, under a pressure: HAL's Monte-Carlo cell moves and the stochastic barostat
    npt = {'pressure_GPa': 0.0, 'monte_carlo': {'every': 4, 'swap': 1, 'cell': 1}} if kind == 'hal' else {}
    results, node = _explore(
        alkit_python_code,
        single_potential,
        training_set,
        training_set,
        bias={'kind': kind, 'relative_tau': 0.2, 'dim': 16},
        features={'kind': 'last_layer'},
        **npt,
    )
    assert node.exit_status == 0, node.exit_message
    assert len(results['pool']) >= 2
    assert 'max_force_deviation' not in results['scores'].get_arraynames()  # one model: no committee deviation


def test_bad_parameters(alkit_python_code, committee_potential, training_set):  # noqa: F811
    with pytest.raises(ValueError, match='unknown explore parameters'):
        _explore(alkit_python_code, committee_potential, training_set, training_set, temperature=300)
    with pytest.raises(ValueError, match=r'bias\.kind must be'):
        _explore(alkit_python_code, committee_potential, training_set, training_set, bias={'kind': 'magic'})
    with pytest.raises(ValueError, match='far too large'):
        _explore(alkit_python_code, committee_potential, training_set, training_set, timestep_fs=50.0)
    with pytest.raises(ValueError, match=r'monte_carlo\.every must be an integer >= 1'):
        _explore(alkit_python_code, committee_potential, training_set, training_set, monte_carlo={'every': 0})
    with pytest.raises(ValueError, match=r'barostat\.kind must be'):
        _explore(alkit_python_code, committee_potential, training_set, training_set, barostat={'kind': 'mtk'})
