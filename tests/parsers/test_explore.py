"""`alkit.explore` parser on the stored outputs of real explore jobs (``fixtures/explore/``), without running one."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.plugins import CalculationFactory

from .conftest import rounded
from .generate_fixtures import EXPLORE

ENTRY_POINT = 'alkit.explore'
EXIT_CODES = CalculationFactory(ENTRY_POINT).exit_codes


def _parameters(case: str) -> dict[str, orm.Data]:
    return {'parameters': orm.Dict({'num_threads': 1, 'device': 'cpu', **EXPLORE[case]})}


def test_committee_biased(generate_calc_job_node, parse, data_regression):
    """Two walkers of committee-biased MD for 12 steps, sampled every 4: pool, scores (with calibration), stops."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'committee', _parameters('committee'))
    results, calcfunction = parse(node, temporary)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert set(results) == {'pool', 'scores', 'stops'}
    pool, scores, stops = results['pool'], results['scores'], results['stops'].get_dict()
    info = pool.arrays.info
    assert len(pool) == 6  # steps 4, 8, 12 of both walkers
    assert sorted(zip(info['walker'].tolist(), info['step'].tolist(), strict=True)) == [
        (walker, step) for walker in (0, 1) for step in (4, 8, 12)
    ]
    assert pool.species == ['Cu']
    assert scores.get_array('pool_features').shape == (6, 16)  # features.dim 16
    assert scores.get_array('train_features').shape == (8, 16)  # the 8 training configurations
    assert np.all(scores.get_array('calibrated_uncertainty') > 0)
    assert np.all(scores.get_array('max_force_deviation') >= 0)
    calibration = scores.base.attributes.get('calibration')
    assert calibration['rule'] == 'atoms' and calibration['alpha'] == 0.1
    assert stops == {
        'walkers': {str(w): {'reason': 'max_steps', 'step': 12} for w in (0, 1)},
        'counts': {'max_steps': 2},
    }
    data_regression.check(
        {
            'pool': rounded(pool.base.attributes.all),
            'pool_energy': rounded(info['model_energy'].tolist()),
            'scores': {name: list(scores.get_shape(name)) for name in sorted(scores.get_arraynames())},
            'calibrated_uncertainty': rounded(scores.get_array('calibrated_uncertainty').tolist()),
            'max_force_deviation': rounded(scores.get_array('max_force_deviation').tolist()),
            'calibration': rounded(calibration),
            'stops': stops,
        }
    )


def test_empty_pool(generate_calc_job_node, parse):
    """10 fs steps with a near-1 distance limit stopped both walkers before any frame was sampled: 410, and the
    stops output (why each walker stopped) is still attached."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'empty', _parameters('empty'))
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_EMPTY_POOL.status
    assert set(results) == {'stops'}
    assert results['stops']['counts'] == {'min_distance': 2}
    assert {record['reason'] for record in results['stops']['walkers'].values()} == {'min_distance'}


def test_pool_missing(generate_calc_job_node, parse):
    """The ``committee`` outputs with pool.npz deleted on purpose (status ok, no pool): 302, stops kept."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'committee', remove=['pool.npz'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_POOL_MISSING.status
    assert set(results) == {'stops'}


def test_scores_missing(generate_calc_job_node, parse):
    """The ``committee`` outputs with scores.npz deleted on purpose: 302 as well, no pool without its scores."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'committee', remove=['scores.npz'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_POOL_MISSING.status
    assert 'pool' not in results


def test_no_results_file(generate_calc_job_node, parse):
    """The ``committee`` outputs with results.json deleted on purpose (a crashed job): 300, nothing parsed."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'committee', remove=['results.json'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_NO_RESULTS_FILE.status
    assert results == {}
