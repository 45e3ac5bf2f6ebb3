"""The explore job's typed parameters: defaults, the runtime keys, features semantics and the error messages."""

from __future__ import annotations

import dataclasses
import re

import pytest

from aiida_alkit.jobs.explore_parameters import (
    ExploreParameters,
    FeatureParameters,
    HALStopParameters,
    MonteCarloParameters,
    ParameterError,
    explore_problem,
)


def test_an_empty_dictionary_gives_the_documented_defaults():
    parameters = ExploreParameters.from_dict({})
    assert parameters == ExploreParameters()
    assert (parameters.walkers, parameters.steps, parameters.timestep_fs, parameters.temperature_K) == (
        4,
        200,
        2.0,
        300.0,
    )
    assert parameters.bias.kind == 'none' and parameters.bias.burn_in_steps == 100
    assert parameters.features == FeatureParameters('sketch', 512, True) and not parameters.features_requested
    assert parameters.monte_carlo is None and parameters.stop.hal is None and parameters.pressure_GPa is None


def test_nested_settings_are_typed_with_their_defaults():
    parameters = ExploreParameters.from_dict(
        {
            'walkers': 2,
            'seed': 3,
            'pressure_GPa': 1.5,
            'bias': {'kind': 'hal', 'relative_tau': 0.1, 'tau': None},
            'stop': {'hal': {'s_tol': 0.4}},
            'monte_carlo': {'swap': 2},
            'features': {'kind': 'last_layer'},
            'kpu': {'fraction': 0.25},
        }
    )
    assert parameters.bias.relative_tau == 0.1 and parameters.bias.tau == 0.0
    assert parameters.stop.hal == HALStopParameters(s_tol=0.4, f_tol=None)
    assert parameters.monte_carlo == MonteCarloParameters(swap=2)
    assert parameters.features == FeatureParameters(kind='last_layer') and parameters.features_requested
    assert (parameters.kpu.fraction, parameters.seed, parameters.pressure_GPa) == (0.25, 3, 1.5)


@pytest.mark.parametrize('value', [None, {}])
def test_null_or_empty_features_mean_no_features(value):
    parameters = ExploreParameters.from_dict({'features': value})
    assert parameters.features is None and not parameters.features_requested


def test_the_calcjob_keys_are_accepted_only_at_run_time():
    """``granted_cores`` is written by the CalcJob into parameters.json; a user may not set it."""
    assert ExploreParameters.from_dict({'granted_cores': 2}, runtime=True) == ExploreParameters()
    assert 'unknown explore parameters' in explore_problem({'granted_cores': 2})


@pytest.mark.parametrize(
    ('parameters', 'message'),
    [
        ({'walker': 2}, "unknown explore parameters ['walker']"),
        ({'steps': 0}, 'steps must be an integer >= 1, got 0'),
        ({'timestep_fs': 20.0}, 'timestep_fs=20.0 is far too large'),
        ({'bias': {'kind': 'magic'}}, 'bias.kind must be'),
        ({'barostat': {'compressibility_per_GPa': 20}}, 'barostat.compressibility_per_GPa must be in (0, 10]'),
        ({'monte_carlo': {'volume': -1}}, 'monte_carlo.volume must be an integer >= 0'),
        ({'stop': {'calibration_alpha': 1.0}}, 'stop.calibration_alpha must be in (0, 1)'),
        ({'bias': {'kind': 'hal'}, 'stop': {'uncertainty': 1.0}}, 'stop.uncertainty does not apply to the hal bias'),
        ({'features': 'sketch'}, 'features must be a dictionary or null'),
    ],
)
def test_problems_are_named(parameters, message):
    with pytest.raises(ParameterError, match='^' + re.escape(message)):
        ExploreParameters.from_dict(parameters)
    assert message in explore_problem(parameters)


def test_every_setting_has_a_docstring_or_is_a_documented_group():
    """The docs are generated from the dataclass: each scalar field says what it is (and its unit)."""
    import inspect

    source = inspect.getsource(ExploreParameters)
    groups = {'bias', 'barostat', 'stop', 'kpu', 'seed'}
    for item in dataclasses.fields(ExploreParameters):
        if item.name in groups:
            continue
        declaration = source.split(f'    {item.name}:', 1)[1]
        assert declaration.split('\n', 2)[1].strip().startswith('"""'), item.name
