"""A whole train job at production size on every available device: ``python -m aiida_alkit.jobs.train`` as a
CalcJob runs it, timed as a process (start-up, neighbour lists, training, evaluation and the potential file included).

Production size: 1000 rattled and strained Cu-32 configurations with EMT labels (energy, forces, stress; 10 % of them
the validation set), the default model (``GMNNHyperparameters(species=['Cu'])``: 910-512-512-1, float32), Adam,
batch 32, 50 epochs. ``--quick``: 40 configurations, a 32x32 model, 3 epochs (seconds). Each device runs the same
job in a fresh folder; the CPU job uses ``--cpu-threads`` torch threads (default: all cores of the machine).

Prints one JSON line: per device the job's wall time (``<device>_job_s``), the mean epoch time of epochs 2-end
(``<device>_epoch_s``, from the job's metrics), and ``cuda_speedup_job`` / ``cuda_speedup_epoch`` (CPU over CUDA)
when both ran. Target (issue: GPU training): ``cuda_speedup_job`` >= 5 on one H100 against its 16-core CPU.
``--compile-step``: the jobs train with ``training.compile_step`` (the compiled Adam step; its compilation is part of
the job's time and of its first epoch, so ``<device>_epoch_s``, epochs 2-end, leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time


def dataset(n_configs: int, seed: int = 0):
    """``n_configs`` labelled Cu-32 cells (rattled 0.08 Å, isotropic strains within ±1.5 %), 10 % tagged 'valid'."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_alkit.io.arrays import ConfigurationArrays

    rng = np.random.default_rng(seed)
    structures = []
    for index in range(n_configs):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(0.08, seed=seed * 100_000 + index)
        atoms.set_cell(atoms.cell[:] * (1.0 + rng.uniform(-0.015, 0.015)), scale_atoms=True)
        atoms.calc = EMT()
        atoms.get_forces()
        atoms.get_stress()
        structures.append(atoms)
    arrays = ConfigurationArrays.from_atoms(structures)
    split = np.full(n_configs, 'train', dtype='<U5')
    split[rng.permutation(n_configs)[: max(1, n_configs // 10)]] = 'valid'
    arrays.info['split'] = split
    return arrays


def machine(cpu_threads: int) -> dict:
    """What a timing was measured on: torch, CPU, core count, GPU (also used by bench_explore.py)."""
    import torch

    return {
        'cpu_threads': cpu_threads,
        'torch': torch.__version__,
        'cpu': platform.processor() or platform.machine(),
        'cpu_count': os.cpu_count(),
        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_job(folder: pathlib.Path, parameters: dict, threads: int) -> dict:
    from aiida_alkit.jobs.train import DATASET_FILE, METRICS_FILE

    (folder / 'parameters.json').write_text(json.dumps(parameters))
    environment = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, '-m', 'aiida_alkit.jobs.train', str(folder)], env=environment, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    results = json.loads((folder / 'results.json').read_text())
    if completed.returncode != 0 or results.get('status') != 'ok':
        raise RuntimeError(f'train job failed: {results}\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}')
    metrics = json.loads((folder / METRICS_FILE).read_text())
    history = metrics.get('history', {}).get('history', [])
    epoch_times = [entry['time_s'] for entry in history if entry.get('epoch', 0) >= 2 and 'time_s' in entry]
    assert (folder / DATASET_FILE).is_file()
    return {'job_s': round(wall, 2), 'epoch_s': round(sum(epoch_times) / len(epoch_times), 4) if epoch_times else None}


def main() -> None:
    import torch

    from aiida_alkit.jobs.train import DATASET_FILE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='40 configurations, 32x32 model, 3 epochs')
    parser.add_argument('--configs', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--device', choices=('all', 'cpu', 'cuda'), default='all')
    parser.add_argument('--cpu-threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--dataset', default=None, help='.npz of the configurations: read when it exists, else written')
    parser.add_argument('--compile-step', action='store_true', help='train with training.compile_step')
    args = parser.parse_args()
    n_configs = args.configs or (40 if args.quick else 1000)
    epochs = args.epochs or (3 if args.quick else 50)
    model = {'species': ['Cu'], 'hidden_widths': [32, 32]} if args.quick else {'species': ['Cu']}
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    devices = [d for d in devices if d == 'cpu' or torch.cuda.is_available()]
    started = time.perf_counter()
    from aiida_alkit.io.arrays import ConfigurationArrays

    cached = args.dataset is not None and pathlib.Path(args.dataset).is_file()
    arrays = ConfigurationArrays.load(args.dataset) if cached else dataset(n_configs)
    if args.dataset is not None and not cached:
        arrays.save(args.dataset)
    n_configs = len(arrays)
    report = {
        'benchmark': 'train_job',
        'quick': args.quick,
        'configs': n_configs,
        'atoms_per_config': 32,
        'epochs': epochs,
        'batch_size': 32,
        'model': model,
        'compile_step': args.compile_step,
        'devices': devices,
        **machine(args.cpu_threads),
        'data_s': round(time.perf_counter() - started, 2),
    }
    for device in devices:
        with tempfile.TemporaryDirectory() as scratch:
            folder = pathlib.Path(scratch)
            arrays.save(folder / DATASET_FILE)
            parameters = {
                'model': model,
                'training': {'epochs': epochs, 'batch_size': 32, 'patience': None, 'compile_step': args.compile_step},
                'device': device,
                'num_threads': args.cpu_threads if device == 'cpu' else 1,
            }
            timing = run_job(folder, parameters, args.cpu_threads if device == 'cpu' else 1)
        report.update({f'{device}_{key}': value for key, value in timing.items()})
    if 'cpu_job_s' in report and 'cuda_job_s' in report:
        report['cuda_speedup_job'] = round(report['cpu_job_s'] / report['cuda_job_s'], 2)
        if report['cpu_epoch_s'] and report['cuda_epoch_s']:
            report['cuda_speedup_epoch'] = round(report['cpu_epoch_s'] / report['cuda_epoch_s'], 2)
    report['target_cuda_speedup_job'] = 5.0
    print(json.dumps(report), flush=True)


if __name__ == '__main__':
    main()
