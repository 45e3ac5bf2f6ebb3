"""Data efficiency (issue 7, item 3): test error against labels spent, for every strategy, over several seeds.

Every campaign is a real ``ActiveLearningWorkChain``, submitted to the AiiDA runner of this process on a throw-away
embedded profile (SQLite storage; the ``alkit-python`` code on a ``localhost`` computer, created by
:func:`aiida_alkit.profile.setup_environment` in a temporary ``AIIDA_PATH``). ``--jobs`` campaigns run at the same
time on that runner (their train/explore/label jobs are separate processes), the others wait for a free slot.

* System: fcc copper, 32-atom cells (2x2x2 conventional, a = 3.61 Å); labels (energy, forces, stress) from ASE's
  EMT calculator (``label.engine = 'ase'``).
* Initial set (per seed): ``n_initial`` labelled cells, rattled by 0.05 Å with the seed, isotropic strains over
  ±2 %; they are also the MD seeds of the exploration.
* Test sets (held out, the same for every seed and strategy): EMT Langevin MD at 1200 K and at 1400 K, like the
  validation sets of seed paper 000 (``aiida_alkit.exploration.reference.langevin_frames``: 5 fs steps, friction
  0.02/fs, one frame every 100 fs after equilibration; separate walkers in their own cells, isotropic strains
  stratified over ±1.8 %). Their union is also the campaigns' ``test_dataset`` (provenance: every potential then
  carries pooled test metrics); the per-temperature errors below are computed here, with the same
  :func:`~aiida_alkit.models.training.evaluate_errors` the train job uses (committees: their mean prediction).
* Schedule: exploration temperatures rising linearly from 300 to 1400 K over the rounds; the same rounds, label
  batch per round (``select.batch_size``), model, training and exploration settings and the same seeds for every
  strategy; ``accurate_fraction`` is 1 so that no campaign stops early on DP-GEN's criterion. A round whose
  selection holds fewer candidates than the batch (window strategies) labels fewer structures; a round selecting
  nothing ends that campaign. Both show up in the label counts.
* Strategy variants (presets of ``aiida_alkit/workflows/protocols/active_learning.yaml``): ``random``, ``dpgen``
  (committee of ``committee_size``), ``gradient_lcmd`` (the ``gradient`` preset
  with ``select.parameters.method = 'lcmd'``), ``gradient_maxdet`` (the ``gradient`` preset), ``alkpu`` (RLEKF with its automatic P_0),
  ``hal``, ``dopt``. With ``--optimizer rlekf`` every single-model variant trains with RLEKF (the alkpu settings), so
  that the selection is all that differs; dpgen keeps its Adam committee. One departure from the presets: DP-GEN's trust window is [0.1, 1.5] eV/Å
  (``--dpgen-window``). The preset's [0.05, 0.15] eV/Å suits converged committees; the small committees here
  disagree by 0.3-0.4 eV/Å (max atom force deviation) on 300 K frames after the first round, so with the preset
  every candidate is "failed", nothing is selected and the campaign ends after one round.

Learning curve of a campaign: one point per round, (labelled configurations the round's potential was trained on,
its force RMSE in meV/Å and energy RMSE in meV/atom on each test set). The structures labelled in the last round are
not trained on (the campaign ends after labelling), so they count in ``labels_spent`` but not on the curve.

Mean and standard deviation over seeds are taken per round (a round some seed did not reach, because its campaign
ended early, averages the others).

Labels to target: on a learning curve (the seed mean, and each seed), the number of labels at which the 1400 K
(``--target-test-K``) test force RMSE first falls to ``--target-force-rmse`` (default 0.1 eV/Å, between the first
and the last rounds' errors of the Adam-trained strategies): the label count of the first
round at or below the target, linearly interpolated between that round and the one before (the initial round's
count when it is below already), ``null`` when no round reaches it. Ratios of labels to target
(``labels_ratio_gradient_vs_random``, ``..._vs_dpgen``; gradient is the LCMD variant, the MaxDet one is reported as
``labels_ratio_gradient_maxdet_vs_*``): when a strategy never reaches the target, its largest trained label count
is used as a lower bound of what it needs (``<name>_reached_target: false``), so the ratio is an upper bound (the
reference missed) or a lower bound (gradient missed), stated in ``..._kind``. Ratios at equal labels, always
defined: test RMSE of gradient over that of the reference, per test set, both seed-mean curves read (linearly
interpolated) at the largest label count both reached (the final budget when both labelled every round).

Output: progress lines, then ONE JSON line per strategy variant and a final summary JSON line; a PNG of the
learning curves (mean ± standard deviation over seeds, one panel per test temperature) at ``--plot``.
``--quick``: every variant, one seed, two rounds, tiny model and short MD (a smoke test, minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import pathlib
import platform
import tempfile
import time
from typing import Any

import numpy as np

LATTICE = 3.61  # Å
TIMESTEP_FS = 5.0
FRICTION_PER_FS = 0.02
FRAME_INTERVAL = 20  # MD steps between kept test frames (100 fs)
TEST_STRAIN = 0.018  # isotropic strains of the test walkers' cells are stratified over ±1.8 %
TEST_SEED = 10_000  # walker seeds of the test sets: disjoint from anything the campaigns use
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / 'out' / 'data_efficiency.png'

#: variant name -> (strategy preset, overrides merged after the preset)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    'random': ('random', {}),
    'dpgen': ('dpgen', {}),
    'gradient_lcmd': ('gradient', {'select': {'parameters': {'method': 'lcmd'}}}),
    'gradient_maxdet': ('gradient', {}),
    'alkpu': ('alkpu', {}),
    'hal': ('hal', {}),
    'dopt': ('dopt', {}),
}
GRADIENT, GRADIENT_MAXDET = 'gradient_lcmd', 'gradient_maxdet'
REFERENCES = ('random', 'dpgen')


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that sizes the benchmark; :meth:`quick` is the smoke-test variant."""

    rounds: int = 5
    batch_size: int = 6  # labels per round
    n_initial: int = 4
    schedule_K: tuple[float, float] = (300.0, 1400.0)
    test_temperatures_K: tuple[int, ...] = (1200, 1400)
    test_walkers: int = 3  # per test temperature
    test_frames_per_walker: int = 10
    test_equilibration: int = 200
    model: tuple[tuple[str, Any], ...] = (('cutoff', 4.0), ('n_basis', 5), ('n_radial', 3), ('hidden_widths', [32, 32]))
    # Adam converged on these set sizes (1000 epochs / batch 4: 54-68 meV/Å on 28 random frames at 1400 K, against
    # 222 meV/Å after 100 epochs / batch 2, which left the model, not the data, as the limit)
    epochs: int = 800
    train_batch_size: int = 4
    committee_size: int = 3
    dpgen_window: tuple[float, float] = (0.1, 1.5)  # eV/Å, see the module docstring
    rlekf: tuple[tuple[str, Any], ...] = (('epochs', 5), ('block_size', 1024))
    walkers: int = 4
    steps: int = 100
    sample_every: int = 5
    optimizer: str = 'preset'  # 'preset': each strategy's own; 'rlekf': every single-model strategy trains with RLEKF

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=2,
            batch_size=3,
            test_walkers=1,
            test_frames_per_walker=6,
            test_equilibration=100,
            model=(('cutoff', 4.0), ('n_basis', 4), ('n_radial', 2), ('hidden_widths', [8, 8])),
            epochs=40,
            committee_size=2,
            rlekf=(('epochs', 2), ('block_size', 256)),
            walkers=2,
            steps=20,
        )

    def schedule(self) -> list[float]:
        """Exploration temperature of every round, rising linearly (K)."""
        return [round(float(t), 1) for t in np.linspace(*self.schedule_K, self.rounds)]

    def overrides(self) -> dict[str, Any]:
        """Overrides shared by every strategy (merged after the ``fast`` protocol and the strategy preset)."""
        return {
            'max_rounds': self.rounds,
            'accurate_fraction': 1.0,
            'train': {
                'parameters': {
                    'model': dict(self.model),
                    'training': {'epochs': self.epochs, 'batch_size': self.train_batch_size},
                    'rlekf': dict(self.rlekf),  # read by RLEKF training (alkpu) only
                    'num_threads': 1,
                    'device': 'cpu',
                }
            },
            'explore': {
                'parameters': {
                    'walkers': self.walkers,
                    'steps': self.steps,
                    'sample_every': self.sample_every,
                    'num_threads': 1,
                    'device': 'cpu',
                }
            },
            'select': {'parameters': {'batch_size': self.batch_size}},
            'schedule': {'temperatures': self.schedule()},
        }

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data['model'], data['rlekf'] = dict(self.model), dict(self.rlekf)
        data['schedule_temperatures_K'] = self.schedule()
        return data


def variant_overrides(settings: Settings, name: str) -> tuple[str, dict[str, Any]]:
    """(strategy preset, overrides) of a variant. Features stay as the presets choose them: the ``fast`` protocol's
    64-dimensional sketch for gradient, last-layer features for hal and dopt, none for the others."""
    from aiida_alkit.workflows.labelling import deep_merge

    strategy, extra = VARIANTS[name]
    overrides = deep_merge(settings.overrides(), extra)
    if strategy == 'dpgen':
        lo, hi = settings.dpgen_window
        overrides = deep_merge(
            overrides,
            {
                'train': {'parameters': {'committee_size': settings.committee_size}},
                'select': {'parameters': {'lo': lo, 'hi': hi}},
            },
        )
    if strategy != 'alkpu' and settings.optimizer == 'rlekf' and strategy != 'dpgen':
        overrides['train']['parameters']['optimizer'] = 'rlekf'  # the selection is then all that differs
    elif strategy != 'alkpu':
        overrides['train']['parameters'].pop('rlekf')
    return strategy, overrides


# ---------------------------------------------------------------------------------------------------- data
def copper_cell(isotropic_strain: float):
    from ase.build import bulk

    atoms = bulk('Cu', 'fcc', a=LATTICE, cubic=True) * (2, 2, 2)
    atoms.set_cell(atoms.cell[:] * (1.0 + isotropic_strain), scale_atoms=True)
    return atoms


def initial_configurations(n: int, seed: int) -> list[Any]:
    """``n`` EMT-labelled, rattled 32-atom cells with isotropic strains spread over ±2 %."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import with_labels

    frames = []
    for index, strain in enumerate(np.linspace(-0.02, 0.02, n) if n > 1 else np.zeros(1)):
        atoms = copper_cell(float(strain))
        atoms.rattle(stdev=0.05, seed=seed * 100 + index)
        frames.append(with_labels(atoms, EMT))
    return frames


def test_sets(settings: Settings) -> dict[str, list[Any]]:
    """EMT Langevin frames per test temperature (key: ``'1200'``), from separate walkers in strained cells."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    sets: dict[str, list[Any]] = {}
    walker_seed = TEST_SEED
    strains = np.linspace(-TEST_STRAIN, TEST_STRAIN, settings.test_walkers) if settings.test_walkers > 1 else [0.0]
    for temperature in settings.test_temperatures_K:
        frames: list[Any] = []
        for strain in strains:
            walker_seed += 1
            frames += langevin_frames(
                copper_cell(float(strain)), EMT, temperature, settings.test_frames_per_walker, FRAME_INTERVAL,
                walker_seed, settings.test_equilibration, timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
            )  # fmt: skip
        sets[str(temperature)] = frames
    return sets


# ---------------------------------------------------------------------------------------------------- campaigns
@dataclasses.dataclass
class Campaign:
    variant: str
    seed: int
    builder: Any
    node: Any = None
    wall_s: float = 0.0


def run_campaigns(campaigns: list[Campaign], jobs: int, on_finished) -> None:
    """Submit the campaigns to this process's runner, at most ``jobs`` at a time; ``on_finished(campaign)`` after each."""
    from aiida.engine.utils import loop_scope
    from aiida.manage import get_manager

    runner = get_manager().create_runner(communicator=None)  # a local runner, as ``run_get_node`` makes one
    queue = list(campaigns)

    async def worker() -> None:
        while queue:
            campaign = queue.pop(0)
            started = time.perf_counter()
            campaign.node = runner.submit(campaign.builder)
            while not campaign.node.is_terminated:
                await asyncio.sleep(0.5)
            campaign.wall_s = time.perf_counter() - started
            on_finished(campaign)

    async def all_workers() -> None:
        await asyncio.gather(*(worker() for _ in range(max(1, jobs))))

    try:
        with loop_scope(runner.loop):
            runner.loop.run_until_complete(all_workers())
    finally:
        runner.close()


def job_wall_times(workchain) -> list[float]:
    """Wall time of every CalcJob a restart work chain ran: the job's own ``wall_time_s`` (results.json), else the
    CalcJob node's lifetime (creation to last change)."""
    from aiida import orm

    times = []
    for calc in workchain.called:
        if not isinstance(calc, orm.CalcJobNode):
            continue
        recorded = None
        if 'retrieved' in calc.outputs:
            try:
                recorded = json.loads(calc.outputs.retrieved.base.repository.get_object_content('results.json'))
                recorded = recorded.get('wall_time_s')
            except (FileNotFoundError, OSError, ValueError):
                recorded = None
        times.append(float(recorded) if recorded is not None else (calc.mtime - calc.ctime).total_seconds())
    return times


def test_errors(potential, sets: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{test set: (force RMSE eV/Å, energy RMSE eV/atom)} of a stored potential (GM-NN or committee mean)."""
    from aiida_alkit.jobs.explore import load_model
    from aiida_alkit.models.training import evaluate_errors

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / 'potential.pt'
        potential.export(path)
        model = load_model(path, 'cpu')
    errors = {}
    for key, arrays in sets.items():
        result = evaluate_errors(model, arrays)
        errors[key] = (float(result['forces_rmse']), float(result['energy_rmse']))
    return errors


def campaign_result(campaign: Campaign, sets: dict[str, Any]) -> dict[str, Any]:
    """Learning curve, label counts and training cost of one finished campaign."""
    node = campaign.node
    if not node.is_finished_ok:
        raise RuntimeError(
            f'{campaign.variant} seed {campaign.seed}: campaign {node.pk} failed: [{node.exit_status}] '
            f'{node.exit_message}'
        )
    report = node.outputs.report.get_dict()
    trains = {
        link.link_label: link.node
        for link in node.base.links.get_outgoing().all()
        if getattr(link.node, 'process_label', None) == 'TrainWorkChain'
    }
    labels, models, train_s = [], [], []
    curves: dict[str, dict[str, list[float]]] = {key: {'force': [], 'energy': []} for key in sets}
    for entry in report['rounds']:
        train = trains[f'train_round_{entry["round"]}']
        labels.append(len(train.inputs.train.dataset))
        models.append(int(train.inputs.train.parameters.get_dict().get('committee_size', 1)))
        train_s.append(sum(job_wall_times(train)))
        for key, (force, energy) in test_errors(train.outputs.potential, sets).items():
            curves[key]['force'].append(1e3 * force)
            curves[key]['energy'].append(1e3 * energy)
    return {
        'campaign_pk': node.pk,
        'labels': labels,  # labelled configurations each round's potential was trained on
        'labels_spent': labels[0] + sum(int(entry.get('labelled', 0)) for entry in report['rounds']),
        'selected_per_round': [int(entry.get('selected', 0)) for entry in report['rounds']],
        'pool_per_round': [  # explored candidates: (accurate, candidate, failed) as the selection classed them
            [int(entry.get(key) or 0) for key in ('n_accurate', 'n_candidate', 'n_failed')]
            for entry in report['rounds']
        ],
        'models_per_round': models,
        'curves': curves,  # meV/Å and meV/atom per round
        'train_s_per_round': train_s,
        'stop_reason': report.get('stop_reason'),
        'wall_s': campaign.wall_s,
    }


# ---------------------------------------------------------------------------------------------------- analysis
def labels_to_target(labels: list[float], rmse: list[float], target: float) -> float | None:
    """Labels at which ``rmse`` first reaches ``target`` (linear interpolation between rounds), None if never."""
    for index, (count, value) in enumerate(zip(labels, rmse, strict=True)):
        if value <= target:
            if index == 0:
                return float(count)
            before, previous = labels[index - 1], rmse[index - 1]
            return float(before + (previous - target) / (previous - value) * (count - before))
    return None


def mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per-round mean and standard deviation over seeds (rounds a seed did not run are left out)."""
    length = max(len(row) for row in rows)
    means, stds = [], []
    for index in range(length):
        values = np.array([row[index] for row in rows if len(row) > index], dtype=np.float64)
        means.append(float(values.mean()))
        stds.append(float(values.std()))
    return means, stds


def rounded(values, digits: int = 2):
    if isinstance(values, dict):
        return {key: rounded(value, digits) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [rounded(value, digits) for value in values]
    if isinstance(values, float):
        return round(values, digits) if math.isfinite(values) else None
    return values


def summarise_variant(
    name: str, results: dict[int, dict[str, Any]], target_mev: float, target_key: str
) -> dict[str, Any]:
    """The JSON record of one variant over its seeds (curves as mean, std and per seed)."""
    strategy = VARIANTS[name][0]
    seeds = sorted(results)
    first = results[seeds[0]]
    labels_mean, labels_std = mean_std([results[s]['labels'] for s in seeds])
    test: dict[str, Any] = {}
    for key in first['curves']:
        test[key] = {}
        for quantity, unit in (('force', 'force_rmse_mev_per_ang'), ('energy', 'energy_rmse_mev_per_atom')):
            rows = [results[s]['curves'][key][quantity] for s in seeds]
            mean, std = mean_std(rows)
            test[key][unit] = {
                'mean': mean,
                'std': std,
                'per_seed': {str(s): r for s, r in zip(seeds, rows, strict=True)},
            }
    force_mean = test[target_key]['force_rmse_mev_per_ang']['mean']
    reached = labels_to_target(labels_mean, force_mean, target_mev)
    per_seed_target = {
        str(s): labels_to_target(results[s]['labels'], results[s]['curves'][target_key]['force'], target_mev)
        for s in seeds
    }
    train_total = [sum(results[s]['train_s_per_round']) for s in seeds]
    return {
        'benchmark': 'data_efficiency',
        'strategy': name,
        'preset': strategy,
        'seeds': seeds,
        'models_trained_per_round': first['models_per_round'][0],
        'labels': {'mean': labels_mean, 'std': labels_std, 'per_seed': {str(s): results[s]['labels'] for s in seeds}},
        'labels_spent': {str(s): results[s]['labels_spent'] for s in seeds},
        'selected_per_round': {str(s): results[s]['selected_per_round'] for s in seeds},
        'accurate_candidate_failed_per_round': {str(s): results[s]['pool_per_round'] for s in seeds},
        'test': test,
        'labels_to_target': {
            'test_set_K': int(target_key),
            'target_force_rmse_mev_per_ang': target_mev,
            'mean_curve': reached,
            'reached': reached is not None,
            'largest_trained_labels': labels_mean[-1],
            'per_seed': per_seed_target,
        },
        'train_s': {
            'total': sum(train_total),
            'mean_per_campaign': float(np.mean(train_total)),
            'per_seed': {str(s): t for s, t in zip(seeds, train_total, strict=True)},
            'per_round_mean': mean_std([results[s]['train_s_per_round'] for s in seeds])[0],
        },
        'campaign_wall_s': {str(s): results[s]['wall_s'] for s in seeds},
        'stop_reason': {str(s): results[s]['stop_reason'] for s in seeds},
        'campaign_pks': {str(s): results[s]['campaign_pk'] for s in seeds},
    }


def labels_ratio(ours: dict[str, Any], reference: dict[str, Any]) -> tuple[float | None, str]:
    """Ratio of labels to target (ours / reference) and whether it is exact or a bound (see the docstring)."""
    mine, theirs = ours['labels_to_target'], reference['labels_to_target']
    if mine['reached'] and theirs['reached']:
        return mine['mean_curve'] / theirs['mean_curve'], 'exact'
    if mine['reached']:
        return mine['mean_curve'] / theirs['largest_trained_labels'], 'upper_bound'
    if theirs['reached']:
        return mine['largest_trained_labels'] / theirs['mean_curve'], 'lower_bound'
    return None, 'undefined'


def summary(variants: dict[str, dict[str, Any]], settings: Settings, args, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        'benchmark': 'data_efficiency_summary',
        'quick': args.quick,
        'seeds': args.seeds,
        'target_force_rmse_ev_per_ang': args.target_force_rmse,
        'target_test_set_K': args.target_test_K,
        'labels_to_target_definition': (
            'labels of the first round whose test force RMSE (seed-mean curve) is <= the target, linearly '
            'interpolated from the round before; a strategy that never reaches it counts with its largest trained '
            'label count as a lower bound (ratio kind upper_bound / lower_bound)'
        ),
        'gradient_variant': GRADIENT,
    }
    for name in (GRADIENT, GRADIENT_MAXDET, *REFERENCES):
        if name in variants:
            out[f'{name}_reached_target'] = variants[name]['labels_to_target']['reached']
            out[f'{name}_labels_to_target'] = variants[name]['labels_to_target']['mean_curve']
    out['labels_to_target'] = {name: record['labels_to_target']['mean_curve'] for name, record in variants.items()}
    for ours, prefix in ((GRADIENT, 'labels_ratio_gradient'), (GRADIENT_MAXDET, 'labels_ratio_gradient_maxdet')):
        for reference in REFERENCES:
            if ours in variants and reference in variants:
                ratio, kind = labels_ratio(variants[ours], variants[reference])
                out[f'{prefix}_vs_{reference}'] = ratio
                out[f'{prefix}_vs_{reference}_kind'] = kind
    # at equal labels: both seed-mean curves read (linearly) at the largest label count both reached
    for reference in REFERENCES:
        if GRADIENT not in variants or reference not in variants:
            continue
        ours, theirs = variants[GRADIENT], variants[reference]
        common = min(ours['labels']['mean'][-1], theirs['labels']['mean'][-1])
        for quantity in ('force_rmse_mev_per_ang', 'energy_rmse_mev_per_atom'):
            ratios: dict[str, Any] = {'labels': common}
            for key in ours['test']:
                mine = np.interp(common, ours['labels']['mean'], ours['test'][key][quantity]['mean'])
                other = np.interp(common, theirs['labels']['mean'], theirs['test'][key][quantity]['mean'])
                ratios[key] = float(mine / other)
            out[f'{quantity.split("_")[0]}_rmse_ratio_gradient_vs_{reference}_at_equal_labels'] = ratios
    out['labels_spent_mean'] = {
        name: float(np.mean(list(record['labels_spent'].values()))) for name, record in variants.items()
    }
    out['train_s_total'] = {name: record['train_s']['total'] for name, record in variants.items()}
    out['settings'] = settings.as_dict()
    out.update(extra)
    return out


def plot_curves(variants: dict[str, dict[str, Any]], target_mev: float, target_key: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keys = list(next(iter(variants.values()))['test'])
    figure, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), squeeze=False, sharey=True)
    for axis, key in zip(axes[0], keys, strict=True):
        for name, record in variants.items():
            labels = np.array(record['labels']['mean'])
            force = record['test'][key]['force_rmse_mev_per_ang']
            mean, std = np.array(force['mean']), np.array(force['std'])
            models = record['models_trained_per_round']
            label = name if models == 1 else f'{name} ({models} models/round)'
            line = axis.plot(labels, mean, marker='o', markersize=3, label=label)[0]
            axis.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
        if key == target_key:
            axis.axhline(target_mev, color='black', linestyle=':', linewidth=1, label='target')
        axis.set_title(f'EMT MD test set, {key} K')
        axis.set_xlabel('labelled configurations trained on')
        axis.set_yscale('log')
        axis.grid(alpha=0.3, which='both')
    axes[0][0].set_ylabel('test force RMSE (meV/Å)')
    axes[0][-1].legend(fontsize=8)
    n_seeds = len(next(iter(variants.values()))['seeds'])
    figure.suptitle(f'Cu EMT active learning: mean ± std over {n_seeds} seed(s)')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smoke test: every variant, 1 seed, 2 rounds, tiny')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='campaign seeds (default 0 1 2; quick: 0)')
    parser.add_argument('--strategies', default=','.join(VARIANTS), help='comma-separated subset of the variants')
    parser.add_argument('--target-force-rmse', type=float, default=0.1, help='force RMSE target, eV/Å')
    parser.add_argument(
        '--dpgen-window',
        type=float,
        nargs=2,
        metavar=('LO', 'HI'),
        default=None,
        help='DP-GEN trust window, eV/Å (default 0.1 1.5; the preset is 0.05 0.15)',
    )
    parser.add_argument('--target-test-K', type=int, default=1400, help='test set the target applies to (K)')
    parser.add_argument(
        '--optimizer',
        choices=('preset', 'rlekf'),
        default='preset',
        help="'preset': every strategy trains as its preset says (Adam; RLEKF for alkpu); 'rlekf': every "
        'single-model strategy trains with RLEKF as alkpu does, so that only the selection differs (dpgen keeps its '
        'Adam committee: committees train with Adam only)',
    )
    parser.add_argument('--jobs', type=int, default=2, help='campaigns running at the same time')
    parser.add_argument('--plot', type=pathlib.Path, default=DEFAULT_PLOT, help='learning-curve PNG')
    parser.add_argument('--verbose', action='store_true', help="show the work chains' report lines")
    args = parser.parse_args()
    settings = Settings.quick() if args.quick else Settings()
    if args.dpgen_window:
        settings = dataclasses.replace(settings, dpgen_window=tuple(args.dpgen_window))
    settings = dataclasses.replace(settings, optimizer=args.optimizer)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    names = [name.strip() for name in args.strategies.split(',') if name.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f'unknown strategies {unknown}; choose from {list(VARIANTS)}')
    if args.target_test_K not in settings.test_temperatures_K:
        parser.error(f'--target-test-K must be one of {settings.test_temperatures_K}')
    target_key, target_mev = str(args.target_test_K), 1e3 * args.target_force_rmse
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as home:
        os.environ['AIIDA_PATH'] = home  # before AiiDA is imported
        import logging

        from aiida import orm

        from aiida_alkit.data import DatasetData
        from aiida_alkit.io.arrays import ConfigurationArrays
        from aiida_alkit.profile import PYTHON_CODE, setup_environment
        from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

        setup_environment('bench-data-efficiency')
        if not args.verbose:
            logging.getLogger('aiida').setLevel(logging.WARNING)
        code = orm.load_code(f'{PYTHON_CODE}@localhost')
        label = {'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}}

        frames = test_sets(settings)
        sets = {key: ConfigurationArrays.from_atoms(value) for key, value in frames.items()}
        test = DatasetData.from_atoms([frame for value in frames.values() for frame in value]).store()
        initial = {seed: DatasetData.from_atoms(initial_configurations(settings.n_initial, seed)).store()
                   for seed in args.seeds}  # fmt: skip
        data_s = time.perf_counter() - started
        log(f'[data] {settings.n_initial} initial per seed, test {[len(v) for v in frames.values()]} frames at '
            f'{list(frames)} K ({data_s:.0f} s)')  # fmt: skip

        campaigns = []
        for seed in args.seeds:
            for name in names:
                strategy, overrides = variant_overrides(settings, name)
                builder = ActiveLearningWorkChain.get_builder_from_protocol(
                    code, initial[seed], protocol='fast', strategy=strategy,
                    overrides={**overrides, 'seed': seed}, label=label,
                )  # fmt: skip
                builder.test_dataset = test
                builder.metadata.label = f'bench-data-efficiency {name} seed {seed}'
                campaigns.append(Campaign(name, seed, builder))

        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
        failures: dict[str, dict[str, str]] = {}

        def finished(campaign: Campaign) -> None:
            try:
                result = campaign_result(campaign, sets)
            except RuntimeError as exc:  # keep the other campaigns going; reported in the summary
                failures.setdefault(campaign.variant, {})[str(campaign.seed)] = str(exc)
                log(f'[{campaign.variant} seed {campaign.seed}] FAILED: {exc}')
                return
            results[campaign.variant][campaign.seed] = result
            log(
                f'[{campaign.variant} seed {campaign.seed}] labels {result["labels"]}, test F RMSE '
                + ', '.join(f'{key} K {rounded(curve["force"], 1)}' for key, curve in result['curves'].items())
                + f' meV/Å; train {sum(result["train_s_per_round"]):.0f} s, campaign {campaign.wall_s:.0f} s '
                f'({time.perf_counter() - started:.0f} s total)'
            )

        run_campaigns(campaigns, args.jobs, finished)
        campaigns_s = time.perf_counter() - started - data_s

    variants = {name: summarise_variant(name, results[name], target_mev, target_key) for name in names if results[name]}
    for record in variants.values():
        print(json.dumps(rounded(record)), flush=True)
    plot_curves(variants, target_mev, target_key, args.plot)
    extra = {
        'failed_campaigns': failures,
        'plot': str(args.plot),
        'jobs': args.jobs,
        'data_s': data_s,
        'campaigns_s': campaigns_s,
        'total_s': time.perf_counter() - started,
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
    }
    print(json.dumps(rounded(summary(variants, settings, args, extra), 3)), flush=True)


if __name__ == '__main__':
    main()
