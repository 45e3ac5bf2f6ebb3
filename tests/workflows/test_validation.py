"""The campaign's input checks in plain Python (no AiiDA node): each returns the exit code's name and its values.

The same checks run through the work chain in ``test_bad_input.py`` (exit codes and messages of a real campaign)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.workflows.validation import (
    CampaignInputs,
    DatasetContent,
    Problem,
    campaign_problem,
    max_pool_size,
    round_explore_parameters,
    schedule_length,
)


@pytest.fixture
def valid(copper_structures):
    """Inputs of a small campaign that pass every check."""
    content = DatasetContent.of(ConfigurationArrays.from_atoms(copper_structures))
    return CampaignInputs(
        strategy='gradient',
        settings={'max_rounds': 3, 'accurate_fraction': 0.9},
        schedule={'temperatures': [300, 600]},
        train={},
        explore={'steps': 20, 'walkers': 2, 'sample_every': 5},
        select={'method': 'maxdet', 'batch_size': 4},
        seed=0,
        datasets={'initial_dataset': content},
    )


def _with(inputs: CampaignInputs, **changes) -> CampaignInputs:
    return dataclasses.replace(inputs, **changes)


def test_valid_inputs_have_no_problem(valid):
    assert campaign_problem(valid) is None


@pytest.mark.parametrize(
    ('changes', 'exit_code', 'values'),
    [
        ({'strategy': 'greedy'}, 'ERROR_UNKNOWN_STRATEGY', {'strategy': 'greedy'}),
        ({'settings': {'max_rounds': 3, 'accurate_fraction': 1.5}}, 'ERROR_INVALID_CAMPAIGN_SETTING',
         {'key': 'accurate_fraction', 'value': 1.5}),
        ({'select': {'method': 'best'}}, 'ERROR_UNKNOWN_SELECTION_METHOD', {'method': 'best'}),
        ({'schedule': {'temperatures': [300, -5]}}, 'ERROR_INVALID_MD_SETTING',
         {'key': 'temperature_K', 'value': -5, 'where': 'round 2 of schedule.temperatures'}),
        ({'schedule': {'temps': [300]}}, 'ERROR_INVALID_MD_SETTING', {'key': 'schedule', 'value': ['temps']}),
        ({'explore': {'steps': 20, 'walkers': 2, 'sample_every': 5, 'pressure_GPa': 1e5}}, 'ERROR_INVALID_MD_SETTING',
         {'key': 'pressure_GPa', 'where': 'explore.parameters'}),
        ({'select': {'method': 'maxdet', 'batch_size': 11}}, 'ERROR_INVALID_BATCH_SIZE', {'batch_size': 11}),
        ({'explore': {'steps': 20, 'walkers': 2, 'bias': {'kind': 'committee'}}}, 'ERROR_INVALID_EXPLORE_PARAMETERS',
         {'round': 1}),
    ],
)  # fmt: skip
def test_settings_problems_name_the_setting(valid, changes, exit_code, values):
    problem = campaign_problem(_with(valid, **changes))
    assert problem is not None and problem.exit_code == exit_code
    assert {key: problem.values[key] for key in values} == values


def test_the_batch_limit_is_the_largest_pool_of_any_round(valid):
    """2 walkers x (20 // 5 + 1) frames = 10 candidates at most (jobs/explore.py)."""
    assert max_pool_size(2, 20, 5) == 10
    assert campaign_problem(_with(valid, select={'method': 'maxdet', 'batch_size': 10})) is None
    problem = campaign_problem(_with(valid, select={'method': 'maxdet', 'batch_size': 11}))
    assert 'at most 10' in problem.values['reason']


def test_data_problems_come_after_the_settings(valid, copper_structures):
    unlabelled = ConfigurationArrays.from_atoms([atoms.copy() for atoms in copper_structures])
    empty = DatasetContent(0, (), (), lambda: pytest.fail('an empty set is never loaded'))
    assert campaign_problem(_with(valid, datasets={'initial_dataset': empty})) == Problem(
        'ERROR_EMPTY_DATASET', {'name': 'initial_dataset'}
    )
    problem = campaign_problem(_with(valid, datasets={'initial_dataset': DatasetContent.of(unlabelled)}))
    assert problem.exit_code == 'ERROR_MISSING_LABELS' and problem.values['missing'] == 'energy and forces'
    both = _with(valid, strategy='greedy', datasets={'initial_dataset': empty})
    assert campaign_problem(both).exit_code == 'ERROR_UNKNOWN_STRATEGY'


def test_species_and_pseudos_cover_every_set(valid):
    problem = campaign_problem(_with(valid, train={'model': {'species': ['Al']}}))
    assert problem.exit_code == 'ERROR_SPECIES_NOT_COVERED' and problem.values['missing'] == ['Cu']
    potential = (7, {'model_kind': 'gmnn', 'species': ['Al']})
    problem = campaign_problem(_with(valid, potential=potential))
    assert problem.values['source'] == 'initial_potential PotentialData<7>'
    committee = (7, {'model_kind': 'gmnn-committee', 'species': ['Cu']})
    assert campaign_problem(_with(valid, potential=committee)).exit_code == 'ERROR_INVALID_POTENTIAL'
    problem = campaign_problem(_with(valid, pseudo_elements=('SSSP', ['Al', 'O'])))
    assert problem == Problem(
        'ERROR_PSEUDOS_NOT_COVERED', {'family': 'SSSP', 'missing': ['Cu'], 'name': 'initial_dataset'}
    )


def test_a_problem_found_while_gathering_is_reported_in_its_turn(valid):
    """A potential that does not load is reported after the settings were found fine, not before."""
    unreadable = Problem('ERROR_INVALID_POTENTIAL', {'pk': 7, 'message': 'truncated file'})
    assert campaign_problem(_with(valid, potential=unreadable)) is unreadable
    assert campaign_problem(_with(valid, potential=unreadable, strategy='x')).exit_code == 'ERROR_UNKNOWN_STRATEGY'


def test_geometry_problems(valid, copper_structures):
    squeezed = [atoms.copy() for atoms in copper_structures]
    squeezed[2].set_cell(squeezed[2].cell[:] * 0.1, scale_atoms=True)
    problem = campaign_problem(
        _with(valid, datasets={'seeds': DatasetContent.of(ConfigurationArrays.from_atoms(squeezed, validate=False))})
    )
    assert problem.exit_code == 'ERROR_UNPHYSICAL_DENSITY' and problem.values['index'] == 2
    overlapping = [atoms.copy() for atoms in copper_structures]
    overlapping[1].positions[1] = overlapping[1].positions[0] + [0.1, 0.0, 0.0]
    problem = campaign_problem(
        _with(valid, datasets={'seeds': DatasetContent.of(ConfigurationArrays.from_atoms(overlapping, validate=False))})
    )
    assert problem.exit_code == 'ERROR_OVERLAPPING_ATOMS' and problem.values['index'] == 1
    assert problem.values['distance'] == pytest.approx(0.1, abs=1e-6)


def test_round_explore_parameters_follow_the_schedule():
    schedule = {'temperatures': [300, 600], 'walkers': [2]}
    assert schedule_length(schedule) == 2 and schedule_length({}) == 1
    third = round_explore_parameters({'steps': 50}, schedule, 3, seed=4)
    assert (third['temperature_K'], third['walkers'], third['steps'], third['seed']) == (600.0, 2, 50, 4003)
    assert third['pressure_GPa'] is None
    assert np.isclose(round_explore_parameters({}, {}, 1, 0)['temperature_K'], 300.0)
