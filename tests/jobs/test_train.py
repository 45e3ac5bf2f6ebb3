"""The train job: one history format for every optimizer, checkpoints from the trainer's hook, the walltime stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs import train as train_job
from aiida_alkit.models.gmnn import GMNN
from aiida_alkit.models.serialization import load_potential_file

from ..conftest import label_with_emt

TINY = {'species': ['Cu'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]}


def _job(folder, parameters: dict, initial=None) -> dict:
    """Run the job in ``folder`` on 6 rattled Cu cells (2 tagged 'valid'); its results.json."""
    structures = []
    for seed in range(6):
        atoms = bulk('Cu', 'fcc', a=3.6 + 0.02 * (seed % 3), cubic=True)
        atoms.rattle(0.08, seed=seed)
        structures.append(label_with_emt(atoms))
    arrays = ConfigurationArrays.from_atoms(structures)
    arrays.info['split'] = np.array(['train', 'valid', 'train', 'train', 'valid', 'train'])
    arrays.save(folder / train_job.DATASET_FILE)
    if initial is not None:
        (folder / train_job.INITIAL_FILE).write_bytes(initial.read_bytes())
    (folder / 'parameters.json').write_text(
        json.dumps({'model': TINY, 'num_threads': 1, 'device': 'cpu', **parameters})
    )
    train_job.main([str(folder)])
    return json.loads((folder / 'results.json').read_text())


@pytest.mark.parametrize(
    ('parameters', 'members'),
    [
        ({'training': {'epochs': 2, 'batch_size': 2}}, [None]),
        ({'optimizer': 'rlekf', 'rlekf': {'epochs': 2, 'block_size': 64, 'p0': 100.0}}, [None]),
        ({'committee_size': 2, 'training': {'epochs': 2, 'batch_size': 2}}, [0, 1]),
    ],
)
def test_every_optimizer_writes_one_history_format(tmp_path, capsys, parameters, members):
    assert _job(tmp_path, parameters)['status'] == 'ok'
    metrics = json.loads((tmp_path / train_job.METRICS_FILE).read_text())
    history = metrics['history']
    assert {'history', 'best_epoch', 'epochs_run', 'n_train', 'n_valid', 'optimizer', 'members'} <= set(history)
    assert (history['n_train'], history['n_valid'], history['epochs_run']) == (4, 2, 2)
    assert [(entry['member'], entry['epoch']) for entry in history['history']] == [
        (member, epoch) for member in members for epoch in (0, 1, 2)
    ]
    assert all(entry['valid_forces_rmse'] > 0 for entry in history['history'])
    assert metrics['errors']['valid']['forces_rmse'] > 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ' epoch ' in f' {line}']
    assert len(lines) == 2 * len(members)  # one progress line per epoch (and member)
    # only a single Adam model writes checkpoints (TrainWorkChain resumes those alone)
    assert (tmp_path / train_job.CHECKPOINT_FILE).is_file() == (
        parameters.get('optimizer') is None and members == [None]
    )


def test_walltime_stop_keeps_the_checkpoint_of_the_last_epoch(tmp_path):
    """A time budget already spent: the job stops after its first epoch (whose duration it cannot know before),
    with that epoch's weights in checkpoint.pt; resuming from it runs the remaining epochs."""
    parameters = {'training': {'epochs': 4, 'batch_size': 2}, 'max_seconds': 1e-6}
    results = _job(tmp_path, parameters)
    assert (results['status'], results['epochs_done']) == ('out_of_walltime', 1)
    checkpoint = load_potential_file(tmp_path / train_job.CHECKPOINT_FILE)
    assert checkpoint.extras['epochs_done'] == 1
    assert not (tmp_path / train_job.POTENTIAL_FILE).exists()
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    del parameters['max_seconds']
    assert _job(resumed, parameters, initial=tmp_path / train_job.CHECKPOINT_FILE)['status'] == 'ok'
    history = json.loads((resumed / train_job.METRICS_FILE).read_text())['history']
    assert [entry['epoch'] for entry in history['history']] == [0, 1, 2, 3]
    assert load_potential_file(resumed / train_job.CHECKPOINT_FILE).extras['epochs_done'] == 4
    assert GMNN.load(resumed / train_job.POTENTIAL_FILE).hyperparameters.hidden_widths == (8, 8)
