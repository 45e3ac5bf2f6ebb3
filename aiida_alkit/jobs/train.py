"""Train a potential of any model kind (or a committee): ``python -m aiida_alkit.jobs.train <folder>``.

Reads ``dataset.npz`` (a :class:`~aiida_alkit.io.arrays.ConfigurationArrays`; configurations whose ``info.split``
is ``'valid'`` form the validation set), optionally ``initial.pt`` (a potential to continue from), ``test.npz`` (a
labelled test set, evaluated at the end) and ``parameters.json``, for example::

    {"model": {"hidden_widths": [64, 64]},   # species default: those of the dataset
     "optimizer": "adam",
     "training": {"epochs": 300, "batch_size": 16},
     "committee_size": 1,
     "device": "auto"}

Every key, its default, unit and allowed values: :class:`~aiida_alkit.jobs.train_parameters.TrainParameters`.

Writes ``potential.pt`` (one file; RLEKF's P blocks and KPU_trained in its extras), ``metrics.json`` (final
train/validation RMSEs: energy per atom in eV/atom, forces in eV/Å, stress in eV/Å³, and the per-epoch history of
:meth:`~aiida_alkit.models.training.TrainingResult.to_dict`, the same for every optimizer and for committees)
and ``results.json``. A NaN loss is reported as ``status: diverged`` so the restart work chain can lower the
learning rate and try again. A single Adam model stops cleanly when the next epoch would overrun ``max_seconds``
(``status: out_of_walltime``, its ``checkpoint.pt`` kept) so the work chain can resume it in a new job, as pw.x does
with ``max_seconds``.
"""

from __future__ import annotations

import json
import pathlib
import time
from dataclasses import replace
from typing import Any

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import configure_threads, progress, run_job

__all__ = ['CHECKPOINT_FILE', 'DATASET_FILE', 'INITIAL_FILE', 'METRICS_FILE', 'POTENTIAL_FILE', 'main']

DATASET_FILE = 'dataset.npz'
INITIAL_FILE = 'initial.pt'
POTENTIAL_FILE = 'potential.pt'
TEST_FILE = 'test.npz'
#: Written after every Adam epoch of a single model (weights + ``epochs_done``); a job restarted with this file as
#: its ``initial.pt`` continues with the remaining epochs (see ``TrainWorkChain``'s walltime handler).
CHECKPOINT_FILE = 'checkpoint.pt'
METRICS_FILE = 'metrics.json'
#: When this module was imported, i.e. about when the job's Python process started (the time budget counts from here).
_STARTED = time.monotonic()


class WalltimeReached(Exception):
    """Raised after a checkpoint when another epoch would not fit in the job's time budget."""

    def __init__(self, epochs_done: int, elapsed_s: float):
        super().__init__(f'stopped after {epochs_done} epochs and {elapsed_s:.0f} s to stay within the time budget')
        self.epochs_done = epochs_done


def _device(name: str) -> str:
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device "cuda" requested but torch sees no GPU')
    return name


def _errors(model, arrays: ConfigurationArrays | None) -> dict[str, Any] | None:
    if arrays is None:
        return None
    from aiida_alkit.models.training import evaluate_errors

    return evaluate_errors(model, arrays)


def _load_model(folder: pathlib.Path, hyperparameters, committee_size: int, device: str) -> tuple[Any, int]:
    """The model to train (``initial.pt`` when given, else a new one) and the epochs its checkpoint has done."""
    from aiida_alkit.models.potential import build_potential, load_potential
    from aiida_alkit.models.serialization import load_potential_file

    initial = folder / INITIAL_FILE
    if committee_size > 1:
        from aiida_alkit.models.committee import Committee

        if initial.is_file():
            return load_potential(initial, device=device), 0
        return Committee(hyperparameters, n_members=committee_size, device=device), 0
    if not initial.is_file():
        return build_potential(hyperparameters, device=device), 0
    return load_potential(initial, device=device), int(load_potential_file(initial).extras.get('epochs_done', 0))


def _checkpoint_hook(folder: pathlib.Path, model, epochs_done: int, epochs: int, max_seconds: float | None):
    """``checkpoint(epoch, state)`` of a single model: the current weights to ``checkpoint.pt`` with the epochs
    done so far (``epochs_done`` of an earlier job plus ``epoch``), then :class:`WalltimeReached` when one more
    epoch, estimated as 1.5x the last one including its checkpoint (the first epoch's duration is unknown: it is
    timed together with the set-up), would end after ``max_seconds``."""
    from aiida_alkit.models.serialization import save_potential_file

    hyperparameters = model.hyperparameters.to_dict()
    last: dict[str, float] = {}

    def checkpoint(epoch: int, state: dict[str, Any]) -> None:
        done = epochs_done + epoch
        save_potential_file(folder / CHECKPOINT_FILE, state['model'], hyperparameters, {'epochs_done': done})
        now = time.monotonic()
        epoch_s = now - last['time'] if 'time' in last else 0.0
        last['time'] = now
        if max_seconds and epoch < epochs and now - _STARTED + 1.5 * epoch_s > float(max_seconds):
            raise WalltimeReached(done, now - _STARTED)

    return checkpoint


def _main(folder: pathlib.Path, parameters: dict[str, Any]) -> dict[str, Any]:
    from aiida_alkit.jobs.train_parameters import TrainParameters
    from aiida_alkit.models.rlekf import kpu_trained
    from aiida_alkit.models.training import TrainingDivergedError, log_progress, split_train_valid, train

    settings = TrainParameters.from_dict(parameters, runtime=True)
    threads = configure_threads(parameters)
    if threads is not None:
        progress(f'torch threads: {threads}')
    arrays = ConfigurationArrays.load(folder / DATASET_FILE)
    if arrays.energy is None:
        raise ValueError('the training set has no energy labels')
    train_set, valid_set = split_train_valid(arrays, tag='split')
    device = _device(settings.device)
    from aiida_alkit.models.potential import MODEL_KINDS

    hyperparameters = settings.hyperparameters(arrays.species)
    model_class = MODEL_KINDS[hyperparameters.model_kind].model_class()
    hyperparameters = model_class.complete_hyperparameters(hyperparameters, train_set)
    missing = sorted(set(arrays.species) - set(hyperparameters.species))
    if missing:
        raise ValueError(f'the dataset contains {missing}, which the model species {hyperparameters.species} lack')
    optimizer, committee_size = settings.optimizer, settings.committee_size
    progress(
        f'training {"a committee of " + str(committee_size) if committee_size > 1 else "one"} '
        f'{hyperparameters.model_kind} model{"s" if committee_size > 1 else ""} with {optimizer} '
        f'on {len(train_set)} configurations ({0 if valid_set is None else len(valid_set)} for validation), '
        f'device {device}'
    )
    training = settings.training_config()  # RLEKF: no validation set is drawn (only info.split makes one)
    rlekf = settings.rlekf.config if optimizer == 'rlekf' else None
    model, epochs_done = _load_model(folder, hyperparameters, committee_size, device)
    checkpoint = None
    if optimizer == 'adam' and committee_size == 1:  # only these resume (TrainWorkChain's walltime handler)
        if epochs_done:  # resuming a checkpoint: the remaining epochs, no new energy shift
            training = replace(training, epochs=max(1, training.epochs - epochs_done), fit_shift=False)
            progress(f'resuming from a checkpoint after {epochs_done} epochs: {training.epochs} epochs to go')
        checkpoint = _checkpoint_hook(folder, model, epochs_done, training.epochs, settings.max_seconds)
    try:
        result = train(
            model,
            train_set,
            valid_set,
            training,
            optimizer=optimizer,
            rlekf=rlekf,
            callback=log_progress(progress, training.log_every),
            checkpoint=checkpoint,
        )
    except TrainingDivergedError as exc:
        return {'status': 'diverged', 'error_message': str(exc), 'epoch': exc.epoch}
    except WalltimeReached as exc:
        progress(str(exc))
        return {'status': 'out_of_walltime', 'error_message': str(exc), 'epochs_done': exc.epochs_done}
    extras: dict[str, Any] = {}
    if result.rlekf is not None:
        extras['rlekf'] = result.rlekf.state_dict()
        kpu = settings.kpu
        extras['kpu_trained'] = float(
            kpu_trained(
                model, result.rlekf, train_set, fraction=kpu.fraction, max_configurations=kpu.max_configurations
            )
        )
    model.save(folder / POTENTIAL_FILE, extras=extras or None)
    return _finish(folder, result.to_dict(), _split_errors(model, folder, train_set, valid_set), extras)


def _split_errors(model, folder: pathlib.Path, train, valid) -> dict[str, Any]:
    """Errors of a model (or of a committee's mean prediction) on the training, validation and test sets."""
    test = ConfigurationArrays.load(folder / TEST_FILE) if (folder / TEST_FILE).is_file() else None
    return {'train': _errors(model, train), 'valid': _errors(model, valid), 'test': _errors(model, test)}


def _finish(folder: pathlib.Path, history: Any, errors: dict[str, Any], extras: dict[str, Any] | None = None):
    metrics = {'errors': errors, 'history': history}
    if extras and 'kpu_trained' in extras:
        metrics['kpu_trained'] = extras['kpu_trained']
    (folder / METRICS_FILE).write_text(json.dumps(metrics, default=float, indent=1))
    progress(f'final errors: {json.dumps(errors, default=float)}')
    return {'status': 'ok'}


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == '__main__':
    raise SystemExit(main())
