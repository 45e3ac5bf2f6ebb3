"""TrainWorkChain recovers from a diverged loss and from running out of walltime; the train job resumes from its
checkpoint."""

from __future__ import annotations

import itertools
import json

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase.build import bulk

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs import train as train_job
from aiida_alkit.models.serialization import load_potential_file

from ..calculations.test_train import TINY, training_set  # noqa: F401  (fixture)
from ..conftest import label_with_emt

TrainWorkChain = WorkflowFactory('alkit.train')


@pytest.mark.faults
def test_diverged_training_is_retried_with_lower_learning_rates(alkit_python_code, training_set):  # noqa: F811
    rates = {'nn': 1e10, 'representation': 1e10, 'shift': 1e10, 'scale': 1e10}
    parameters = {
        'model': TINY,
        'num_threads': 1,
        'device': 'cpu',
        'training': {'epochs': 3, 'batch_size': 4, 'learning_rates': rates},
    }
    results, node = run_get_node(
        TrainWorkChain,
        train={
            'code': alkit_python_code,
            'dataset': training_set,
            'parameters': orm.Dict(parameters),
            'metadata': {'options': {'max_wallclock_seconds': 600}},
        },
        lr_reduction=orm.Float(1e-12),
    )
    assert node.is_finished_ok, node.exit_message
    calls = sorted(node.called, key=lambda n: n.ctime)
    assert calls[0].exit_status == 410  # diverged
    assert calls[-1].exit_status == 0
    retried = calls[-1].inputs.parameters['training']['learning_rates']
    assert abs(retried['nn'] - 1e-2) < 1e-12
    assert results['potential'].metrics['valid_forces_rmse_ev_per_ang'] > 0


def test_out_of_walltime_resumes_from_the_checkpoint(alkit_python_code, training_set):  # noqa: F811
    """A job whose time budget is already spent stops cleanly (411) after its first epoch, whose length it cannot
    know beforehand; the handler resumes training from the checkpoint in a new job each time, and the epochs of
    the jobs add up to the requested number. The budget is given explicitly (``max_seconds``, a few microseconds)
    so that the number of jobs does not depend on how fast this machine trains: with the default budget (0.9 x the
    walltime, checked in tests/calculations/test_train.py) a quiet machine once fitted all 1000 epochs of an
    earlier version of this test in 13.5 s. SLURM killing a job at its time limit is tested in test_slurm.py."""
    epochs = 3
    parameters = {
        'model': TINY,
        'num_threads': 1,
        'device': 'cpu',
        'max_seconds': 1e-6,
        'training': {'epochs': epochs, 'batch_size': 4},
    }
    results, node = run_get_node(
        TrainWorkChain,
        train={
            'code': alkit_python_code,
            'dataset': training_set,
            'parameters': orm.Dict(parameters),
            'metadata': {'options': {'max_wallclock_seconds': 600}},
        },
        max_iterations=orm.Int(5),
    )
    assert node.is_finished_ok, node.exit_message
    calls = sorted(node.called, key=lambda n: n.ctime)
    # one epoch a job: the last job starts with 1 epoch left, so the budget does not stop it
    assert [call.exit_status for call in calls] == [411] * (epochs - 1) + [0]
    for previous, call in itertools.pairwise(calls):
        assert call.inputs.parent_folder.uuid == previous.outputs.remote_folder.uuid
    assert 'resuming from its checkpoint' in ' '.join(log.message for log in _reports(node))
    done = [
        json.loads(call.outputs.retrieved.base.repository.get_object_content('results.json'))['epochs_done']
        for call in calls[:-1]
    ]
    assert done == list(range(1, epochs))
    assert results['metrics']['history']['epochs_run'] == 1
    assert results['potential'].metrics['valid_forces_rmse_ev_per_ang'] > 0


def _reports(node):
    from aiida.orm import Log

    return Log.collection.get_logs_for(node)


def test_job_writes_checkpoints_and_resumes(tmp_path):
    structures = [label_with_emt(bulk('Cu', 'fcc', a=3.6, cubic=True).copy()) for _ in range(2)]
    for seed, atoms in enumerate(structures):
        atoms.positions += 0.05 * seed
    ConfigurationArrays.from_atoms([label_with_emt(a) for a in structures]).save(tmp_path / train_job.DATASET_FILE)
    parameters = {'model': TINY, 'num_threads': 1, 'device': 'cpu', 'training': {'epochs': 3, 'valid_fraction': 0}}
    (tmp_path / 'parameters.json').write_text(json.dumps(parameters))
    assert train_job.main([str(tmp_path)]) == 0
    checkpoint = load_potential_file(tmp_path / train_job.CHECKPOINT_FILE)
    assert checkpoint.extras['epochs_done'] == 3
    # an interrupted job's checkpoint becomes the next job's initial.pt: only the remaining epochs run
    parameters['training']['epochs'] = 5
    (tmp_path / 'parameters.json').write_text(json.dumps(parameters))
    (tmp_path / train_job.CHECKPOINT_FILE).rename(tmp_path / train_job.INITIAL_FILE)
    assert train_job.main([str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / train_job.METRICS_FILE).read_text())
    assert [entry['epoch'] for entry in metrics['history']['history']] == [0, 1, 2]
    assert load_potential_file(tmp_path / train_job.CHECKPOINT_FILE).extras['epochs_done'] == 5
