"""The campaign's convergence rules (plain Python) and the ``campaign_convergence`` calcfunction that records them."""

from __future__ import annotations

import pytest

from aiida_alkit.workflows.convergence import RoundDecision, decide_round

BASE = {'explored': 40, 'n_accurate': 10, 'n_selected': 8, 'round_index': 1, 'stages': 1, 'accurate_fraction': 0.9}


def test_a_round_with_picks_and_few_accurate_candidates_goes_on():
    assert decide_round(**BASE) == RoundDecision(False, False, '', 0.25)


def test_enough_accurate_candidates_end_the_last_stage():
    decision = decide_round(**{**BASE, 'n_accurate': 36})
    assert decision.converged and not decision.stage_done
    assert decision.reason == '90% of the explored candidates are accurate'


def test_nothing_left_to_select_ends_the_last_stage():
    decision = decide_round(**{**BASE, 'n_selected': 0})
    assert (decision.converged, decision.reason) == (True, 'nothing left to select')


@pytest.mark.parametrize('change', [{'n_accurate': 40}, {'n_selected': 0}])
def test_an_earlier_stage_moves_on_instead_of_ending(change):
    """DP-GEN's stages: before the last scheduled stage, a learnt stage is not convergence."""
    decision = decide_round(**{**BASE, **change, 'round_index': 1, 'stages': 3})
    assert (decision.converged, decision.stage_done, decision.reason) == (False, True, '')


def test_the_target_wins_over_the_stage_rule():
    decision = decide_round(
        **{**BASE, 'n_accurate': 40, 'stages': 3, 'test_force_rmse': 0.05, 'target_force_rmse': 0.1}
    )
    assert (decision.converged, decision.stage_done) == (True, False)
    assert decision.reason == 'test-set force RMSE below the target'
    missed = decide_round(**{**BASE, 'test_force_rmse': 0.2, 'target_force_rmse': 0.1})
    assert not missed.converged
    no_test = decide_round(**{**BASE, 'target_force_rmse': 0.1})  # a potential without test errors never meets it
    assert not no_test.converged


def test_an_empty_pool_counts_nothing_as_accurate():
    decision = decide_round(**{**BASE, 'explored': 0, 'n_accurate': 0, 'n_selected': 0})
    assert decision.accurate_fraction == 0.0 and decision.reason == 'nothing left to select'


def test_the_calcfunction_records_the_decision_with_its_inputs(aiida_profile, copper_structures):
    from aiida import orm

    from aiida_alkit.calculations.functions import campaign_convergence
    from aiida_alkit.data.dataset import DatasetData

    pool = DatasetData.from_atoms(copper_structures).store()
    selection = orm.ArrayData()
    for key, value in (('n_accurate', 5), ('n_candidate', 0), ('n_failed', 0), ('n_selected', 0)):
        selection.base.attributes.set(key, value)
    selection.store()
    result = campaign_convergence(selection, pool, orm.Int(2), orm.Int(2), orm.Float(0.9))
    assert result.get_dict() == {
        'converged': True,
        'stage_done': False,
        'reason': '100% of the explored candidates are accurate',
        'accurate_fraction': 1.0,
    }
    creator = result.creator
    assert creator.process_label == 'campaign_convergence'
    assert {creator.inputs.selection.pk, creator.inputs.pool.pk} == {selection.pk, pool.pk}
