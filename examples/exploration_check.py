"""Exploration check: does uncertainty-biased MD (seeds/003) reach higher uncertainties than unbiased MD?

1. ~40 EMT copper configurations (32 atoms) from short 300 K Langevin MD (``ase.md.langevin``), plus held-out ones;
2. a small GM-NN trained on them (``train``, tiny settings);
3. the posterior uncertainty of sketched gradient features fitted on the training set
   (:class:`~aiida_alkit.exploration.terms.GradientFeatureUncertainty`, energy-per-atom total features), its atom
   uncertainties conformally calibrated to eV/Å on the held-out configurations;
4. biased (``E - τ u``, adaptive τ with τ_r = 0.2, seeds/003 eq. 5-8) and unbiased Langevin MD at 300 K with the
   same number of steps from the same starts, for several seeds (the unbiased run evaluates the same term with τ = 0).

Printed per seed and as the mean over seeds: the maximum (over steps and walkers) of the structure uncertainty u,
of the calibrated max atom uncertainty (eV/Å) and the largest true atomic force RMSE against EMT among the frames
visited every 25 steps (20 with ``--quick``), eV/Å; the wall time per step of the biased and unbiased runs (both
evaluate the term and its gradient) and of plain MD without the term. The last line is one JSON object.

Run: ``python examples/exploration_check.py`` (1-2 min on 2 idle cores) or ``--quick`` (~30 s). No AiiDA needed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

from aiida_alkit.exploration.bias import AdaptiveStrength, BiasedPotential
from aiida_alkit.exploration.dynamics import BatchedMD
from aiida_alkit.exploration.pool import CandidatePool
from aiida_alkit.exploration.terms import GradientFeatureUncertainty, calibrated, fit_atom_calibrator
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
from aiida_alkit.models.training import TrainingConfig
from aiida_alkit.models.training import train as train_model
from aiida_alkit.uncertainty.conformal import atomic_force_rmse


def emt_snapshots(n_trajectories: int, per_trajectory: int, interval: int, seed: int) -> list:
    """Labelled snapshots of 300 K EMT Langevin MD (2 fs) of 32-atom fcc Cu cells with varied lattice constants."""
    rng = np.random.default_rng(seed)
    snapshots = []
    for _ in range(n_trajectories):
        atoms = bulk('Cu', 'fcc', a=float(rng.uniform(3.57, 3.65)), cubic=True) * (2, 2, 2)
        atoms.calc = EMT()
        masses = atoms.get_masses()[:, None]
        atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0))
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02, fixcm=False, rng=rng)
        dynamics.run(2 * interval)  # short equilibration
        for _ in range(per_trajectory):
            dynamics.run(interval)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            snapshots.append(frame)
    return snapshots


def max_force_error(model: GMNN, structures: list) -> float:
    """Largest per-atom force RMSE of the model against EMT over ``structures``, eV/Å."""
    if not structures:
        return float('nan')
    predicted = model(model.make_batch(structures), compute_forces=True)['forces'].detach().double().numpy()
    reference = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        reference.append(atoms.get_forces())
    return float(atomic_force_rmse(predicted, np.concatenate(reference)).max())


def run_md(model, term, starts, tau_r, n_steps, seed, error_every):
    """One BatchedMD run; returns max u, max calibrated atom u (eV/Å), max true force error (eV/Å), time (s)."""
    strength = AdaptiveStrength(tau_r) if tau_r > 0 else 0.0
    potential = BiasedPotential(model, term, strength=strength)
    pool = CandidatePool(interval=error_every)  # frames visited every error_every steps, for the true-error check
    md = BatchedMD(
        potential, starts, timestep=2.0, temperature=300.0, friction=0.02, n_steps=n_steps, pool=pool, seed=seed
    )
    started = time.perf_counter()
    result = md.run()
    elapsed = time.perf_counter() - started
    frames = pool.to_arrays().to_atoms() if len(pool) else []
    log_values = result.log
    return {
        'max_u': float(np.nanmax(log_values['uncertainty'])) if term is not None else float('nan'),
        'max_atom_u': float(np.nanmax(log_values['max_atom_uncertainty'])) if term is not None else float('nan'),
        'max_force_error': max_force_error(model, frames),
        'steps': int(log_values['step'].max()),
        'stops': sorted(set(result.stop_reasons.values())),
        'time_s': elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='a ~30 s version (fewer data, epochs, steps, seeds)')
    parser.add_argument('--seeds', type=int, default=None)
    parser.add_argument('--steps', type=int, default=None)
    parser.add_argument('--tau', type=float, default=0.2, help='relative biasing strength τ_r')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    n_seeds = args.seeds or (2 if quick else 4)
    n_steps = args.steps or (60 if quick else 200)
    epochs = 40 if quick else 100
    dim = 128 if quick else 256
    error_every = 20 if quick else 25
    started = time.perf_counter()

    data = emt_snapshots(4, 6 if quick else 12, 10, seed=0)  # 24 or 48 configurations
    held_out = data[5::6]  # every sixth for calibration: 4 or 8
    train = [atoms for k, atoms in enumerate(data) if k % 6 != 5]
    t_data = time.perf_counter() - started

    model = GMNN(GMNNHyperparameters.small(['Cu'], dtype='float64', hidden_widths=(32, 32), seed=0))
    config = TrainingConfig(epochs=epochs, batch_size=8, valid_fraction=0.1, forces_weight=12.0, seed=0)
    training = train_model(model, ConfigurationArrays.from_atoms(train), config=config)
    best = training.best
    t_train = time.perf_counter() - started - t_data

    term = GradientFeatureUncertainty.from_data(model, train, kind='posterior', dim=dim, seed=0)
    calibrator = fit_atom_calibrator(term, held_out, alpha=0.1)
    term = calibrated(term, calibrator)
    t_fit = time.perf_counter() - started - t_data - t_train
    print(
        f'data {len(train)} train + {len(held_out)} held-out ({t_data:.1f} s); training {t_train:.1f} s, '
        f'valid force RMSE {best.get("valid_forces_rmse", float("nan")):.3f} eV/Å; features/fit/calibration '
        f'{t_fit:.1f} s, q̂ = {calibrator.scale_:.3g} eV/Å per unit'
    )

    starts = [data[5].copy(), data[17].copy()]  # two held-out configurations as starts (same for every run)
    runs: dict[str, list[dict]] = {'biased': [], 'unbiased': []}
    for seed in range(n_seeds):
        for label, tau_r in (('biased', args.tau), ('unbiased', 0.0)):
            out = run_md(model, term, starts, tau_r, n_steps, seed, error_every)
            runs[label].append(out)
            print(
                f'seed {seed} {label:>8}: max u {out["max_u"]:.4g}, max calibrated atom u {out["max_atom_u"]:.3f} '
                f'eV/Å, max true force RMSE {out["max_force_error"]:.3f} eV/Å, {out["steps"]} steps '
                f'{out["stops"]}, {out["time_s"]:.1f} s'
            )

        plain = run_md(model, None, starts, 0.0, n_steps, seed, error_every)  # no term: the cost of plain MD
        runs.setdefault('plain', []).append(plain)

    summary = {'quick': quick, 'seeds': n_seeds, 'steps': n_steps, 'walkers': len(starts), 'tau_r': args.tau}
    for label, items in runs.items():
        for key in ('max_u', 'max_atom_u', 'max_force_error', 'time_s'):
            summary[f'{label}_{key}'] = float(np.mean([item[key] for item in items]))
    summary['ratio_max_u'] = summary['biased_max_u'] / summary['unbiased_max_u']
    summary['ratio_max_atom_u'] = summary['biased_max_atom_u'] / summary['unbiased_max_atom_u']
    summary['ms_per_step_biased'] = 1e3 * summary['biased_time_s'] / n_steps
    summary['ms_per_step_unbiased'] = 1e3 * summary['unbiased_time_s'] / n_steps
    summary['ms_per_step_plain'] = 1e3 * summary['plain_time_s'] / n_steps
    for key in ('plain_max_u', 'plain_max_atom_u'):
        summary.pop(key)
    summary['valid_forces_rmse'] = best.get('valid_forces_rmse')
    summary['q_hat'] = calibrator.scale_
    summary['total_s'] = time.perf_counter() - started
    print(
        f'mean over {n_seeds} seeds: max u biased {summary["biased_max_u"]:.4g} vs unbiased '
        f'{summary["unbiased_max_u"]:.4g} (x{summary["ratio_max_u"]:.2f}); max calibrated atom u '
        f'{summary["biased_max_atom_u"]:.3f} vs {summary["unbiased_max_atom_u"]:.3f} eV/Å; max true force RMSE '
        f'{summary["biased_max_force_error"]:.3f} vs {summary["unbiased_max_force_error"]:.3f} eV/Å; '
        f'{summary["ms_per_step_biased"]:.1f} vs {summary["ms_per_step_unbiased"]:.1f} ms/step '
        f'({summary["ms_per_step_plain"]:.1f} ms/step for plain MD without the term)'
    )
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
