"""Campaign benchmark (issue "Evidence that active learning pays", item 2): test error against labels spent.

Every campaign is a real ``ActiveLearningWorkChain``, submitted to the AiiDA runner of this process on a throw-away
embedded profile (SQLite storage; the ``alkit-python`` code on a ``localhost`` computer, created by
:func:`aiida_alkit.profile.setup_environment` in a temporary ``AIIDA_PATH``). ``--jobs`` campaigns run at the same
time on that runner (their train/explore/label jobs are separate processes), the others wait for a free slot.

* System: fcc copper; labels (energy, forces, stress) from ASE's EMT calculator (``label.engine = 'ase'``).
* Initial set (per seed), as a user starts: ``n_initial`` labelled 32-atom bulk cells (2x2x2 conventional,
  a = 3.61 Å), rattled by 0.05 Å with the seed, isotropic strains over ±2 %. The exploration's MD seeds are the
  campaign's training set (the work chain's default): these cells and whatever the campaign labelled since. No
  vacancy, surface or strongly strained cell is given to any campaign.
* Test set (held out, the same for every seed and variant; EMT Langevin MD in their own cells, 5 fs steps, friction
  0.02/fs, centre of mass fixed, one frame every ``test_interval`` steps after ``test_equilibration`` steps, walker
  seeds disjoint from anything the campaigns use), one condition per thing a user wants the potential for
  (:data:`CONDITIONS`): bulk Cu-32 at 300, 900 and 1200 K; the liquid at 1800 K (``melt_1800K``: each walker's
  cell is first melted for ``melt_steps`` steps at 4000 K, then equilibrated at 1800 K); a vacancy (Cu-31) at
  600 K; a (111) slab (3x3 surface cell, 4 layers, 36 atoms, 10 Å of vacuum between images, periodic in all
  directions) at 600 K; bulk compressed and expanded by 4 % (isotropic) at 600 K. Bulk-like walkers other than the
  strained ones get isotropic strains stratified over ±1 %. A 32-atom crystal does not melt by itself in MD of
  this length (superheating: at 1600-2000 K its mean-square displacement stays at 0.16-0.21 Å² for 15 ps),
  hence the pre-melt; the test-set line reports, per condition, the mean averaged local order q̄6 (see coverage
  below; perfect fcc 0.575) and each walker's mean-square displacement between its first and last frame, which
  tell the liquid from the hot crystal. The union of all conditions is also the campaigns' ``test_dataset``
  (provenance: every potential carries pooled test metrics); the per-condition errors are computed here with the
  same :func:`~aiida_alkit.models.training.evaluate_errors` the train job uses (committees: their mean prediction).
* Schedule: exploration temperatures rising linearly from 300 K to 1800 K (the test melt) over the rounds; the
  same rounds, label batch per round (``select.batch_size``), model, training and exploration settings (NVT
  Langevin MD of the ``fast`` protocol: 2 fs steps, ``walkers`` x ``steps``, a candidate every ``sample_every``
  steps) and the same seeds for every variant; ``accurate_fraction`` is 1 so that no campaign stops early on
  DP-GEN's criterion. A round whose selection holds fewer candidates than the batch (the gradient preset's
  ``uncertain_above``, DP-GEN's window) labels fewer structures; a round selecting nothing moves on to the next
  temperature without labelling (the last one ends the campaign). Both show up in the label counts.
* Variants (default; presets of ``aiida_alkit/workflows/protocols/active_learning.yaml``):

  - ``gradient``: the preset as it is: MD biased by the gradient-feature posterior uncertainty, walkers stopped at
    a calibrated 1.5 eV/Å, MaxDet on the GP kernel among the candidates above a calibrated 0.15 eV/Å;
  - ``gradient_unbiased``: the same with ``explore.parameters.bias.kind = 'none'`` (the calibrated stop and the
    scores still work). The bias strengths are set to zero too (``relative_tau = tau = 0``): the explore job uses
    the calibration term as its bias term whenever ``stop.uncertainty`` is set, with the strength the bias settings
    give, so ``kind: none`` alone would keep the preset's adaptive τ_r = 0.2, i.e. still bias the MD;
  - ``random_same_exploration``: the gradient preset's exploration (biased MD, same stop) but
    ``select.parameters.method = 'random'``, without ``uncertain_above`` (and ``posterior``);
  - ``dpgen``: committee of ``committee_size`` (4, as the preset) Adam models, unbiased MD, trust window on the max
    atom force deviation of [0.1, 1.5] eV/Å (``--dpgen-window``) instead of the preset's [0.05, 0.15]: the preset's
    window suits converged committees; small committees trained on a few labels disagree by 0.3-0.4 eV/Å on 300 K
    frames after the first round, so with it every candidate is "failed", nothing is selected and the campaign
    labels nothing after round 1.

  ``--variants`` also accepts the earlier benchmark's ``random`` (the random preset: unbiased MD, no features),
  ``gradient_lcmd``, ``alkpu``, ``hal`` and ``dopt``. With ``--optimizer rlekf`` every single-model variant trains
  with RLEKF (the alkpu settings); dpgen keeps its Adam committee.

Learning curve of a campaign: one point per round, (labelled configurations the round's potential was trained on,
its force RMSE in meV/Å and energy RMSE in meV/atom on each test condition). ``worst``: per seed and round, the
largest RMSE over the conditions (force and energy separately); ``all``: the pooled RMSE over the whole test set.
The structures labelled in the last round are not trained on (the campaign ends after labelling), so they count in
``labels_spent`` but not on the curve. Mean and standard deviation over seeds are taken per round (a round some seed
did not reach, because its campaign ended early, averages the others).

Labels to target: on the seed-mean curve of ``--target-on`` (default ``worst``: the worst-condition force RMSE;
``all`` or a condition name), the number of labels at which the force RMSE first falls to ``--target-force-rmse``:
the label count of the first round at or below the target, linearly interpolated between that round and the one
before (the initial round's count when it is below already), ``null`` when no round reaches it. Ratios of labels to
target (``labels_ratio_gradient_vs_<reference>``): when a strategy never reaches the target, its largest trained
label count is used as a lower bound of what it needs (``<name>_reached_target: false``), so the ratio is an upper
bound (the reference missed) or a lower bound (gradient missed), stated in ``..._kind``. Ratios at equal labels,
always defined: RMSE of gradient over that of the reference, both seed-mean curves read (linearly interpolated) at
the largest label count both reached (``worst_condition_rmse_ratio_gradient_vs_random`` / ``_vs_unbiased`` /
``_vs_dpgen`` on the worst-condition force RMSE; per condition in ``force_rmse_ratio_gradient_vs_*``).

Coverage of the explored configurations (seed 003's tree metric, :func:`aiida_alkit.exploration.analysis.coverage`,
2 splits per dimension, height 4) of every candidate of every round's pool (the explore jobs' ``pool`` outputs), in
a two-dimensional collective-variable space with bounds fixed before any run: the EMT potential energy per atom
above that of the perfect crystal (a = 3.61 Å), [0, 0.8] eV/atom (how far from equilibrium the MD went), and the
mean averaged local bond order q̄6 (Lechner-Dellago: Steinhardt's q6 of each atom averaged with its neighbours'
within 3.08 Å, between the first and second fcc shells), [0, 0.7] (0.575 in the perfect crystal, about 0.45 in the
crystal at 1800 K, 0.22 in the liquid). ``coverage_biased`` is the gradient variant's (seed mean),
``coverage_unbiased`` the gradient_unbiased one's; every variant's is in its line.

Output: progress lines, a test-set JSON line, ONE JSON line per variant and a final summary JSON line; PNGs of the
learning curves (mean ± standard deviation over seeds, one panel per condition, worst and all) at ``--plot`` and of
the explored collective variables (``<plot>_coverage.png``). ``--quick``: every default variant, one seed, two
rounds, tiny model, short MD, one walker of three frames per test condition (a smoke test, minutes).
``--epoch-check``: the method-independent convergence check that fixed ``epochs`` (no campaign): the model trained
on 100 EMT frames of bulk MD over the schedule's temperatures (2 walkers at each of 5 temperatures from 300 to 1800 K,
10 % for validation, walker seeds of their own) for each of ``--check-epochs`` epochs, errors on the test conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time
from typing import Any

import numpy as np

LATTICE = 3.61  # Å
TIMESTEP_FS = 5.0
FRICTION_PER_FS = 0.02
TEST_SEED = 10_000  # walker seeds of the test sets: disjoint from anything the campaigns use
CHECK_SEED = 20_000  # walker seeds of the epoch check's training frames
MELT_TEMPERATURE_K = 4000.0  # the melt walkers first melt their cell at this temperature (Settings.melt_steps)
BULK_STRAIN = 0.01  # isotropic strains of the bulk-like test walkers (not the strained ones) stratified over ±1 %
SLAB_VACUUM = 5.0  # Å on each side of the slab: 10 Å between periodic images
Q6_CUTOFF = 3.08  # Å, between the first (2.55 Å) and second (3.61 Å) neighbour shells of fcc copper
CV_NAMES = ('energy_above_fcc_ev_per_atom', 'q6_bar')
CV_BOUNDS = ((0.0, 0.8), (0.0, 0.7))  # fixed before any run (see the module docstring)
COVERAGE_SPLITS, COVERAGE_HEIGHT = 2, 4
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / 'out' / 'data_efficiency.png'


@dataclasses.dataclass(frozen=True)
class Condition:
    """One test condition.

    :param cell: ``'bulk'`` (Cu-32), ``'vacancy'`` (Cu-31), ``'slab'`` ((111), 36 atoms) or ``'melt'`` (Cu-32
        melted at :data:`MELT_TEMPERATURE_K` first).
    :param strain: isotropic strain of every walker's cell; None: stratified over ±:data:`BULK_STRAIN` (none for the
        slab).
    """

    name: str
    cell: str
    temperature_K: float
    strain: float | None = None


CONDITIONS = (
    Condition('bulk_300K', 'bulk', 300.0),
    Condition('bulk_900K', 'bulk', 900.0),
    Condition('bulk_1200K', 'bulk', 1200.0),
    Condition('melt_1800K', 'melt', 1800.0),
    Condition('vacancy_600K', 'vacancy', 600.0),
    Condition('slab111_600K', 'slab', 600.0),
    Condition('compressed_4pct_600K', 'bulk', 600.0, -0.04),
    Condition('expanded_4pct_600K', 'bulk', 600.0, 0.04),
)
WORST, ALL = 'worst', 'all'

#: variant name -> (strategy preset, overrides merged after the preset, select parameters removed afterwards)
VARIANTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    'gradient': ('gradient', {}, ()),
    'gradient_unbiased': (
        'gradient',
        {'explore': {'parameters': {'bias': {'kind': 'none', 'relative_tau': 0.0, 'tau': 0.0}}}},
        (),
    ),
    'random_same_exploration': ('gradient', {'select': {'parameters': {'method': 'random'}}}, ('uncertain_above', 'posterior')),
    'dpgen': ('dpgen', {}, ()),
    # the earlier benchmark's variants, selectable with --variants
    'random': ('random', {}, ()),
    'gradient_lcmd': ('gradient', {'select': {'parameters': {'method': 'lcmd'}}}, ()),
    'alkpu': ('alkpu', {}, ()),
    'hal': ('hal', {}, ()),
    'dopt': ('dopt', {}, ()),
}  # fmt: skip
DEFAULT_VARIANTS = ('gradient', 'gradient_unbiased', 'random_same_exploration', 'dpgen')
GRADIENT = 'gradient'
#: reference variants of the summary ratios: key suffix -> variant
REFERENCES = {'random': 'random_same_exploration', 'unbiased': 'gradient_unbiased', 'dpgen': 'dpgen'}
#: the issue's targets (reported with the measured values, never used to tune anything)
TARGETS = {
    'worst_condition_rmse_ratio_gradient_vs_random': 0.7,
    'worst_condition_rmse_ratio_gradient_vs_unbiased': 1.0,
    'labels_ratio_gradient_vs_dpgen': 1.0,
}


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that sizes the benchmark; :meth:`quick` is the smoke-test variant."""

    rounds: int = 10
    batch_size: int = 11  # labels per round: 8 + 10 x 11 = 118 labels spent, the last potential trained on 107
    n_initial: int = 8
    schedule_K: tuple[float, float] = (300.0, 1800.0)
    test_walkers: int = 3  # per test condition
    test_frames_per_walker: int = 10
    test_interval: int = 20  # MD steps between kept test frames (100 fs)
    test_equilibration: int = 200
    melt_steps: int = 400  # steps at MELT_TEMPERATURE_K that melt a melt walker's cell (2 ps)
    model: tuple[tuple[str, Any], ...] = (('cutoff', 4.0), ('n_basis', 5), ('n_radial', 3), ('hidden_widths', [32, 32]))
    # Adam epochs: 400, a budget choice (see --epoch-check and benchmarks/results/README.md): on 90 frames the test
    # force RMSE still falls by 14-17 % from 400 to 800 epochs, but 800 would make the full run about 9 h
    epochs: int = 400
    train_batch_size: int = 4
    committee_size: int = 4
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
            n_initial=4,
            test_walkers=1,
            test_frames_per_walker=3,
            test_interval=10,
            test_equilibration=40,
            melt_steps=60,
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
        data['conditions'] = [dataclasses.asdict(condition) for condition in CONDITIONS]
        data['coverage'] = {'cvs': list(CV_NAMES), 'bounds': [list(b) for b in CV_BOUNDS],
                            'splits': COVERAGE_SPLITS, 'height': COVERAGE_HEIGHT}  # fmt: skip
        return data


def variant_inputs(settings: Settings, name: str) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """(strategy preset, overrides, select parameters to remove) of a variant. Features stay as the presets choose
    them: the ``fast`` protocol's 64-dimensional sketch for gradient, last-layer features for hal and dopt, none for
    the others."""
    from aiida_alkit.workflows.labelling import deep_merge

    strategy, extra, drop = VARIANTS[name]
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
    return strategy, overrides, drop


# ---------------------------------------------------------------------------------------------------- data
def copper_cell(isotropic_strain: float):
    from ase.build import bulk

    atoms = bulk('Cu', 'fcc', a=LATTICE, cubic=True) * (2, 2, 2)
    atoms.set_cell(atoms.cell[:] * (1.0 + isotropic_strain), scale_atoms=True)
    return atoms


def condition_cell(condition: Condition, strain: float):
    """The starting cell of one walker of ``condition`` (ASE ``Atoms``, periodic in all directions)."""
    from ase.build import fcc111

    if condition.cell == 'slab':
        atoms = fcc111('Cu', size=(3, 3, 4), a=LATTICE, vacuum=SLAB_VACUUM)
        atoms.pbc = True  # 10 Å of vacuum: no interaction across it for EMT or the 4 Å model
        return atoms
    atoms = copper_cell(strain)
    if condition.cell == 'vacancy':
        del atoms[0]
    return atoms


def walker_strains(condition: Condition, walkers: int) -> list[float]:
    if condition.strain is not None:
        return [condition.strain] * walkers
    if condition.cell == 'slab' or walkers == 1:
        return [0.0] * walkers
    return [float(s) for s in np.linspace(-BULK_STRAIN, BULK_STRAIN, walkers)]


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


def walker_frames(condition: Condition, strain: float, seed: int, settings: Settings) -> list[Any]:
    """EMT-labelled frames of one test walker (melt walkers melt their cell first, same random stream)."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    rng = np.random.default_rng(seed)
    common = {'timestep_fs': TIMESTEP_FS, 'friction_per_fs': FRICTION_PER_FS, 'rng': rng}
    atoms = condition_cell(condition, strain)
    if condition.cell == 'melt':
        atoms = langevin_frames(atoms, EMT, MELT_TEMPERATURE_K, 1, settings.melt_steps, seed, labelled=False, **common)[
            0
        ]
    return langevin_frames(
        atoms, EMT, condition.temperature_K, settings.test_frames_per_walker, settings.test_interval, seed,
        settings.test_equilibration, **common,
    )  # fmt: skip


def q6_bar(atoms) -> float:
    """Mean over atoms of the averaged local bond order q̄6 (Lechner & Dellago 2008): Steinhardt's q_6m of each atom
    (neighbours within :data:`Q6_CUTOFF`) averaged with its neighbours' before taking the rotational invariant."""
    from ase.neighborlist import neighbor_list
    from scipy.special import sph_harm_y

    first, second, vectors = neighbor_list('ijD', atoms, Q6_CUTOFF)
    n = len(atoms)
    if first.size == 0:
        return 0.0
    distance = np.linalg.norm(vectors, axis=1)
    polar = np.arccos(np.clip(vectors[:, 2] / distance, -1.0, 1.0))
    azimuth = np.arctan2(vectors[:, 1], vectors[:, 0])
    harmonics = sph_harm_y(6, np.arange(-6, 7)[:, None], polar[None, :], azimuth[None, :])  # (13, pairs)
    counts = np.bincount(first, minlength=n)

    def per_atom(values: np.ndarray) -> np.ndarray:  # (13, pairs) -> (n, 13) sums over each atom's pairs
        return np.stack([np.bincount(first, weights=row.real, minlength=n)
                         + 1j * np.bincount(first, weights=row.imag, minlength=n) for row in values], axis=1)  # fmt: skip

    q = per_atom(harmonics) / np.maximum(counts, 1)[:, None]
    averaged = (q + per_atom(q[second].T)) / (counts + 1)[:, None]
    return float(np.mean(np.sqrt(4.0 * np.pi / 13.0 * np.sum(np.abs(averaged) ** 2, axis=1))))


def fcc_energy_per_atom() -> float:
    from ase.calculators.emt import EMT

    atoms = copper_cell(0.0)
    atoms.calc = EMT()
    return float(atoms.get_potential_energy()) / len(atoms)


def collective_variables(frames: list[Any], reference: float) -> np.ndarray:
    """(n, 2) coverage CVs of unlabelled frames: EMT energy per atom above the perfect crystal (eV), q̄6."""
    from ase.calculators.emt import EMT

    values = np.zeros((len(frames), 2))
    for index, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = EMT()
        values[index] = atoms.get_potential_energy() / len(atoms) - reference, q6_bar(atoms)
    return values


def test_sets(settings: Settings) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """EMT frames per test condition and, per condition, what tells the states apart (the melt check)."""
    reference = fcc_energy_per_atom()
    sets: dict[str, list[Any]] = {}
    checks: dict[str, Any] = {}
    for index, condition in enumerate(CONDITIONS):
        frames, msd = [], []
        for walker, strain in enumerate(walker_strains(condition, settings.test_walkers)):
            walker_set = walker_frames(condition, strain, TEST_SEED + 100 * index + walker, settings)
            shift = walker_set[-1].positions - walker_set[0].positions  # unwrapped: ASE MD does not wrap
            msd.append(float(np.mean(np.sum(shift**2, axis=1))))
            frames += walker_set
        sets[condition.name] = frames
        checks[condition.name] = {
            'frames': len(frames),
            'atoms': len(frames[0]),
            'energy_above_fcc_ev_per_atom': float(np.mean([f.get_potential_energy() / len(f) for f in frames]))
            - reference,
            'q6_bar': float(np.mean([q6_bar(f) for f in frames])),
            'msd_first_to_last_frame_ang2': msd,
            'window_fs': (settings.test_frames_per_walker - 1) * settings.test_interval * TIMESTEP_FS,
        }
    return sets, checks


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


def test_errors(model, sets: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{condition, ``worst``, ``all``: (force RMSE eV/Å, energy RMSE eV/atom)} of a model (GM-NN or committee mean).
    ``all`` pools the squared errors of every condition (force components and configurations)."""
    from aiida_alkit.models.training import evaluate_errors

    errors: dict[str, tuple[float, float]] = {}
    force_sq = energy_sq = force_n = energy_n = 0.0
    for key, arrays in sets.items():
        result = evaluate_errors(model, arrays)
        force, energy = float(result['forces_rmse']), float(result['energy_rmse'])
        errors[key] = (force, energy)
        components, configurations = 3 * int(arrays.n_atoms_total), len(arrays)
        force_sq, force_n = force_sq + force**2 * components, force_n + components
        energy_sq, energy_n = energy_sq + energy**2 * configurations, energy_n + configurations
    errors[WORST] = (max(v[0] for v in errors.values()), max(v[1] for v in errors.values()))
    errors[ALL] = (math.sqrt(force_sq / force_n), math.sqrt(energy_sq / energy_n))
    return errors


def potential_errors(potential, sets: dict[str, Any]) -> dict[str, tuple[float, float]]:
    from aiida_alkit.jobs.explore import load_model

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / 'potential.pt'
        potential.export(path)
        model = load_model(path, 'cpu')
    return test_errors(model, sets)


def called_by_label(node, process_label: str) -> dict[str, Any]:
    return {
        link.link_label: link.node
        for link in node.base.links.get_outgoing().all()
        if getattr(link.node, 'process_label', None) == process_label
    }


def campaign_result(campaign: Campaign, sets: dict[str, Any], fcc_energy: float) -> dict[str, Any]:
    """Learning curves, label counts, explored CVs and training cost of one finished campaign."""
    from aiida_alkit.exploration.analysis import coverage_curve

    node = campaign.node
    if not node.is_finished_ok:
        raise RuntimeError(
            f'{campaign.variant} seed {campaign.seed}: campaign {node.pk} failed: [{node.exit_status}] '
            f'{node.exit_message}'
        )
    report = node.outputs.report.get_dict()
    trains = called_by_label(node, 'TrainWorkChain')
    explores = called_by_label(node, 'ExploreWorkChain')
    labels, models, train_s, explore_s, pool_sizes, points = [], [], [], [], [], []
    curves: dict[str, dict[str, list[float]]] = {key: {'force': [], 'energy': []} for key in (*sets, WORST, ALL)}
    worst_condition: list[str] = []
    for entry in report['rounds']:
        train = trains[f'train_round_{entry["round"]}']
        labels.append(len(train.inputs.train.dataset))
        models.append(int(train.inputs.train.parameters.get_dict().get('committee_size', 1)))
        train_s.append(sum(job_wall_times(train)))
        errors = potential_errors(train.outputs.potential, sets)
        for key, (force, energy) in errors.items():
            curves[key]['force'].append(1e3 * force)
            curves[key]['energy'].append(1e3 * energy)
        worst_condition.append(max(sets, key=lambda key: errors[key][0]))
        explore = explores.get(f'explore_round_{entry["round"]}')
        explore_s.append(sum(job_wall_times(explore)) if explore is not None else 0.0)
        pool = explore.outputs.pool.to_atoms() if explore is not None and 'pool' in explore.outputs else []
        pool_sizes.append(len(pool))
        points.append(collective_variables(pool, fcc_energy))
    cvs = np.concatenate(points) if points else np.zeros((0, 2))
    curve = coverage_curve(cvs, CV_BOUNDS, COVERAGE_SPLITS, COVERAGE_HEIGHT) if len(cvs) else np.zeros(0)
    ends = np.cumsum(pool_sizes) - 1
    return {
        'campaign_pk': node.pk,
        'labels': labels,  # labelled configurations each round's potential was trained on
        'labels_spent': labels[0] + sum(int(entry.get('labelled', 0)) for entry in report['rounds']),
        'selected_per_round': [int(entry.get('selected', 0)) for entry in report['rounds']],
        'pool_per_round': [  # explored candidates: (accurate, candidate, failed) as the selection classed them
            [int(entry.get(key) or 0) for key in ('n_accurate', 'n_candidate', 'n_failed')]
            for entry in report['rounds']
        ],
        'walker_stops_per_round': [entry.get('walker_stops', {}) for entry in report['rounds']],
        'models_per_round': models,
        'curves': curves,  # meV/Å and meV/atom per round
        'worst_condition_per_round': worst_condition,
        'candidates_per_round': pool_sizes,
        'coverage_per_round': [float(curve[end]) if end >= 0 else 0.0 for end in ends],
        'coverage': float(curve[-1]) if len(curve) else 0.0,
        'cv_max': cvs.max(axis=0).tolist() if len(cvs) else None,
        'cv_points': cvs,  # not printed; for the coverage figure
        'train_s_per_round': train_s,
        'explore_s_per_round': explore_s,
        'stop_reason': report.get('stop_reason'),
        'wall_s': campaign.wall_s,
    }


def settings_key(settings: Settings) -> str:
    """Hash of the settings a campaign's result depends on (a resumed run refuses lines of other settings)."""
    import hashlib

    text = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_campaigns(
    path: pathlib.Path | None, settings: Settings, names: list[str], seeds: list[int]
) -> dict[tuple[str, int], dict[str, Any]]:
    """{(variant, seed): result} of the ``data_efficiency_campaign`` lines of an earlier run (``--resume``)."""
    if path is None:
        return {}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.startswith('{'):
            continue
        line = json.loads(text)
        if line.get('benchmark') != 'data_efficiency_campaign':
            continue
        if line.get('settings_key') != settings_key(settings):
            raise SystemExit(f'{path}:{number}: a campaign run with other settings; cannot resume from it')
        if line['variant'] in names and line['seed'] in seeds:
            result = {key: value for key, value in line.items() if key not in ('benchmark', 'variant', 'seed')}
            result['cv_points'] = np.asarray(result['cv_points'], dtype=float).reshape(-1, 2)
            found[(line['variant'], int(line['seed']))] = result
    return found


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
    conditions = [key for key in first['curves'] if key not in (WORST, ALL)]
    worst_of_mean = [  # the condition with the largest seed-mean force RMSE in each round
        max(conditions, key=lambda key, i=i: test[key]['force_rmse_mev_per_ang']['mean'][i])
        for i in range(len(labels_mean))
    ]
    coverages = [results[s]['coverage'] for s in seeds]
    train_total = [sum(results[s]['train_s_per_round']) for s in seeds]
    return {
        'benchmark': 'data_efficiency',
        'strategy': name,
        'preset': VARIANTS[name][0],
        'seeds': seeds,
        'models_trained_per_round': first['models_per_round'][0],
        'labels': {'mean': labels_mean, 'std': labels_std, 'per_seed': {str(s): results[s]['labels'] for s in seeds}},
        'labels_spent': {str(s): results[s]['labels_spent'] for s in seeds},
        'selected_per_round': {str(s): results[s]['selected_per_round'] for s in seeds},
        'accurate_candidate_failed_per_round': {str(s): results[s]['pool_per_round'] for s in seeds},
        'walker_stops_per_round': {str(s): results[s]['walker_stops_per_round'] for s in seeds},
        'test': test,
        'worst_condition_of_mean_per_round': worst_of_mean,
        'worst_condition_per_round': {str(s): results[s]['worst_condition_per_round'] for s in seeds},
        'labels_to_target': {
            'test_set': target_key,
            'target_force_rmse_mev_per_ang': target_mev,
            'mean_curve': reached,
            'reached': reached is not None,
            'largest_trained_labels': labels_mean[-1],
            'per_seed': per_seed_target,
        },
        'coverage': {
            'mean': float(np.mean(coverages)),
            'std': float(np.std(coverages)),
            'per_seed': {str(s): c for s, c in zip(seeds, coverages, strict=True)},
            'per_round_mean': mean_std([results[s]['coverage_per_round'] for s in seeds])[0],
            'candidates_per_seed': {str(s): sum(results[s]['candidates_per_round']) for s in seeds},
            'candidates_per_round': {str(s): results[s]['candidates_per_round'] for s in seeds},
            'cv_max_per_seed': {str(s): results[s]['cv_max'] for s in seeds},
        },
        'train_s': {
            'total': sum(train_total),
            'mean_per_campaign': float(np.mean(train_total)),
            'per_seed': {str(s): t for s, t in zip(seeds, train_total, strict=True)},
            'per_round_mean': mean_std([results[s]['train_s_per_round'] for s in seeds])[0],
        },
        'explore_s_per_round_mean': mean_std([results[s]['explore_s_per_round'] for s in seeds])[0],
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


def at_equal_labels(ours: dict[str, Any], theirs: dict[str, Any], key: str, quantity: str) -> tuple[float, float]:
    """(label count, RMSE ratio ours/theirs) with both seed-mean curves read at the largest count both reached."""
    common = min(ours['labels']['mean'][-1], theirs['labels']['mean'][-1])
    mine = np.interp(common, ours['labels']['mean'], ours['test'][key][quantity]['mean'])
    other = np.interp(common, theirs['labels']['mean'], theirs['test'][key][quantity]['mean'])
    return float(common), float(mine / other)


def summary(variants: dict[str, dict[str, Any]], settings: Settings, args, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        'benchmark': 'data_efficiency_summary',
        'quick': args.quick,
        'seeds': args.seeds,
        'variants': list(variants),
        'target_force_rmse_ev_per_ang': args.target_force_rmse,
        'target_on': args.target_on,
        'labels_to_target_definition': (
            f'labels of the first round whose {args.target_on} force RMSE (seed-mean curve) is <= the target, '
            'linearly interpolated from the round before; a strategy that never reaches it counts with its largest '
            'trained label count as a lower bound (ratio kind upper_bound / lower_bound)'
        ),
        'equal_labels_definition': 'seed-mean curves read (linear interpolation) at the largest label count both reached',
    }
    ours = variants.get(GRADIENT)
    for suffix, name in REFERENCES.items():
        reference = variants.get(name)
        key = f'worst_condition_rmse_ratio_gradient_vs_{suffix}'
        out[key] = out[f'labels_ratio_gradient_vs_{suffix}'] = None
        if ours is None or reference is None:
            continue
        labels, out[key] = at_equal_labels(ours, reference, WORST, 'force_rmse_mev_per_ang')
        out[f'{key}_labels'] = labels
        ratio, kind = labels_ratio(ours, reference)
        out[f'labels_ratio_gradient_vs_{suffix}'] = ratio
        out[f'labels_ratio_gradient_vs_{suffix}_kind'] = kind
        for quantity in ('force_rmse_mev_per_ang', 'energy_rmse_mev_per_atom'):
            ratios: dict[str, Any] = {'labels': labels}
            for test_key in ours['test']:
                ratios[test_key] = at_equal_labels(ours, reference, test_key, quantity)[1]
            out[f'{quantity.split("_")[0]}_rmse_ratio_gradient_vs_{suffix}_at_equal_labels'] = ratios
    for name, record in variants.items():
        out[f'{name}_reached_target'] = record['labels_to_target']['reached']
    out['labels_to_target'] = {name: record['labels_to_target']['mean_curve'] for name, record in variants.items()}
    out['worst_condition_force_rmse_final_mev_per_ang'] = {
        name: record['test'][WORST]['force_rmse_mev_per_ang']['mean'][-1] for name, record in variants.items()
    }
    coverage = {name: record['coverage']['mean'] for name, record in variants.items()}
    out['coverage_biased'] = coverage.get(GRADIENT)
    out['coverage_unbiased'] = coverage.get(REFERENCES['unbiased'])
    out['coverage_ratio_biased_vs_unbiased'] = (
        out['coverage_biased'] / out['coverage_unbiased']
        if out['coverage_biased'] and out['coverage_unbiased']
        else None
    )
    out['coverage'] = coverage
    out['explored_candidates_mean'] = {
        name: float(np.mean(list(record['coverage']['candidates_per_seed'].values())))
        for name, record in variants.items()
    }
    out['targets'] = {key: f'<= {value}' for key, value in TARGETS.items()}
    out['targets_met'] = {
        key: None if out.get(key) is None else bool(out[key] <= value) for key, value in TARGETS.items()
    }
    out['labels_spent_mean'] = {
        name: float(np.mean(list(record['labels_spent'].values()))) for name, record in variants.items()
    }
    out['train_s_total'] = {name: record['train_s']['total'] for name, record in variants.items()}
    out['settings'] = settings.as_dict()
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------------- figures
def plot_curves(variants: dict[str, dict[str, Any]], target_mev: float, target_key: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keys = list(next(iter(variants.values()))['test'])
    columns = 5
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.4 * rows), squeeze=False, sharey=True)
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    for axis, key in zip(axes.flat, keys, strict=False):
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
        title = {WORST: 'worst condition', ALL: 'whole test set'}.get(key, key)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('labelled configurations trained on')
        axis.set_yscale('log')
        axis.grid(alpha=0.3, which='both')
    for row in axes:
        row[0].set_ylabel('test force RMSE (meV/Å)')
    axes.flat[len(keys) - 1].legend(fontsize=7)
    n_seeds = len(next(iter(variants.values()))['seeds'])
    figure.suptitle(f'Cu EMT active learning: mean ± std over {n_seeds} seed(s)')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_coverage(points: dict[str, np.ndarray], coverages: dict[str, float], path: pathlib.Path) -> None:
    """Explored candidates of every variant (all seeds and rounds) in the coverage CV space."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(points), figsize=(4.0 * len(points), 3.6), squeeze=False, sharey=True)
    for axis, (name, cvs) in zip(axes[0], points.items(), strict=True):
        axis.scatter(cvs[:, 0], cvs[:, 1], s=3, alpha=0.4)
        axis.set_xlim(*CV_BOUNDS[0])
        axis.set_ylim(*CV_BOUNDS[1])
        axis.set_title(f'{name}: {len(cvs)} candidates, coverage {coverages[name]:.3f}', fontsize=9)
        axis.set_xlabel('EMT energy above fcc (eV/atom)')
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel('q̄6')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- epoch check
def check_training_frames(settings: Settings, n_temperatures: int = 5, walkers: int = 2, frames: int = 10) -> list:
    """EMT frames of bulk MD over the schedule's temperatures (what the campaigns label), own walker seeds."""
    condition = Condition('check', 'bulk', 0.0)
    out = []
    strains = np.linspace(-0.02, 0.02, walkers)
    for index, temperature in enumerate(np.linspace(*settings.schedule_K, n_temperatures)):
        for walker, strain in enumerate(strains):
            check = dataclasses.replace(condition, temperature_K=float(temperature))
            walker_settings = dataclasses.replace(settings, test_frames_per_walker=frames)
            out += walker_frames(check, float(strain), CHECK_SEED + 100 * index + walker, walker_settings)
    return out


def train_and_test(task: tuple[int, Settings, Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Train the benchmark's model for ``epochs`` as the train job does (Adam, one thread); its test errors."""
    epochs, settings, train_set, valid, sets = task
    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.models.training import TrainingConfig, train

    started = time.perf_counter()
    model = GMNN(GMNNHyperparameters.from_dict({**dict(settings.model), 'species': ['Cu']}), device='cpu')
    config = TrainingConfig(epochs=epochs, batch_size=settings.train_batch_size, num_threads=1, seed=1)
    result = train(model, train_set, valid, config)
    errors = test_errors(model, sets)
    return {
        'epochs': epochs,
        'force_rmse_mev_per_ang': {key: 1e3 * value[0] for key, value in errors.items()},
        'energy_rmse_mev_per_atom': {key: 1e3 * value[1] for key, value in errors.items()},
        'best_epoch': result.best_epoch,
        'train_s': time.perf_counter() - started,
    }


def epoch_check(settings: Settings, epochs: list[int], jobs: int, tolerance: float = 0.05) -> dict[str, Any]:
    """The model trained on 100 frames for each epoch count; the chosen count is the smallest after which doubling
    (the next count) improves neither the worst-condition nor the whole-set force RMSE by more than ``tolerance``."""
    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.models.training import split_train_valid

    started = time.perf_counter()
    frames, checks = test_sets(settings)
    sets = {key: ConfigurationArrays.from_atoms(value) for key, value in frames.items()}
    train, valid = split_train_valid(ConfigurationArrays.from_atoms(check_training_frames(settings)), 0.1, seed=0)
    log(f'[epoch check] {len(train)} training + {len(valid)} validation frames, test sets ready '
        f'({time.perf_counter() - started:.0f} s)')  # fmt: skip
    tasks = [(count, settings, train, valid, sets) for count in sorted(epochs, reverse=True)]
    runs: dict[int, dict[str, Any]] = {}
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
        for run in pool.map(train_and_test, tasks):
            runs[run['epochs']] = run
            log(f'[epoch check] {run["epochs"]} epochs: worst {run["force_rmse_mev_per_ang"][WORST]:.1f}, all '
                f'{run["force_rmse_mev_per_ang"][ALL]:.1f} meV/Å ({run["train_s"]:.0f} s)')  # fmt: skip
            print(json.dumps(rounded({'benchmark': 'data_efficiency_epoch_check', **run}, 2)), flush=True)
    counts = sorted(runs)
    chosen = counts[-1]
    for low, high in itertools.pairwise(counts):
        gains = [1.0 - runs[high]['force_rmse_mev_per_ang'][key] / runs[low]['force_rmse_mev_per_ang'][key]
                 for key in (WORST, ALL)]  # fmt: skip
        if max(gains) <= tolerance:
            chosen = low
            break
    return {
        'benchmark': 'data_efficiency_epoch_check_summary',
        'n_train': len(train),
        'n_valid': len(valid),
        'epochs': counts,
        'worst_force_rmse_mev_per_ang': [runs[c]['force_rmse_mev_per_ang'][WORST] for c in counts],
        'all_force_rmse_mev_per_ang': [runs[c]['force_rmse_mev_per_ang'][ALL] for c in counts],
        'train_s': [runs[c]['train_s'] for c in counts],
        'tolerance': tolerance,
        'chosen_epochs': chosen,
        'rule': 'smallest count after which the next count improves neither the worst-condition nor the whole-set '
        'test force RMSE by more than the tolerance (the largest count when every step improves more)',
        'test_set': checks,
        'settings': {'model': dict(settings.model), 'batch_size': settings.train_batch_size},
        'total_s': time.perf_counter() - started,
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
    }


# ---------------------------------------------------------------------------------------------------- main
def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smoke test: the default variants, 1 seed, 2 rounds, tiny')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='campaign seeds (default 0 1 2; quick: 0)')
    parser.add_argument('--variants', '--strategies', dest='variants', default=','.join(DEFAULT_VARIANTS),
                        help=f'comma-separated variants, of {list(VARIANTS)}')  # fmt: skip
    parser.add_argument('--target-force-rmse', type=float, default=0.1, help='force RMSE target, eV/Å')
    parser.add_argument('--target-on', default=WORST,
                        help=f"the curve the target applies to: '{WORST}', '{ALL}' or a condition name")  # fmt: skip
    parser.add_argument(
        '--dpgen-window',
        type=float,
        nargs=2,
        metavar=('LO', 'HI'),
        default=None,
        help='DP-GEN trust window, eV/Å (default 0.1 1.5; the preset is 0.05 0.15)',
    )
    parser.add_argument(
        '--optimizer',
        choices=('preset', 'rlekf'),
        default='preset',
        help="'preset': every strategy trains as its preset says (Adam; RLEKF for alkpu); 'rlekf': every "
        'single-model strategy trains with RLEKF as alkpu does (dpgen keeps its Adam committee)',
    )
    parser.add_argument('--epochs', type=int, default=None, help='Adam epochs per training (default: Settings)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='campaigns (epoch check: trainings) running at once (default 2; quick: 4, every variant '
                        'at once: its jobs are short and the campaigns mostly wait on the engine)')  # fmt: skip
    parser.add_argument('--rounds', type=int, default=None, help='rounds per campaign (default: Settings; for timing)')
    parser.add_argument('--plot', type=pathlib.Path, default=DEFAULT_PLOT, help='learning-curve PNG')
    parser.add_argument('--verbose', action='store_true', help="show the work chains' report lines")
    parser.add_argument(
        '--resume',
        type=pathlib.Path,
        default=None,
        help='JSON lines of an earlier run with the same settings: its finished campaigns (data_efficiency_campaign '
        'lines) are kept and not run again (append the new output to the same file: --resume F >> F)',
    )
    parser.add_argument(
        '--summary-only',
        action='store_true',
        help='with --resume: run nothing, summarise (and plot) the seeds whose campaigns of every variant finished',
    )
    parser.add_argument('--epoch-check', action='store_true', help='run the epoch convergence check only')
    parser.add_argument('--check-epochs', type=int, nargs='+', default=[100, 200, 400, 800])
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.jobs = args.jobs if args.jobs is not None else (4 if args.quick else 2)
    args.names = [name.strip() for name in args.variants.split(',') if name.strip()]
    if args.summary_only and args.resume is None:
        parser.error('--summary-only needs --resume')
    unknown = sorted(set(args.names) - set(VARIANTS))
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
    if args.target_on not in (WORST, ALL, *(c.name for c in CONDITIONS)):
        parser.error(f'--target-on must be {WORST!r}, {ALL!r} or one of {[c.name for c in CONDITIONS]}')
    args.command = shlex.join([pathlib.Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.dpgen_window:
        settings = dataclasses.replace(settings, dpgen_window=tuple(args.dpgen_window))
    if args.epochs:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    settings = dataclasses.replace(settings, optimizer=args.optimizer)
    if args.epoch_check:
        print(json.dumps(rounded(epoch_check(settings, args.check_epochs, args.jobs), 3)), flush=True)
        return
    names, target_key, target_mev = args.names, args.target_on, 1e3 * args.target_force_rmse
    started = time.perf_counter()
    if args.summary_only:
        summarise_finished(args, settings, names, target_key, target_mev)
        return

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

        frames, checks = test_sets(settings)
        fcc_energy = fcc_energy_per_atom()
        sets = {key: ConfigurationArrays.from_atoms(value) for key, value in frames.items()}
        test = DatasetData.from_atoms([frame for value in frames.values() for frame in value]).store()
        initial = {seed: DatasetData.from_atoms(initial_configurations(settings.n_initial, seed)).store()
                   for seed in args.seeds}  # fmt: skip
        data_s = time.perf_counter() - started
        log(f'[data] {settings.n_initial} initial per seed, test frames '
            f'{ {key: len(value) for key, value in frames.items()} } ({data_s:.0f} s)')  # fmt: skip
        print(json.dumps(rounded({'benchmark': 'data_efficiency_test_set', 'conditions': checks}, 3)), flush=True)

        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
        resumed = finished_campaigns(args.resume, settings, names, args.seeds)
        for (name, seed), result in resumed.items():
            results[name][seed] = result
        if args.resume is not None:
            log(f'[resume] {len(resumed)} finished campaigns from {args.resume}')
        campaigns = []
        for seed in args.seeds:
            for name in names:
                if (name, seed) in resumed:
                    continue
                strategy, overrides, drop = variant_inputs(settings, name)
                builder = ActiveLearningWorkChain.get_builder_from_protocol(
                    code, initial[seed], protocol='fast', strategy=strategy,
                    overrides={**overrides, 'seed': seed}, label=label,
                )  # fmt: skip
                if drop:
                    select = builder.select.parameters.get_dict()
                    builder.select.parameters = orm.Dict({k: v for k, v in select.items() if k not in drop})
                builder.test_dataset = test
                builder.metadata.label = f'bench-data-efficiency {name} seed {seed}'
                campaigns.append(Campaign(name, seed, builder))
        # longest first (committees train several models a round), so that the last campaigns to start are short
        campaigns.sort(key=lambda c: -int(c.builder.train.parameters.get_dict().get('committee_size', 1)))

        failures: dict[str, dict[str, str]] = {}

        def finished(campaign: Campaign) -> None:
            try:
                result = campaign_result(campaign, sets, fcc_energy)
            except RuntimeError as exc:  # keep the other campaigns going; reported in the summary
                failures.setdefault(campaign.variant, {})[str(campaign.seed)] = str(exc)
                log(f'[{campaign.variant} seed {campaign.seed}] FAILED: {exc}')
                return
            results[campaign.variant][campaign.seed] = result
            line = {'benchmark': 'data_efficiency_campaign', 'variant': campaign.variant, 'seed': campaign.seed,
                    'settings_key': settings_key(settings), **result, 'cv_points': result['cv_points'].tolist()}  # fmt: skip
            print(json.dumps(rounded(line, 5)), flush=True)  # now: a stopped run keeps every finished campaign
            log(
                f'[{campaign.variant} seed {campaign.seed}] labels {result["labels"]}, test F RMSE worst '
                f'{rounded(result["curves"][WORST]["force"], 1)} ({result["worst_condition_per_round"][-1]} last), '
                f'all {rounded(result["curves"][ALL]["force"], 1)} meV/Å; coverage {result["coverage"]:.3f} of '
                f'{sum(result["candidates_per_round"])} candidates; train {sum(result["train_s_per_round"]):.0f} s, '
                f'campaign {campaign.wall_s:.0f} s ({time.perf_counter() - started:.0f} s total)'
            )

        run_campaigns(campaigns, args.jobs, finished)
        campaigns_s = time.perf_counter() - started - data_s

    report(results, names, settings, args, target_key, target_mev, {
        'failed_campaigns': failures,
        'jobs': args.jobs,
        'data_s': data_s,
        'campaigns_s': campaigns_s,
        'total_s': time.perf_counter() - started,
        'wall_time_h': (time.perf_counter() - started) / 3600.0,
    })  # fmt: skip


def report(
    results: dict[str, dict[int, dict[str, Any]]],
    names: list[str],
    settings: Settings,
    args,
    target_key: str,
    target_mev: float,
    extra: dict[str, Any],
) -> None:
    """Print one ``data_efficiency`` line per variant and the summary line; write the learning-curve and coverage
    plots."""
    variants = {name: summarise_variant(name, results[name], target_mev, target_key) for name in names if results[name]}
    for record in variants.values():
        print(json.dumps(rounded(record)), flush=True)
    if variants:
        plot_curves(variants, target_mev, target_key, args.plot)
        points = {name: np.concatenate([r['cv_points'] for r in results[name].values()]) for name in variants}
        coverage_plot = args.plot.with_name(f'{args.plot.stem}_coverage{args.plot.suffix}')
        plot_coverage(points, {name: record['coverage']['mean'] for name, record in variants.items()}, coverage_plot)
    extra = {
        **extra,
        'plot': str(args.plot),
        'command': args.command,
        'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
    }
    print(json.dumps(rounded(summary(variants, settings, args, extra), 3)), flush=True)


def summarise_finished(args, settings: Settings, names: list[str], target_key: str, target_mev: float) -> None:
    """``--summary-only``: the variants' lines, the summary and the plots of the seeds whose campaigns of every
    variant in ``names`` finished in ``--resume`` (so that every variant is compared on the same seeds); no campaign
    runs."""
    finished = finished_campaigns(args.resume, settings, names, args.seeds)
    complete = [seed for seed in args.seeds if all((name, seed) in finished for name in names)]
    if not complete:
        raise SystemExit(f'no seed of {args.seeds} has a finished campaign of every variant {names} in {args.resume}')
    log(f'[summary only] seeds with every variant finished: {complete} (of {args.seeds})')
    args.seeds = complete
    results = {name: {seed: finished[(name, seed)] for seed in complete} for name in names}
    report(results, names, settings, args, target_key, target_mev, {'summary_only': True, 'failed_campaigns': {}})


if __name__ == '__main__':
    main()
