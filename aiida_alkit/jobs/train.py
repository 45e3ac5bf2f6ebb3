"""Train a GM-NN potential (or committee): ``python -m aiida_alkit.jobs.train <folder>``.

Reads ``dataset.npz`` (a :class:`~aiida_alkit.io.arrays.ConfigurationArrays`; configurations whose ``info.split``
is ``'valid'`` form the validation set), optionally ``initial.pt`` (a potential to continue from), ``test.npz`` (a
labelled test set, evaluated at the end) and
``parameters.json``::

    {"model": {...GMNNHyperparameters fields...},   # species default: those of the dataset
     "optimizer": "adam" | "rlekf",
     "training": {...TrainingConfig fields...},      # adam
     "rlekf": {...RLEKFConfig fields..., "epochs": 10, "batch_size": 1},
     "committee_size": 1,                            # > 1: a committee of independently initialised models (adam)
     "kpu": {"fraction": 0.5, "max_configurations": 200},   # rlekf: KPU_trained saved with the potential
     "device": "auto" | "cpu" | "cuda",
     "num_threads": null,
     "max_seconds": null}                            # time budget (s); the CalcJob sets 0.9 x its walltime

Writes ``potential.pt`` (one file; RLEKF's P blocks and KPU_trained in its extras), ``metrics.json`` (final
train/validation RMSEs: energy per atom in eV/atom, forces in eV/Å, stress in eV/Å³, and the per-epoch history)
and ``results.json``. A NaN loss is reported as ``status: diverged`` so the restart work chain can lower the
learning rate and try again. A single Adam model stops cleanly when the next epoch would overrun ``max_seconds``
(``status: out_of_walltime``, its ``checkpoint.pt`` kept) so the work chain can resume it in a new job, as pw.x does
with ``max_seconds``.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import configure_threads, progress, run_job

__all__ = ['CHECKPOINT_FILE', 'DATASET_FILE', 'INITIAL_FILE', 'METRICS_FILE', 'POTENTIAL_FILE', 'main', 'split_by_info']

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


def split_by_info(arrays: ConfigurationArrays) -> tuple[ConfigurationArrays, ConfigurationArrays | None]:
    """Training and validation sets from ``info.split`` ('train'/'valid'); all training when there is no split."""
    if 'split' not in arrays.info:
        return arrays, None
    valid = np.flatnonzero(arrays.info['split'] == 'valid')
    train = np.flatnonzero(arrays.info['split'] != 'valid')
    if train.size == 0:
        raise ValueError('the dataset has no training configurations (every info.split is "valid")')
    return arrays.subset(train), (arrays.subset(valid) if valid.size else None)


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
    from aiida_alkit.models.training import GraphDataset, evaluate_errors

    data = GraphDataset.from_configurations(arrays, model.species, model.cutoff, model.device, model.dtype)
    return evaluate_errors(model, data)


def _main(folder: pathlib.Path, parameters: dict[str, Any]) -> dict[str, Any]:

    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.models.training import TrainingConfig, TrainingDivergedError

    threads = configure_threads(parameters)
    if threads is not None:
        progress(f'torch threads: {threads}')
    arrays = ConfigurationArrays.load(folder / DATASET_FILE)
    if arrays.energy is None:
        raise ValueError('the training set has no energy labels')
    train, valid = split_by_info(arrays)
    device = _device(parameters.get('device', 'auto'))
    model_settings = dict(parameters.get('model') or {})
    model_settings.setdefault('species', arrays.species)
    hyperparameters = GMNNHyperparameters.from_dict(model_settings)
    missing = sorted(set(arrays.species) - set(hyperparameters.species))
    if missing:
        raise ValueError(f'the dataset contains {missing}, which the model species {hyperparameters.species} lack')
    optimizer = parameters.get('optimizer', 'adam')
    committee_size = int(parameters.get('committee_size', 1))
    progress(
        f'training {"a committee of " + str(committee_size) if committee_size > 1 else "one"} GM-NN with {optimizer} '
        f'on {len(train)} configurations ({0 if valid is None else len(valid)} for validation), device {device}'
    )
    training = TrainingConfig.from_dict({**(parameters.get('training') or {}), 'callback': None})
    training.callback = progress
    extras: dict[str, Any] = {}
    history: Any
    try:
        if optimizer == 'adam' and committee_size > 1:
            from aiida_alkit.models.committee import Committee, train_committee

            if (folder / INITIAL_FILE).is_file():
                committee = Committee.load(folder / INITIAL_FILE, device=device)
            else:
                committee = Committee(hyperparameters, n_members=committee_size, device=device)
            committee, results = train_committee(committee, train, valid, training)
            committee.save(folder / POTENTIAL_FILE)
            history = [result.to_dict() for result in results]
            return _finish(folder, history, _split_errors(committee, folder, train, valid))
        model = GMNN.load(folder / INITIAL_FILE, device=device) if (folder / INITIAL_FILE).is_file() else None
        epochs_done = 0
        if model is not None:
            from aiida_alkit.models.serialization import load_potential_file

            epochs_done = int(load_potential_file(folder / INITIAL_FILE).extras.get('epochs_done', 0))
        model = model or GMNN(hyperparameters, device=device)
        if optimizer == 'adam':
            from aiida_alkit.models.training import train_adam

            if epochs_done:  # resuming a checkpoint: the remaining epochs, no new energy shift
                training.epochs = max(1, training.epochs - epochs_done)
                training.fit_shift = False
                progress(f'resuming from a checkpoint after {epochs_done} epochs: {training.epochs} epochs to go')

            max_seconds = parameters.get('max_seconds')
            last: dict[str, float] = {}

            def checkpoint(line: str) -> None:
                """Progress line, then the current weights; lines start with 'epoch <n>' (train_adam's format).

                Stops (:class:`WalltimeReached`) when one more epoch, estimated as 1.5x the last one including its
                checkpoint (the first epoch's duration is unknown: it is timed together with the set-up), would end
                after ``max_seconds``.
                """
                progress(line)
                words = line.split()
                if len(words) > 1 and words[0] == 'epoch' and words[1].isdigit() and int(words[1]) > 0:
                    done = epochs_done + int(words[1])
                    model.save(folder / CHECKPOINT_FILE, extras={'epochs_done': done})
                    now = time.monotonic()
                    epoch_s = now - last['time'] if 'time' in last else 0.0
                    last['time'] = now
                    remaining = training.epochs - int(words[1])
                    if max_seconds and remaining > 0 and now - _STARTED + 1.5 * epoch_s > float(max_seconds):
                        raise WalltimeReached(done, now - _STARTED)

            training.callback = checkpoint
            training.log_every = 1
            history = train_adam(model, train, valid, training).to_dict()
        elif optimizer == 'rlekf':
            from aiida_alkit.models.rlekf import RLEKFConfig, kpu_trained, train_rlekf

            settings = dict(parameters.get('rlekf') or {})
            epochs = int(settings.pop('epochs', 10))
            batch_size = int(settings.pop('batch_size', 1))
            result = train_rlekf(
                model,
                train,
                valid,
                RLEKFConfig(**settings),
                epochs=epochs,
                batch_size=batch_size,
                callback=lambda epoch, metrics, _: progress(f'epoch {epoch}: {json.dumps(metrics)}'),
            )
            history = result.as_dict()
            extras['rlekf'] = result.optimizer.state_dict()
            kpu = parameters.get('kpu') or {}
            extras['kpu_trained'] = float(
                kpu_trained(
                    model,
                    result.optimizer,
                    train,
                    fraction=float(kpu.get('fraction', 0.5)),
                    max_configurations=kpu.get('max_configurations', 200),
                )
            )
        else:
            raise ValueError(f'unknown optimizer {optimizer!r}: use "adam" or "rlekf"')
    except TrainingDivergedError as exc:
        return {'status': 'diverged', 'error_message': str(exc), 'epoch': exc.epoch}
    except WalltimeReached as exc:
        progress(str(exc))
        return {'status': 'out_of_walltime', 'error_message': str(exc), 'epochs_done': exc.epochs_done}
    model.save(folder / POTENTIAL_FILE, extras=extras)
    return _finish(folder, history, _split_errors(model, folder, train, valid), extras)


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
