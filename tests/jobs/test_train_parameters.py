"""The train job's typed parameters: defaults, the nested model configs, the runtime keys and the error messages."""

from __future__ import annotations

import dataclasses
import re

import pytest

from aiida_alkit.jobs.train_parameters import (
    KPUTrainedParameters,
    ParameterError,
    RLEKFParameters,
    TrainParameters,
    train_problem,
)
from aiida_alkit.models.rlekf import RLEKFConfig
from aiida_alkit.models.training import TrainingConfig


def test_an_empty_dictionary_gives_the_documented_defaults():
    parameters = TrainParameters.from_dict({})
    assert parameters == TrainParameters()
    assert (parameters.optimizer, parameters.committee_size, parameters.device) == ('adam', 1, 'auto')
    assert parameters.num_threads is None and parameters.max_seconds is None and parameters.model == {}
    assert parameters.training == TrainingConfig() and parameters.training.epochs == 1000
    assert parameters.rlekf == RLEKFParameters(RLEKFConfig(), epochs=10, batch_size=1)
    assert parameters.kpu == KPUTrainedParameters(fraction=0.5, max_configurations=200)
    assert parameters.training_config() is parameters.training


def test_nested_settings_are_the_model_configs():
    parameters = TrainParameters.from_dict(
        {
            'model': {'cutoff': 4.0, 'hidden_widths': [8, 8]},
            'optimizer': 'rlekf',
            'training': {'epochs': 7, 'adam_betas': [0.8, 0.9]},
            'rlekf': {'epochs': 3, 'batch_size': 2, 'block_size': 64, 'p0': 100},
            'kpu': {'fraction': 0.25, 'max_configurations': None},
            'max_seconds': 30,
        }
    )
    assert parameters.training == TrainingConfig(epochs=7, adam_betas=(0.8, 0.9))
    assert parameters.rlekf.config == RLEKFConfig(block_size=64, p0=100.0)
    assert parameters.kpu == KPUTrainedParameters(fraction=0.25, max_configurations=None)
    assert isinstance(parameters.max_seconds, float) and parameters.max_seconds == 30.0
    # RLEKF trains with its own epochs and batch size and draws no validation set
    assert parameters.training_config() == TrainingConfig(epochs=3, batch_size=2, valid_fraction=0.0)


def test_the_model_species_default_to_the_datasets():
    parameters = TrainParameters.from_dict({'model': {'n_radial': 2}})
    hyperparameters = parameters.hyperparameters(['Cu', 'Al'])
    assert (hyperparameters.species, hyperparameters.n_radial) == (['Cu', 'Al'], 2)
    own = TrainParameters.from_dict({'model': {'species': ['Al']}}).hyperparameters(['Cu'])
    assert own.species == ['Al']  # the job then reports the dataset's Cu as missing


def test_the_calcjob_keys_are_accepted_only_at_run_time():
    """``granted_cores`` is written by the CalcJob into parameters.json; a user may not set it."""
    assert TrainParameters.from_dict({'granted_cores': 2, 'max_seconds': 9.0}, runtime=True) == TrainParameters(
        max_seconds=9.0
    )
    assert "unknown train parameters ['granted_cores']" in train_problem({'granted_cores': 2})


@pytest.mark.parametrize(
    ('parameters', 'message'),
    [
        ({'epochs': 3}, "unknown train parameters ['epochs']; allowed: ["),
        ({'optimizer': 'sgd'}, 'optimizer must be "adam" or "rlekf", got \'sgd\''),
        ({'committee_size': 0}, 'committee_size must be a positive integer, got 0'),
        ({'committee_size': True}, 'committee_size must be a positive integer, got True'),
        ({'optimizer': 'rlekf', 'committee_size': 4}, 'a committee (committee_size > 1) is trained with optimizer'),
        ({'max_seconds': -1}, 'max_seconds must be a positive number of seconds, got -1'),
        ({'device': 'tpu'}, 'device must be "auto", "cpu" or "cuda", got \'tpu\''),
        ({'num_threads': 0}, 'num_threads must be a positive integer or null, got 0'),
        ({'training': {'epoch': 3}}, "unknown training parameters ['epoch']"),
        ({'model': {'width': 3}}, "unknown model parameters ['width']"),
        ({'rlekf': {'lambda': 0.9}}, "unknown rlekf parameters ['lambda']"),
        ({'kpu': {'share': 0.5}}, "unknown kpu parameters ['share']"),
        ({'training': [1, 2]}, 'training must be a dictionary or null, got [1, 2]'),
        ({'model': {'max_moment': 5}}, 'invalid model parameters: max_moment must be 0, 1, 2 or 3, got 5'),
        ({'training': {'lr_final_fraction': 2}}, 'invalid training parameters: lr_final_fraction must be in [0, 1]'),
        ({'rlekf': {'lambda1': 2.0}}, 'invalid rlekf parameters: lambda1 must be in (0, 1], got 2.0'),
        ({'rlekf': {'epochs': 0}}, 'rlekf.epochs must be a positive integer, got 0'),
        ({'kpu': {'fraction': 0}}, 'kpu.fraction must be in (0, 1], got 0'),
        ({'kpu': {'max_configurations': 2.5}}, 'kpu.max_configurations must be a positive integer or null, got 2.5'),
        (
            {'training': {'compile_step': 'yes'}},
            "invalid training parameters: compile_step must be true or false, got 'yes'",
        ),
        (
            {'optimizer': 'rlekf', 'training': {'compile_step': True}},
            'training.compile_step applies to optimizer "adam" only, not \'rlekf\'',
        ),
        (
            {'model': {'kind': 'mace'}, 'training': {'compile_step': True}},
            'training.compile_step is implemented for model.kind "gmnn" only, not \'mace\': set it to false',
        ),
    ],
)
def test_problems_are_named(parameters, message):
    with pytest.raises(ParameterError, match='^' + re.escape(message)):
        TrainParameters.from_dict(parameters)
    assert message in train_problem(parameters)


def test_a_valid_dictionary_has_no_problem():
    assert train_problem({'model': {'model_kind': 'gmnn'}, 'optimizer': 'rlekf', 'training': None}) is None


def test_every_setting_has_a_docstring():
    """The docs are generated from the dataclass: each field says what it is (and its unit)."""
    import ast
    import inspect
    import itertools
    import textwrap

    for cls in (TrainParameters, RLEKFParameters, KPUTrainedParameters):
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        settings = [
            (node, after)
            for node, after in itertools.pairwise(body)
            if isinstance(node, ast.AnnAssign) and 'ClassVar' not in ast.unparse(node.annotation)
        ]
        assert len(settings) == len(dataclasses.fields(cls))
        for node, after in settings:
            assert isinstance(after, ast.Expr) and isinstance(after.value.value, str), (cls, node.target.id)
