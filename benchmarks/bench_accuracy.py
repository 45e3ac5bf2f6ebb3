"""Accuracy check (issue 3, item 9): GM-NN trained with Adam and with RLEKF on EMT copper, tested at 1200/1400 K.

Data (ASE, ``ase.calculators.emt.EMT``): 32-atom fcc Cu cells (2x2x2 conventional, a = 3.61 Å). Every MD walker
gets its own cell, strained isotropically (the walkers of one temperature stratified over ±2 %, so that the volumes
and the stress labels carry information) plus a random traceless shape strain (components of 0.5 % standard
deviation), Maxwell-Boltzmann velocities and its own seed; it runs Langevin MD (``ase.md.langevin.Langevin``, 5 fs
steps, friction 0.02/fs, centre of mass fixed), equilibrates ``--equilibration`` steps and then keeps one frame
every 20 steps (100 fs). Energies, forces and stresses of the kept frames are EMT labels.

* Training set: 200 frames (``--n-train``), 40 from each of 300, 600, 900, 1200 and 1400 K (4 walkers x 10
  frames per temperature); 10 % of them (chosen with seed 0) are the validation set of both optimisers.
* Test sets: 50 frames at 1200 K and 50 at 1400 K (5 walkers x 10 frames each, isotropic strains stratified over
  ±1.8 %, i.e. inside the training volumes) from separate walkers (other seeds and cells) that never contribute to
  training.

Models (GM-NN, ``aiida_alkit.models.gmnn``; cutoff 5 Å, 9 Gaussians, 7 radial functions, d_0 = 910):

* (a) Adam: ``GMNNHyperparameters(species=['Cu'])`` (910-512-512-1, float32) trained by
  :func:`~aiida_alkit.models.training.train` (Adam) with the papers' learning rates, batch 32, energy + force +
  stress loss, linear decay to zero over ``--adam-epochs`` (200) epochs and restoring the best validation epoch.
* (b) RLEKF: the same representation with a 910-32-32-1 network in float64 (30 306 parameters), trained by
  :func:`~aiida_alkit.models.training.train` with ``optimizer='rlekf'`` (Algorithm 5 of seeds/000: one energy
  update and 4 force updates of 6 atoms per configuration, batch 1, 4 epochs) with ``block_size`` 1024 (P: 32
  blocks, 0.25 GB) and the automatic P_0 of :class:`~aiida_alkit.models.rlekf.RLEKFConfig` (``--p0`` sets it by
  hand; the paper's P_0 = I learns far too slowly for a GM-NN whose output scale c of eq. 4 is ~0.05 eV here);
  the weights of the last epoch are used (RLEKF has no best-epoch restoring). The default 512x512 network would
  need a 59 GB P.
  RLEKF fits energies and forces only (no stress measurement).
* (c) for comparison, Adam on the RLEKF architecture (910-32-32-1, float32, 150 epochs): keys ``adam_small_*``.

Errors (:func:`~aiida_alkit.models.training.evaluate_errors`): energy RMSE per atom (meV/atom), force-component
RMSE (meV/Å), stress RMSE (GPa), on the test sets and on the training/validation parts. Prints progress lines and,
last, one JSON line. ``--quick``: 40 training frames, 10 per test set, fewer epochs (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np

EV_PER_A3_TO_GPA = 160.21766208
TEMPERATURES = (300, 600, 900, 1200, 1400)
TEST_TEMPERATURES = (1200, 1400)
LATTICE = 3.61  # Å
TIMESTEP_FS = 5.0
FRICTION_PER_FS = 0.02
FRAME_INTERVAL = 20  # MD steps between kept frames (100 fs)
VOLUME_STRAIN = 0.02  # isotropic strains of the walkers' cells are stratified over ±2 %
SHEAR_STRAIN = 0.005  # standard deviation of the traceless (shape) strain components
TRAIN_WALKERS = 4  # per training temperature
TEST_WALKERS = 5  # per test temperature


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- data
def stratified_strains(n: int, half_range: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` isotropic strains, one uniformly drawn from each of ``n`` equal bins of [-half_range, half_range]."""
    edges = np.linspace(-half_range, half_range, n + 1)
    return rng.uniform(edges[:-1], edges[1:])


def run_walker(
    temperature: float,
    n_frames: int,
    seed: int,
    equilibration: int,
    isotropic_strain: float,
    interval: int = FRAME_INTERVAL,
) -> list[Any]:
    """Frames (with EMT energy, forces, stress) of one Langevin walker in its own strained Cu-32 cell.

    The cell is the 2x2x2 conventional fcc cell (a = 3.61 Å) under the strain ``isotropic_strain`` I + a random
    traceless symmetric strain (components of 0.5 % standard deviation; it changes the shape, not the volume, to
    first order).
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    rng = np.random.default_rng(seed)
    atoms = bulk('Cu', 'fcc', a=LATTICE, cubic=True) * (2, 2, 2)
    random = rng.normal(0.0, SHEAR_STRAIN, size=(3, 3))
    shape = 0.5 * (random + random.T)
    strain = np.eye(3) * isotropic_strain + shape - np.eye(3) * np.trace(shape) / 3.0
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    # the MD continues the walker's random stream after the strain draw, as in the run reported in the issue note
    return langevin_frames(
        atoms, EMT, temperature, n_frames, interval, seed, equilibration,
        timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS, rng=rng,
    )  # fmt: skip


def generate_data(quick: bool, n_train: int, n_test: int, equilibration: int, seed: int = 0) -> dict[str, Any]:
    """Training frames over all temperatures and held-out 1200/1400 K test frames (separate walkers and seeds)."""
    from aiida_alkit.io.arrays import ConfigurationArrays

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    walkers_per_temperature = 2 if quick else TRAIN_WALKERS
    per_temperature = n_train // len(TEMPERATURES)
    per_walker = -(-per_temperature // walkers_per_temperature)
    seeds = iter(range(1000 * seed + 1, 1000 * seed + 500))
    train_frames: list[Any] = []
    for temperature in TEMPERATURES:
        frames: list[Any] = []
        for strain in stratified_strains(walkers_per_temperature, VOLUME_STRAIN, rng):
            frames += run_walker(temperature, per_walker, next(seeds), equilibration, strain)
        train_frames += frames[:per_temperature]
        log(f'[data] train {temperature:5d} K: {per_temperature} frames ({time.perf_counter() - started:.0f} s)')
    test_walkers = 2 if quick else TEST_WALKERS
    test: dict[int, Any] = {}
    seeds = iter(range(1000 * seed + 500, 1000 * seed + 1000))  # disjoint from the training seeds
    for temperature in TEST_TEMPERATURES:
        frames = []
        # test cells stay inside the training range of volumes (interpolation in volume)
        for strain in stratified_strains(test_walkers, 0.9 * VOLUME_STRAIN, rng):
            frames += run_walker(temperature, -(-n_test // test_walkers), next(seeds), equilibration, strain)
        test[temperature] = ConfigurationArrays.from_atoms(frames[:n_test])
        log(f'[data] test  {temperature:5d} K: {n_test} frames ({time.perf_counter() - started:.0f} s)')
    return {
        'train': ConfigurationArrays.from_atoms(train_frames),
        'test': test,
        'time_s': time.perf_counter() - started,
    }


def summary_of(arrays: Any) -> dict[str, float]:
    """Mean/std of the label statistics of a set (eV/atom, eV/Å, GPa) and the mean cell volume per atom (Å³)."""
    sizes = np.diff(arrays.offsets)
    energy = arrays.energy / sizes
    volumes = np.abs(np.linalg.det(arrays.cells)) / sizes
    pressure = -np.trace(arrays.stress, axis1=1, axis2=2) / 3.0 * EV_PER_A3_TO_GPA
    by_temperature = {}
    if 'temperature' in arrays.info:
        for temperature in np.unique(arrays.info['temperature']):
            mask = arrays.info['temperature'] == temperature
            by_temperature[str(int(temperature))] = round(float(energy[mask].mean()), 4)
    return {
        'n': len(arrays),
        'energy_per_atom_mean_ev_by_temperature': by_temperature,
        'energy_per_atom_mean_ev': round(float(energy.mean()), 4),
        'energy_per_atom_std_mev': round(float(energy.std()) * 1e3, 2),
        'forces_rms_ev_per_ang': round(float(np.sqrt(np.mean(arrays.forces**2))), 4),
        'pressure_mean_gpa': round(float(pressure.mean()), 2),
        'pressure_std_gpa': round(float(pressure.std()), 2),
        'volume_per_atom_range': [round(float(volumes.min()), 3), round(float(volumes.max()), 3)],
    }


# ---------------------------------------------------------------------------------------------------- errors
def errors_of(model: Any, sets: dict[str, Any]) -> dict[str, float]:
    """``{set}_energy_rmse_mev_per_atom``, ``{set}_forces_rmse_mev_per_ang``, ``{set}_stress_rmse_gpa``."""
    from aiida_alkit.models.training import evaluate_errors

    out: dict[str, float] = {}
    for name, data in sets.items():
        errors = evaluate_errors(model, data)
        out[f'{name}_energy_rmse_mev_per_atom'] = round(errors['energy_rmse'] * 1e3, 3)
        out[f'{name}_forces_rmse_mev_per_ang'] = round(errors['forces_rmse'] * 1e3, 2)
        if errors['stress_rmse'] is not None:
            out[f'{name}_stress_rmse_gpa'] = round(errors['stress_rmse'] * EV_PER_A3_TO_GPA, 4)
    return out


def _report_errors(prefix: str, errors: dict[str, float]) -> None:
    for name in ('train', 'valid', *map(str, TEST_TEMPERATURES)):
        log(
            f'[{prefix}] {name:>5s}: E {errors[f"{name}_energy_rmse_mev_per_atom"]:.3f} meV/atom  '
            f'F {errors[f"{name}_forces_rmse_mev_per_ang"]:.1f} meV/Å  '
            f'S {errors.get(f"{name}_stress_rmse_gpa", float("nan")):.3f} GPa'
        )


# ---------------------------------------------------------------------------------------------------- training
def train_with_adam(
    prefix: str, hidden: tuple[int, ...], dtype: str, epochs: int, train_set: Any, valid: Any, sets: dict[str, Any]
) -> dict[str, Any]:
    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.models.training import TrainingConfig, log_progress, train

    hyperparameters = GMNNHyperparameters(species=['Cu'], hidden_widths=hidden, dtype=dtype, seed=0)
    model = GMNN(hyperparameters)
    config = TrainingConfig(epochs=epochs, batch_size=32, seed=0, log_every=max(1, epochs // 10))
    n_parameters = sum(p.numel() for p in model.parameters())
    log(
        f'[{prefix}] Adam: {hyperparameters.n_features}-{"-".join(map(str, hidden))}-1 {dtype}, '
        f'{n_parameters} parameters, {epochs} epochs, {len(train_set)} train / {len(valid)} valid'
    )
    started = time.perf_counter()
    result = train(model, train_set, valid, config, callback=log_progress(log, config.log_every))
    train_s = time.perf_counter() - started
    errors = errors_of(model, sets)
    _report_errors(prefix, errors)
    settings = {
        'hyperparameters': hyperparameters.to_dict(),
        'n_parameters': n_parameters,
        'epochs': epochs,
        'batch_size': config.batch_size,
        'learning_rates': config.learning_rates,
        'lr_final_fraction': config.lr_final_fraction,
        'loss_weights': {
            'energy': config.energy_weight,
            'forces': config.forces_weight,
            'stress': config.stress_weight,
        },
        'best_epoch': result.best_epoch,
        'early_stopping_metric': result.metric,
    }
    return {'errors': errors, 'train_s': round(train_s, 1), 'settings': settings}


def train_with_rlekf(
    prefix: str,
    hidden: tuple[int, ...],
    epochs: int,
    block_size: int,
    p0: float | None,
    train_set: Any,
    valid: Any,
    sets: dict[str, Any],
) -> dict[str, Any]:
    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.models.rlekf import RLEKFConfig
    from aiida_alkit.models.training import EpochReport, TrainingConfig, format_report, train

    hyperparameters = GMNNHyperparameters(species=['Cu'], hidden_widths=hidden, dtype='float64', seed=0)
    model = GMNN(hyperparameters)
    config = RLEKFConfig(block_size=block_size, p0=p0, seed=0)
    n_parameters = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()

    def callback(report: EpochReport) -> None:
        log(f'[{prefix}] {format_report(report)}  {time.perf_counter() - started:.0f} s')

    settings = TrainingConfig(epochs=epochs, batch_size=1, valid_fraction=0.0)
    optimizer = train(model, train_set, valid, settings, optimizer='rlekf', rlekf=config, callback=callback).rlekf
    log(
        f'[{prefix}] RLEKF: {hyperparameters.n_features}-{"-".join(map(str, hidden))}-1 float64, '
        f'{n_parameters} parameters, {optimizer.n_blocks} blocks, P {optimizer.memory_bytes() / 1e9:.2f} GB'
    )
    train_s = time.perf_counter() - started
    errors = errors_of(model, sets)
    _report_errors(prefix, errors)
    settings = {
        'hyperparameters': hyperparameters.to_dict(),
        'n_parameters': n_parameters,
        'epochs': epochs,
        'batch_size': 1,
        'rlekf': config.to_dict(),
        'n_blocks': optimizer.n_blocks,
        'P_bytes': optimizer.memory_bytes(),
        'final_lambda': optimizer.lam,
        'weights': 'last epoch',
    }
    return {'errors': errors, 'train_s': round(train_s, 1), 'settings': settings}


# ---------------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from aiida_alkit.models.training import split_train_valid

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = generate_data(args.quick, args.n_train, args.n_test, args.equilibration)
    train, valid = split_train_valid(data['train'], 0.1, seed=0)
    sets = {'train': train, 'valid': valid, **{str(t): data['test'][t] for t in TEST_TEMPERATURES}}
    statistics = {name: summary_of(arrays) for name, arrays in sets.items()}
    for name, values in statistics.items():
        log(f'[data] {name}: {values}')

    report: dict[str, Any] = {'benchmark': 'gmnn_accuracy_emt_cu', 'quick': args.quick}
    runs = {
        'adam': lambda: train_with_adam('adam', args.adam_widths, 'float32', args.adam_epochs, train, valid, sets),
        'rlekf': lambda: train_with_rlekf(
            'rlekf', args.rlekf_widths, args.rlekf_epochs, args.block_size, args.p0, train, valid, sets
        ),
    }
    if args.adam_small_epochs > 0:
        runs['adam_small'] = lambda: train_with_adam(
            'adam_small', args.rlekf_widths, 'float32', args.adam_small_epochs, train, valid, sets
        )
    settings: dict[str, Any] = {}
    for name, function in runs.items():
        result = function()
        for key in ('1200', '1400'):
            report[f'{name}_{key}_energy_rmse_mev_per_atom'] = result['errors'][f'{key}_energy_rmse_mev_per_atom']
            report[f'{name}_{key}_forces_rmse_mev_per_ang'] = result['errors'][f'{key}_forces_rmse_mev_per_ang']
        report[f'{name}_train_s'] = result['train_s']
        report[f'{name}_errors'] = result['errors']
        settings[name] = result['settings']
    settings['data'] = {
        'temperatures_K': list(TEMPERATURES),
        'test_temperatures_K': list(TEST_TEMPERATURES),
        'n_train': len(train),
        'n_valid': len(valid),
        'n_test': args.n_test,
        'atoms_per_cell': 32,
        'lattice_A': LATTICE,
        'strain': 'per walker: isotropic, stratified over ±2 % (train) / ±1.8 % (test), + traceless symmetric '
        'with N(0, 0.5 %) components',
        'md': f'Langevin {TIMESTEP_FS} fs, friction {FRICTION_PER_FS}/fs, FixCom, {args.equilibration} steps '
        f'equilibration, one frame per {FRAME_INTERVAL} steps',
        'walkers_per_temperature': 2 if args.quick else TRAIN_WALKERS,
        'test_walkers_per_temperature': 2 if args.quick else TEST_WALKERS,
        'statistics': statistics,
        'generation_s': round(data['time_s'], 1),
    }
    settings['torch_threads'] = args.threads
    report['settings'] = settings
    report['total_s'] = round(time.perf_counter() - started, 1)
    report['torch'] = torch.__version__
    report['cpu'] = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'
    return report


def widths(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(','))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small data and few epochs (about a minute)')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads (1)')
    parser.add_argument('--n-train', type=int, default=None, help='training + validation frames (200; quick 40)')
    parser.add_argument('--n-test', type=int, default=None, help='frames per test temperature (50; quick 10)')
    parser.add_argument('--equilibration', type=int, default=None, help='MD steps before the first frame (200)')
    parser.add_argument('--adam-widths', type=widths, default=(512, 512), help='Adam hidden widths (512,512)')
    parser.add_argument('--adam-epochs', type=int, default=None, help='Adam epochs (200; quick 30)')
    parser.add_argument('--adam-small-epochs', type=int, default=None, help='Adam on the RLEKF net (150; quick 0)')
    parser.add_argument('--rlekf-widths', type=widths, default=(32, 32), help='RLEKF hidden widths (32,32)')
    parser.add_argument('--rlekf-epochs', type=int, default=None, help='RLEKF epochs (4; quick 2)')
    parser.add_argument('--block-size', type=int, default=1024, help='RLEKF block size (1024)')
    parser.add_argument('--p0', type=float, default=None, help='RLEKF P_0 = p0 I (default: automatic)')
    args = parser.parse_args()
    defaults = {
        'n_train': (40, 200),
        'n_test': (10, 50),
        'equilibration': (100, 200),
        'adam_epochs': (30, 200),
        'adam_small_epochs': (0, 150),
        'rlekf_epochs': (2, 4),
    }
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    print(json.dumps(run(args)), flush=True)


if __name__ == '__main__':
    main()
