"""`alkit.train` parser on the stored outputs of real train jobs (``fixtures/train/``), without running a job."""

from __future__ import annotations

from aiida import orm
from aiida.plugins import CalculationFactory

from .conftest import rounded
from .generate_fixtures import TRAIN

ENTRY_POINT = 'alkit.train'
EXIT_CODES = CalculationFactory(ENTRY_POINT).exit_codes


def _parameters(case: str) -> dict[str, orm.Data]:
    return {'parameters': orm.Dict({'num_threads': 1, 'device': 'cpu', **TRAIN[case]})}


def test_adam(generate_calc_job_node, parse, data_regression):
    """Three Adam epochs of the tiny GM-NN: a PotentialData with metric attributes and the metrics Dict."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'adam', _parameters('adam'))
    results, calcfunction = parse(node, temporary)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert set(results) == {'potential', 'metrics'}
    potential, metrics = results['potential'], results['metrics'].get_dict()
    assert potential.model_kind == 'gmnn'
    assert potential.species == ['Cu']
    assert potential.hyperparameters['hidden_widths'] == [8, 8]
    assert 'kpu_trained' not in potential.base.attributes.keys()  # Adam: no KPU
    assert potential.metrics['valid_forces_rmse_ev_per_ang'] == metrics['errors']['valid']['forces_rmse']
    assert metrics['errors']['test'] is None  # no test set: the flat metrics have no test_* entry
    assert not any(key.startswith('test_') for key in potential.metrics)
    assert [row['epoch'] for row in metrics['history']['history']] == [0, 1, 2, 3]  # 0: before training
    attributes = potential.base.attributes.all
    data_regression.check(
        {
            'potential': rounded({key: attributes[key] for key in sorted(attributes) if key != 'hyperparameters'}),
            'hyperparameters': rounded(potential.hyperparameters),
            'metrics_errors': rounded(metrics['errors']),
            'history_keys': sorted(metrics['history']),
            'last_epoch': rounded(metrics['history']['history'][-1]),
        }
    )


def test_diverged(generate_calc_job_node, parse):
    """Learning rates of 1e12: the job recorded ``status: diverged``; no potential, exit code 410."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'diverged', _parameters('diverged'))
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_TRAINING_DIVERGED.status
    assert 'the loss is nan' in calcfunction.exit_message
    assert results == {}


def test_out_of_walltime(generate_calc_job_node, parse):
    """``max_seconds`` 0.5 for 1000 epochs: the job stopped after one epoch (411), a restart is possible."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'out_of_walltime', _parameters('out_of_walltime'))
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_OUT_OF_WALLTIME.status
    assert 'stopped after 1 epochs' in calcfunction.exit_message
    assert results == {}


def test_no_results_file(generate_calc_job_node, parse):
    """The ``adam`` outputs with results.json deleted on purpose (a crashed or killed job): 300."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'adam', remove=['results.json'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_NO_RESULTS_FILE.status
    assert results == {}


def test_truncated_results_file(generate_calc_job_node, parse):
    """The ``adam`` outputs with results.json cut to its first 20 bytes on purpose: 301, naming the JSON error."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'adam', truncate={'results.json': 20})
    _, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_INVALID_RESULTS_FILE.status
    assert 'could not be read' in calcfunction.exit_message


def test_potential_missing(generate_calc_job_node, parse):
    """The ``adam`` outputs with potential.pt deleted on purpose (status ok, but no potential): 302."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'adam', remove=['potential.pt'])
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_POTENTIAL_MISSING.status
    assert results == {}


def test_truncated_potential(generate_calc_job_node, parse):
    """The ``adam`` outputs with potential.pt cut to 2000 of its bytes on purpose: 400, naming the corrupt file."""
    node, temporary = generate_calc_job_node(ENTRY_POINT, 'adam', truncate={'potential.pt': 2000})
    results, calcfunction = parse(node, temporary)
    assert calcfunction.exit_status == EXIT_CODES.ERROR_JOB_FAILED.status
    assert 'corrupt or truncated' in calcfunction.exit_message
    assert 'potential' not in results
