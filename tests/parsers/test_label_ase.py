"""`alkit.label.ase` parser on the stored outputs of real EMT label jobs (``fixtures/label_ase/``)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.plugins import CalculationFactory

from .conftest import rounded

ENTRY_POINT = 'alkit.label.ase'
EXIT_CODES = CalculationFactory(ENTRY_POINT).exit_codes


def _inputs() -> dict[str, orm.Data]:
    return {'calculator': orm.Str('ase.calculators.emt.EMT')}


def test_partial(generate_calc_job_node, parse, data_regression):
    """Four Cu cells, the third with two atoms 0.9 Å apart: three labelled, one failure recorded, exit 0."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'partial', _inputs())
    results, calcfunction = parse(node, temporary)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert set(results) == {'labelled', 'failures'}
    labelled, failures = results['labelled'], results['failures'].get_dict()
    assert len(labelled) == 3
    assert labelled.labels == ['energy', 'forces', 'stress']
    assert labelled.arrays.info['source_index'].tolist() == [0, 1, 3]  # the failed input index 2 is left out
    assert failures['n_input'] == 4 and failures['n_labelled'] == 3 and failures['n_failed'] == 1
    assert failures['failures'][0]['index'] == 2
    assert 'exceeds 20.0 eV/Å' in failures['failures'][0]['reason']
    arrays = labelled.arrays
    assert np.abs(arrays.forces).max() < 20.0
    data_regression.check(
        {
            'labelled': rounded(labelled.base.attributes.all),
            'energy': rounded(arrays.energy.tolist()),
            'max_force': rounded(float(np.abs(arrays.forces).max())),
            'stress_trace': rounded(np.trace(arrays.stress, axis1=1, axis2=2).tolist()),
            'failures': failures,
        }
    )


def test_all_failed(generate_calc_job_node, parse):
    """Two cells with atoms 0.9 Å apart: nothing labelled (410), but the failure record is still an output."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'all_failed', _inputs())
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_ALL_LABELS_FAILED.status
    assert '2 failures' in calcfunction.exit_message
    assert set(results) == {'failures'}
    assert [record['index'] for record in results['failures']['failures']] == [0, 1]


def test_labels_file_missing(generate_calc_job_node, parse):
    """The ``partial`` outputs with labelled.npz deleted on purpose (3 labels reported, no file): 302."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'partial', remove=['labelled.npz'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_LABELS_FILE_MISSING.status
    assert set(results) == {'failures'}


def test_truncated_results_file(generate_calc_job_node, parse):
    """The ``partial`` outputs with results.json cut to 30 bytes on purpose: 301, no output."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'partial', truncate={'results.json': 30})
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_INVALID_RESULTS_FILE.status
    assert results == {}
