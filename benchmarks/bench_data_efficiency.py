"""Data efficiency (issue 7, item 3): test error vs number of labels for the gradient, dpgen and random strategies.

Every campaign is a real ``ActiveLearningWorkChain`` (``aiida.engine.run_get_node``) on a throw-away embedded
profile (SQLite storage; the ``alkit-python`` code on a ``localhost`` computer, created by
:func:`aiida_alkit.profile.setup_environment` in a temporary ``AIIDA_PATH``). The campaigns run one after another
in this process, all with the same inputs except the strategy preset:

* System: fcc copper, 32-atom cells (2x2x2 conventional, a = 3.61 Å), labels (energy, forces, stress) from ASE's
  EMT calculator (``label.engine = 'ase'``).
* Initial set: ``--n-initial`` labelled configurations (rattled 0.05 Å, isotropic strains over ±2 %); they are
  also the MD seeds.
* Test set (held out, passed as ``test_dataset``, so every round's potential carries
  ``test_forces_rmse_ev_per_ang`` and ``test_energy_rmse_ev_per_atom`` in its metrics): EMT Langevin MD frames
  (``ase.md.langevin``, 5 fs, friction 0.02/fs, one frame every 100 fs after equilibration) at several
  temperatures, from separate walkers in their own strained cells.
* Schedule: exploration temperatures 300 → 1400 K over the rounds; the same label budget per round
  (``select.batch_size``), the same seed, model and training settings for every strategy; ``accurate_fraction``
  is set to 1 so that no campaign stops early on DP-GEN's criterion (every strategy gets the same number of
  rounds; a round that selects fewer than the batch — e.g. DP-GEN's trust window holding fewer candidates —
  labels fewer structures, visible in ``n_labels``).
* Strategies: ``gradient`` (gradient-biased MD + LCMD, one model), ``dpgen`` (committee of ``--committee-size``
  models, trust window [0.05, 0.15] eV/Å), ``random`` (unbiased MD with the single model, random picks).

The learning curve of a strategy is one point per round: (labels the round's potential was trained on, its test
force RMSE in meV/Å, its test energy RMSE in meV/atom). The labels chosen in the last round are not trained on
(the campaign ends after labelling), so ``final`` is the last trained potential. Prints a progress line per
finished campaign and, last, ONE JSON line with the curves, the final values and the ratios
``gradient_over_random_final_force_rmse`` and ``gradient_over_dpgen_final_force_rmse`` (< 1: gradient better).
``--quick``: tiny model, 2 rounds, short MD (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np

LATTICE = 3.61  # Å
TIMESTEP_FS = 5.0
FRICTION_PER_FS = 0.02
FRAME_INTERVAL = 20  # MD steps between kept test frames (100 fs)
STRATEGIES = ('gradient', 'dpgen', 'random')


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- data
def label_emt(atoms):
    """A copy of ``atoms`` with EMT energy, forces and stress on a SinglePointCalculator."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import with_labels

    return with_labels(atoms, EMT)


def copper_cell(isotropic_strain: float):
    from ase.build import bulk

    atoms = bulk('Cu', 'fcc', a=LATTICE, cubic=True) * (2, 2, 2)
    atoms.set_cell(atoms.cell[:] * (1.0 + isotropic_strain), scale_atoms=True)
    return atoms


def initial_configurations(n: int, seed: int) -> list[Any]:
    """``n`` labelled, rattled 32-atom cells with isotropic strains spread over ±2 %."""
    strains = np.linspace(-0.02, 0.02, n) if n > 1 else np.zeros(1)
    frames = []
    for index, strain in enumerate(strains):
        atoms = copper_cell(float(strain))
        atoms.rattle(stdev=0.05, seed=seed * 100 + index)
        frames.append(label_emt(atoms))
    return frames


def md_frames(temperature: float, n_frames: int, seed: int, strain: float, equilibration: int) -> list[Any]:
    """Labelled frames of one Langevin EMT walker (its own strained cell, velocities and seed)."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    return langevin_frames(
        copper_cell(strain), EMT, temperature, n_frames, FRAME_INTERVAL, seed, equilibration,
        timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
    )  # fmt: skip


def test_configurations(
    temperatures: tuple[int, ...], walkers: int, frames_per_walker: int, equilibration: int, seed: int
) -> list[Any]:
    rng = np.random.default_rng(10_000 + seed)
    frames: list[Any] = []
    walker_seed = 10_000 + 100 * seed  # disjoint from anything the campaigns use
    for temperature in temperatures:
        for strain in rng.uniform(-0.018, 0.018, walkers):
            walker_seed += 1
            frames += md_frames(temperature, frames_per_walker, walker_seed, float(strain), equilibration)
    return frames


# ---------------------------------------------------------------------------------------------------- settings
def settings(quick: bool, committee_size: int) -> dict[str, Any]:
    if quick:
        return {
            'n_initial': 4,
            'test': {'temperatures': (600, 1200, 1400), 'walkers': 1, 'frames_per_walker': 6, 'equilibration': 100},
            'overrides': {
                'max_rounds': 2,
                'accurate_fraction': 1.0,
                'train': {
                    'parameters': {
                        'model': {'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]},
                        'training': {'epochs': 40, 'batch_size': 2},
                        'num_threads': 2,
                        'device': 'cpu',
                    }
                },
                'explore': {
                    'parameters': {
                        'walkers': 2,
                        'steps': 20,
                        'sample_every': 5,
                        'features': {'kind': 'sketch', 'dim': 64},
                        'num_threads': 1,
                        'device': 'cpu',
                    }
                },
                'select': {'parameters': {'batch_size': 3}},
                'schedule': {'temperatures': [300, 1400]},
            },
            'committee_size': min(committee_size, 2),
        }
    return {
        'n_initial': 4,
        'test': {'temperatures': (600, 1200, 1400), 'walkers': 2, 'frames_per_walker': 10, 'equilibration': 200},
        'overrides': {
            'max_rounds': 5,
            'accurate_fraction': 1.0,
            'train': {
                'parameters': {
                    'model': {'cutoff': 4.0, 'n_basis': 5, 'n_radial': 3, 'hidden_widths': [16, 16]},
                    'training': {'epochs': 150, 'batch_size': 4},
                    'num_threads': 2,
                    'device': 'cpu',
                }
            },
            'explore': {
                'parameters': {
                    'walkers': 4,
                    'steps': 100,
                    'sample_every': 5,
                    'features': {'kind': 'sketch', 'dim': 64},
                    'num_threads': 1,
                    'device': 'cpu',
                }
            },
            'select': {'parameters': {'batch_size': 6}},
            'schedule': {'temperatures': [300, 600, 900, 1200, 1400]},
        },
        'committee_size': committee_size,
    }


def strategy_overrides(base: dict[str, Any], strategy: str, committee_size: int) -> dict[str, Any]:
    from aiida_alkit.workflows.labelling import deep_merge

    overrides = json.loads(json.dumps(base))
    if strategy == 'dpgen':
        overrides = deep_merge(overrides, {'train': {'parameters': {'committee_size': committee_size}}})
    if strategy != 'gradient':
        # the presets of dpgen and random switch gradient features off; keep that (features: null)
        overrides['explore']['parameters'].pop('features', None)
    return overrides


# ---------------------------------------------------------------------------------------------------- campaign
def evaluate_potential(potential, frames: list[Any]) -> tuple[float, float]:
    """(force RMSE eV/Å, energy RMSE eV/atom) of a stored potential (GM-NN or committee mean) on ``frames``.

    Used where the potential carries no test metrics: the train job evaluates ``test_dataset`` only for single
    models, not for committees (dpgen).
    """
    from aiida_alkit.jobs.explore import load_model
    from aiida_alkit.models.batching import batch_from_atoms

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'potential.pt')
        potential.export(path)
        model = load_model(path, 'cpu')
    force_errors, energy_errors = [], []
    for start in range(0, len(frames), 16):
        chunk = frames[start : start + 16]
        batch = batch_from_atoms(chunk, model.species, model.cutoff, 'cpu', model.dtype, labels=False)
        if hasattr(model, 'members'):
            out = model.predict(batch, compute_forces=True)
        else:
            out = model(batch, compute_forces=True, compute_stress=False, training=False)
        energies = out['energy'].detach().cpu().numpy().astype(np.float64)
        forces = out['forces'].detach().cpu().numpy().astype(np.float64)
        reference_forces = np.concatenate([atoms.get_forces() for atoms in chunk])
        force_errors.append((forces - reference_forces).ravel())
        energy_errors += [
            (e - atoms.get_potential_energy()) / len(atoms) for e, atoms in zip(energies, chunk, strict=True)
        ]
    return float(np.sqrt(np.mean(np.square(np.concatenate(force_errors))))), float(
        np.sqrt(np.mean(np.square(energy_errors)))
    )


def run_campaign(
    code, initial, test, test_frames, strategy: str, overrides: dict[str, Any], seed: int
) -> dict[str, Any]:
    from aiida.engine import run_get_node

    from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        code,
        initial,
        protocol='fast',
        strategy=strategy,
        overrides={**overrides, 'seed': seed},
        label={'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}},
    )
    builder.test_dataset = test
    started = time.perf_counter()
    results, node = run_get_node(builder)
    wall_s = time.perf_counter() - started
    if not node.is_finished_ok:
        raise RuntimeError(f'{strategy} campaign {node.pk} failed: [{node.exit_status}] {node.exit_message}')
    report = results['report'].get_dict()
    trains = {
        link.link_label: link.node
        for link in node.base.links.get_outgoing().all()
        if getattr(link.node, 'process_label', None) == 'TrainWorkChain'
    }
    n_labels = len(initial)
    curve = []
    train_s = 0.0
    evaluated_here = []
    for entry in report['rounds']:
        metrics = entry.get('metrics', {})
        train = trains[f'train_round_{entry["round"]}']
        train_s += (train.mtime - train.ctime).total_seconds()
        if 'test_forces_rmse_ev_per_ang' in metrics and 'test_energy_rmse_ev_per_atom' in metrics:
            forces_rmse, energy_rmse = metrics['test_forces_rmse_ev_per_ang'], metrics['test_energy_rmse_ev_per_atom']
        else:
            forces_rmse, energy_rmse = evaluate_potential(train.outputs.potential, test_frames)
            evaluated_here.append(entry['round'])
        curve.append([n_labels, round(1e3 * forces_rmse, 2), round(1e3 * energy_rmse, 2)])
        n_labels += int(entry.get('labelled', 0))
    return {
        'campaign_pk': node.pk,
        'curve': curve,  # (labels trained on, test force RMSE meV/Å, test energy RMSE meV/atom) per round
        'final_n_labels': curve[-1][0],
        'final_force_rmse_mev_per_ang': curve[-1][1],
        'final_energy_rmse_mev_per_atom': curve[-1][2],
        'labels_spent': n_labels,
        'selected_per_round': [int(entry.get('selected', 0)) for entry in report['rounds']],
        'stop_reason': report.get('stop_reason'),
        'rounds_evaluated_by_benchmark': evaluated_here,  # no test metrics on the potential (committee)
        'train_s': round(train_s, 1),
        'wall_s': round(wall_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny model, 2 rounds, short MD (a few minutes)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of every campaign')
    parser.add_argument('--committee-size', type=int, default=3, help='dpgen committee (2 with --quick)')
    parser.add_argument('--strategies', default=','.join(STRATEGIES), help='comma-separated subset')
    parser.add_argument('--verbose', action='store_true', help="show the work chains' report lines")
    args = parser.parse_args()
    strategies = [name.strip() for name in args.strategies.split(',') if name.strip()]
    config = settings(args.quick, args.committee_size)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as home:
        os.environ['AIIDA_PATH'] = home  # before AiiDA is imported
        from aiida import orm

        from aiida_alkit.data import DatasetData
        from aiida_alkit.profile import PYTHON_CODE, setup_environment

        setup_environment('bench-data-efficiency')
        if not args.verbose:
            import logging

            logging.getLogger('aiida').setLevel(logging.WARNING)
        code = orm.load_code(f'{PYTHON_CODE}@localhost')

        initial = DatasetData.from_atoms(initial_configurations(config['n_initial'], args.seed)).store()
        test_frames = test_configurations(seed=args.seed, **config['test'])
        test = DatasetData.from_atoms(test_frames).store()
        n_initial = len(initial)
        data_s = time.perf_counter() - started
        log(
            f'[data] {len(initial)} initial, {len(test)} test frames at {config["test"]["temperatures"]} K ({data_s:.0f} s)'
        )

        results: dict[str, Any] = {}
        for strategy in strategies:
            overrides = strategy_overrides(config['overrides'], strategy, config['committee_size'])
            result = run_campaign(code, initial, test, test_frames, strategy, overrides, args.seed)
            results[strategy] = result
            log(
                f'[{strategy}] {len(result["curve"])} rounds, labels {[p[0] for p in result["curve"]]}, '
                f'test F RMSE {[p[1] for p in result["curve"]]} meV/Å, '
                f'E RMSE {[p[2] for p in result["curve"]]} meV/atom; {result["wall_s"]:.0f} s '
                f'({time.perf_counter() - started:.0f} s total)'
            )

    def ratio(a: str, b: str, key: str = 'final_force_rmse_mev_per_ang') -> float | None:
        if a in results and b in results and results[b][key]:
            return round(results[a][key] / results[b][key], 3)
        return None

    overrides = config['overrides']
    print(
        json.dumps(
            {
                'benchmark': 'data_efficiency',
                'quick': args.quick,
                'seed': args.seed,
                'system': 'Cu fcc 32 atoms, EMT labels',
                'n_initial': n_initial,
                'n_test': len(test_frames),
                'test_temperatures_K': list(config['test']['temperatures']),
                'rounds': overrides['max_rounds'],
                'batch_size': overrides['select']['parameters']['batch_size'],
                'schedule_K': overrides['schedule']['temperatures'],
                'model': overrides['train']['parameters']['model'],
                'training': overrides['train']['parameters']['training'],
                'explore': {k: overrides['explore']['parameters'][k] for k in ('walkers', 'steps', 'sample_every')},
                'dpgen_committee_size': config['committee_size'],
                'strategies': results,
                'gradient_over_random_final_force_rmse': ratio('gradient', 'random'),
                'gradient_over_dpgen_final_force_rmse': ratio('gradient', 'dpgen'),
                'gradient_over_random_final_energy_rmse': ratio('gradient', 'random', 'final_energy_rmse_mev_per_atom'),
                'gradient_over_dpgen_final_energy_rmse': ratio('gradient', 'dpgen', 'final_energy_rmse_mev_per_atom'),
                'data_s': round(data_s, 1),
                'total_s': round(time.perf_counter() - started, 1),
                'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
            }
        )
    )


if __name__ == '__main__':
    main()
