"""A whole explore job at production size on every available device: ``python -m aiida_alkit.jobs.explore`` as the
ExploreCalculation runs it, timed as a process (start-up, calibration, biased MD, pool features and scores included).

Production size (issue: GPU training and exploration): 32 walkers of Cu-108 (3x3x3 conventional cells, rattled
0.05 Å, four different seeds), 50 steps of 2 fs at 600 K, the gradient bias of the ``gradient`` preset
(posterior uncertainty, adaptive τ_r = 0.2 after a 10-step burn-in), sketched gradient features (d = 512) of every
candidate (a frame every 5 steps), the default model (910-512-512-1, float32) trained for a few epochs on 200 Cu-32
EMT configurations (10 % validation: the calibration set). The stop threshold is out of reach (1e6 eV/Å) so that
every device integrates the same walker-steps. ``--quick``: 4 walkers of Cu-32, 10 steps, a 32x32 model (seconds).

Prints one JSON line: per device the job's wall time (``<device>_job_s``), walker-steps and µs per atom and step of
the whole job, neighbour lists rebuilt/needed, and ``cuda_speedup_job`` (CPU over CUDA) when both ran.
Target (issue: GPU exploration): ``cuda_speedup_job`` >= 8 on one H100 against its 16-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time


def seeds(n_seeds: int, repeat: int):
    """``n_seeds`` rattled fcc Cu cells of ``4 repeat³`` atoms (a = 3.61 Å), unlabelled."""
    from ase.build import bulk

    from aiida_alkit.io.arrays import ConfigurationArrays

    cells = []
    for index in range(n_seeds):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (repeat, repeat, repeat)
        atoms.rattle(0.05, seed=index)
        cells.append(atoms)
    return ConfigurationArrays.from_atoms(cells)


def run(module: str, folder: pathlib.Path, parameters: dict, threads: int) -> tuple[float, dict]:
    (folder / 'parameters.json').write_text(json.dumps(parameters))
    environment = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, '-m', module, str(folder)], env=environment, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    results = json.loads((folder / 'results.json').read_text())
    if completed.returncode != 0 or results.get('status') != 'ok':
        raise RuntimeError(f'{module} failed: {results}\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}')
    return wall, results


def main() -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from bench_train import dataset, machine

    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.jobs import explore, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='4 walkers of Cu-32, 10 steps, 32x32 model')
    parser.add_argument('--device', choices=('all', 'cpu', 'cuda'), default='all')
    parser.add_argument('--cpu-threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--walkers', type=int, default=None)
    parser.add_argument('--steps', type=int, default=None)
    args = parser.parse_args()
    walkers = args.walkers or (4 if args.quick else 32)
    steps = args.steps or (10 if args.quick else 50)
    repeat = 2 if args.quick else 3
    model = {'species': ['Cu'], 'hidden_widths': [32, 32]} if args.quick else {'species': ['Cu']}
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    devices = [d for d in devices if d == 'cpu' or torch.cuda.is_available()]
    train_device = 'cuda' if torch.cuda.is_available() else 'cpu'
    report: dict = {
        'benchmark': 'explore_job',
        'quick': args.quick,
        'walkers': walkers,
        'atoms_per_walker': 4 * repeat**3,
        'steps': steps,
        'model': model,
        'bias': 'gradient (posterior, relative_tau 0.2)',
        'devices': devices,
        **machine(args.cpu_threads),
    }
    with tempfile.TemporaryDirectory() as scratch:
        base = pathlib.Path(scratch)
        trained = base / 'train'
        trained.mkdir()
        arrays = dataset(40 if args.quick else 200)
        arrays.save(trained / train.DATASET_FILE)
        train_parameters = {
            'model': model,
            'training': {'epochs': 3 if args.quick else 10, 'batch_size': 32, 'patience': None},
            'device': train_device,
            'num_threads': args.cpu_threads,
        }
        report['train_s'], _ = run('aiida_alkit.jobs.train', trained, train_parameters, args.cpu_threads)
        for device in devices:
            folder = base / device
            folder.mkdir()
            shutil.copy(trained / train.POTENTIAL_FILE, folder / explore.POTENTIAL_FILE)
            arrays.save(folder / explore.TRAINING_FILE)
            seeds(4, repeat).save(folder / explore.SEEDS_FILE)
            threads = args.cpu_threads if device == 'cpu' else 1
            parameters = {
                'walkers': walkers,
                'steps': steps,
                'timestep_fs': 2.0,
                'temperature_K': 600.0,
                'sample_every': 5,
                'seed': 0,
                'bias': {'kind': 'gradient', 'relative_tau': 0.2, 'burn_in_steps': 10},
                'stop': {'uncertainty': 1e6},
                'features': {'kind': 'sketch', 'dim': 64 if args.quick else 512},
                'device': device,
                'num_threads': threads,
            }
            wall, results = run('aiida_alkit.jobs.explore', folder, parameters, threads)
            stops = json.loads((folder / explore.STOPS_FILE).read_text())
            stopped = {walker: int(entry['step']) for walker, entry in stops.items() if int(entry['step']) >= 0}
            walker_steps = sum(min(stopped.get(str(walker), steps), steps) for walker in range(walkers))
            pool = ConfigurationArrays.load(folder / explore.POOL_FILE)
            report[f'{device}_job_s'] = round(wall, 2)
            report[f'{device}_walker_steps'] = walker_steps
            report[f'{device}_us_per_atom_step'] = round(1e6 * wall / max(1, walker_steps * 4 * repeat**3), 3)
            report[f'{device}_candidates'] = len(pool)
            report[f'{device}_neighbor_lists'] = results.get('neighbor_lists')
            report[f'{device}_timings_s'] = results.get('timings_s')  # load, calibration, md, scores
            report[f'{device}_stop_reasons'] = sorted({entry.get('reason') for entry in stops.values()})
            report[f'{device}_mean_max_atom_force_unc'] = float(np.mean(pool.info['max_atom_force_unc']))
    if 'cpu_job_s' in report and 'cuda_job_s' in report:
        report['cuda_speedup_job'] = round(report['cpu_job_s'] / report['cuda_job_s'], 2)
    report['target_cuda_speedup_job'] = 8.0
    print(json.dumps(report), flush=True)


if __name__ == '__main__':
    main()
