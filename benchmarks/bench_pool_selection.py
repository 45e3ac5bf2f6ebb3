"""Pool benchmark: does batch active learning beat random selection on a redundant MD pool of EMT copper?

Seed 001's Sec. 4 protocol on EMT copper, through the science API only (no AiiDA); issue "Evidence that active
learning pays", item 1.

Data (ASE: ``ase.md.langevin.Langevin``, 4 fs steps, friction 0.02/fs, centre of mass fixed; labels: EMT energy and
forces, no stress), generated deterministically from ``Settings.data_seed`` (the same for every method seed) and
cached under ``--cache`` (default ``/tmp/alkit_bench_pool_selection/<hash of the data settings>``; never commit it):

* the pool is made the way users make one: long runs, one frame every 10 steps (40 fs, so neighbouring frames are
  strongly correlated and the pool is redundant, as MD pools are), after 200 steps of equilibration:

  ==================  ===================================================  =======  ===========
  condition           cell                                                 T (K)    pool frames
  ==================  ===================================================  =======  ===========
  ``bulk_300K``       2x2x2 conventional fcc, a = 3.61 Å, 32 atoms         300      4 runs x 350
  ``bulk_900K``       the same                                             900      250
  ``bulk_1500K``      the same                                             1500     250
  ``melt_2000K``      the same, melted for 300 steps at 4000 K first       2000     200
  ``vacancy_600K``    the bulk cell minus one random atom (31 atoms)       600      200
  ``slab111_600K``    (111) slab, 3x3 surface cell, 4 layers, 36 atoms,    600      200
                      6 Å vacuum each side, periodic in-plane only
  ``strained_600K``   bulk, random diagonal strain, each axis in ±4 %      600      2 runs x 100
  ==================  ===================================================  =======  ===========

  2700 frames, 52 % of them at 300 K. 40 of them, drawn at random, are the fixed validation set for early stopping
  (seed 001 reserves one); they are never selectable. The other 2660 are the pool.
* the test set is stratified evenly over the conditions: 50 frames each (2 runs x 25 frames, one every 20 steps)
  from separate runs (other seeds: other velocities, noise, strains and vacancy sites), 350 frames.

Protocol, per method and method seed (the seed varies the initial set and the model initialisation, seed 001's
"different seeds for NN initialization and splitting"; at one seed every method starts from the same 20 labels and
every round's model starts from the same initial weights): 20 random initial labels, then rounds that each add a
batch of 20 from the remaining pool, up to 200 labels; every round a fresh model is trained on all labels so far
(10 trained models per curve) and tested. Methods (seed 001's names):

* ``random``: ``select('random', ..., n_pool=...)`` on the remaining pool (MaxDiag + RND);
* ``maxdiag_gp``, ``maxdet_gp``, ``maxdist_feat``, ``lcmd_feat``: :func:`aiida_alkit.selection.api.select` with
  maxdiag / maxdet and ``posterior=True`` (GP kernel: pool and training features posterior-transformed, P mode) and
  maxdist / lcmd with ``posterior=False`` (FEAT kernel, training points as centres, TP mode), on the FEAT(RP)
  features of the round's model: ``compute_features(model, pool, kind='sketch', dim=512, per_atom=False,
  normalise_per_atom=False)`` (sums over atoms, eq. 11/19);
* ``qbc_maxdiag``: a committee of 4 (:mod:`aiida_alkit.models.committee`: members differ by their initialisation,
  each trained like the single models) and MaxDiag (``selection.greedy.max_diag``) on the committee's force
  disagreement σ_F^ens of eq. 25, computed from the members' forces. Its errors are the mean of the members' errors,
  as seed 001 reports them; the committee-mean prediction's errors are in each line under ``committee_mean``.

Model and training, the same for every method and round, fixed before any method was compared (settings check
below): GM-NN (``GMNNHyperparameters``: cutoff 4 Å, 5 Gaussians, 3 radial functions, 94 invariants, 32x32 network,
float32); :func:`~aiida_alkit.models.training.train` (Adam) on energies and forces (eq. 5: λ_E = 1, λ_F = 12 N_at Å²;
stress weight 0), Adam with seed 001's β and ε and its layer-wise learning rates times 3 (0.09, 0.06, 0.15, 0.003),
decayed linearly to zero, mini-batches of 4, early stopping on the validation set (the best epoch's weights are
restored); 128 epochs (seed 001: a fixed number of epochs) but at least 1600 optimiser steps, i.e. 1600 steps for
20 and 40 labels, then 32 steps per label (3200 for 100, 6400 for 200). One CPU thread per process.

``--model mace``: the same protocol (data, test set, label schedule, methods, seeds, optimiser steps, mini-batches,
early stopping, feature sketch) with the campaign's ``fast`` MACE instead of GM-NN (:data:`MACE_MODEL`,
``MACEHyperparameters``: cutoff 4 Å as the GM-NN, 8 channels, max_L 0, max_ell 2, correlation 2, 2 interactions,
8 Bessel functions, radial MLP 16, readout width 8, float32 as the GM-NN; 1945 parameters against GM-NN's 4146).
``avg_num_neighbors`` is set every round from that round's training set (``MACEPotential.complete_hyperparameters``,
the train job's rule; about 18 at 4 Å), so it may differ slightly between methods at equal labels; the initial
weights still depend on the seed and round only. Learning rates: the same as GM-NN's, seed 001's rates times 3
(0.09, 0.06, 0.15; MACE's ``scale`` group is empty): the project's MACE defaults are GM-NN's paper rates, so this is
the same x 3 scaling. The settings were checked for GM-NN only (``--convergence-check`` refuses ``--model mace``).
Every round's line then also holds ``model_kind`` and ``hyperparameters`` (with the round's seed, committee member
k: seed + k, and avg_num_neighbors), the summary ``model_kind``, ``hyperparameters`` and ``settings.model_kind``;
GM-NN's lines keep their keys. The plot defaults to ``out/pool_selection_mace.png``; ``--resume`` refuses lines of
the other model. ``--quick --model mace``: a smaller MACE (:data:`MACE_QUICK_MODEL`).

Settings check (``--convergence-check``; random pool frames, seed 0; overall test force RMSE, meV/Å, on the test
set above; the lines are in ``benchmarks/results/pool_selection_convergence_check_2026-11-27.jsonl``):

  ==========================================  =====  =====  =====  =====
  100 random frames unless noted; steps:       800    1600   3200   6400
  ==========================================  =====  =====  =====  =====
  batch 8, seed 001's rates                   60.4   39.0
  batch 2, seed 001's rates                   72.2   54.7   35.1
  batch 4, seed 001's rates                   64.3   44.2   26.4
  batch 4, rates x 0.3                        112.6
  batch 4, rates x 3                          50.3   34.2   23.7
  batch 4, rates x 10                         44.6   36.2   29.5
  batch 16, rates x 3 / x 10                         26.3 / 29.3
  batch 4, rates x 3, 128x128 network                37.5   27.9
  batch 4, rates x 3, cutoff 5 Å, 7 Gaussians,       31.4   26.7
  5 radial functions, 64x64 (1.5x the cost)
  batch 4, rates x 3, 20 frames               51.1   41.2   37.3   26.8
  batch 4, rates x 3, 200 frames              55.9   38.4   25.7   16.1
  ==========================================  =====  =====  =====  =====

  (batch 8 at 100 / 200 / 400 steps: 222.9 / 128.0 / 78.5.) Batch 4 gave the lowest error per CPU second (a step
  costs about 30 ms of one core with batch 4, 54 ms with batch 16), rates x 3 the lowest from 1600 steps on, the
  small model beat the wider and the larger one at equal steps. No setting met the intended 5 % rule (doubling the
  training improving the test RMSE by less than 5 %) within 6400 steps: the error still fell by 30-40 % per
  doubling, and the best epoch was the last. The budget, not convergence, fixed the length: with a fixed number of
  steps the learning curve is flat where it matters (1600 steps: 20, 100 and 200 labels give 41.2, 34.2 and 38.4;
  3200 steps: 37.3, 23.7 and 25.7), so labels to target would measure the optimiser, not the selection. A fixed
  number of epochs, as seed 001, gives 200 labels 6400 steps (16.1 meV/Å against 26.8 for 20 labels at the same
  steps: the data matters there) at about the cost of 3200 steps for every round; the 1600-step floor keeps the
  small early sets, whose models make the first selections, from getting only 320-640 steps. Consequences: the
  models are not converged, and the training budget grows with the labels as in seed 001, the same for every
  method at equal labels. A method reaching random's 200-label error with fewer labels does so with a model
  trained for fewer steps, so labels to target is conservative for active learning; the differences between the
  methods' data are damped by the optimiser noise.

Output (stdout, one JSON object per line; progress on stderr): per (method, seed, labels) the overall test force RMSE
(meV/Å) and energy RMSE (meV/atom), the same per condition, their maximum over the conditions (and which), the
labelled and the next selected frames per condition, epochs, steps, best epoch, wall and CPU seconds of training and
selection; then one line with ``"summary": true``:

* ``target_force_rmse_mev_per_ang``: random's final (200-label) overall test force RMSE, mean over seeds;
* ``labels_to_target``: per method, the labels at which its seed-mean overall force RMSE first falls to the target or
  below (linear interpolation between rounds; random: its final count by definition; null: never reached);
  ``labels_ratio_vs_random`` = that / random's labels (``*_lower_bound`` when never reached); per seed too;
* ``pool_labels_ratio_best_vs_random``: the smaller of LCMD + FEAT's and MaxDet + GP's ratios
  (``best_diverse_method``); the issue's target is <= 0.5. ``random_labels_to_target_own_curve``: where random's own
  mean curve first reaches the target (below 200 when the curve is flat at the end), and the ratio against that
  (``..._own_curve``), a stricter reading;
* ``diverse_need_fewer_labels_than_maxdiag``: MaxDet + GP, MaxDist + FEAT and LCMD + FEAT all reach the target with
  fewer labels than MaxDiag + GP (one that never reaches it needs more than one that does; two that never reach it
  are not "fewer"); the same against QBC MaxDiag in ``diverse_need_fewer_labels_than_qbc_maxdiag``, every pair in
  ``fewer_labels_than``;
* ``rmse_ratio_vs_random_at_final_labels`` / ``..._at_mid_labels`` (200 / 120 labels): method over random, seed
  means, of the overall and the worst-condition force and energy RMSEs;
* mean ± std learning curves, CPU seconds per method, wall times, failed campaigns, settings, the command.

``--plot`` writes the learning curves (overall and worst-condition force RMSE against labels, mean ± std over seeds,
log-log), ``--tables F`` the tables of the docs (Markdown: those curves at 20-200 labels, per condition at the
final labels, the conditions of the picked labels, labels to target per method and seed, ratios to random at equal
labels). ``--jobs N`` runs N campaigns (the first time also the MD runs) in parallel single-threaded processes.

Cost, CPU time of one core on the project's (shared) machine: an optimiser step costs 30-38 ms (the small early
sets validate after every one of their many epochs), a curve trains 10 models with 36 480 steps in all, 20-23 min;
the full run trains 27 curves' worth (5 single-model methods and 4 committee members, x 3 seeds): 9-10.5 h, plus
about 20 min for the MD (once; cached) and 10 min for the pool features and committee predictions. Wall time:
about 10 h with ``--jobs 1`` and 5 h with ``--jobs 2`` when the cores are otherwise idle, longer under load
(the committee curves take 4/9 of it; ``--methods`` runs a subset, ``--epochs`` trains shorter or longer).
``--quick``: a tiny pool and test set (208 + 8 + 28 frames), a tiny model, at least 24 steps (6 epochs),
8 + 2 x 6 labels, every method, one seed, about 1.5 min: the smoke test of
``tests/benchmarks/test_bench_pool_selection.py`` (``--quick --model mace``: about 1.5 CPU min, not in the tests).
The 2026-11-27 GM-NN run took 3.9 h of CPU (11-12 ms per optimiser step, a curve 400-435 CPU s). ``--model mace``
costs 4-4.7 times GM-NN per step at 100 labels (64-71 against 15-16 ms, 200 and 400 steps, one thread, on a loaded
2-core machine) and about 3 times at 20 labels (88 against 29 ms: validation after every 5 steps), about 29 CPU min a
curve: about 16 h of CPU for the full run, 1.5 h for random, lcmd_feat and maxdet_gp at seed 0 (with ``--jobs 2``
about 1 h of wall time plus the MD when two cores are idle).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np

LATTICE = 3.61  # Å, fcc Cu
TIMESTEP_FS = 4.0
FRICTION_PER_FS = 0.02
MELT_TEMPERATURE_K = 4000.0  # the melt runs first melt their cell at this temperature (Settings.melt_steps)
DEFAULT_CACHE = pathlib.Path('/tmp/alkit_bench_pool_selection')
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / 'out' / 'pool_selection.png'
DEFAULT_PLOT_MACE = pathlib.Path(__file__).resolve().parent / 'out' / 'pool_selection_mace.png'
#: ``--model mace``: the campaign's ``fast`` protocol MACE (cutoff 4 Å as the benchmark's GM-NN; float32 as it)
MACE_MODEL: tuple[tuple[str, Any], ...] = (
    ('cutoff', 4.0), ('channels', 8), ('max_ell', 2), ('radial_mlp', (16,)), ('mlp_width', 8), ('correlation', 2),
    ('dtype', 'float32'),
)  # fmt: skip
#: ``--model mace --quick``: a smaller MACE for the smoke test
MACE_QUICK_MODEL: tuple[tuple[str, Any], ...] = (
    ('cutoff', 4.0), ('channels', 4), ('max_ell', 1), ('radial_mlp', (8,)), ('mlp_width', 4), ('correlation', 2),
    ('num_bessel', 4), ('dtype', 'float32'),
)  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- conditions
@dataclasses.dataclass(frozen=True)
class Condition:
    """One way of generating frames: a starting cell and a Langevin temperature.

    :param name: key in the output.
    :param cell: ``'bulk'`` (2x2x2 conventional fcc, 32 atoms), ``'vacancy'`` (the same minus one atom, 31),
        ``'slab'`` ((111) slab, 3x3 surface cell, 4 layers, 36 atoms, 6 Å vacuum on each side, periodic in-plane),
        ``'strained'`` (bulk with a random diagonal strain, each component uniform in ±``strain``) or ``'melt'``
        (bulk melted at :data:`MELT_TEMPERATURE_K` first).
    :param temperature_K: Langevin temperature of the sampled frames.
    :param pool_runs: independent MD runs feeding the pool. :param pool_frames: frames kept per pool run.
    """

    name: str
    cell: str
    temperature_K: float
    pool_runs: int
    pool_frames: int
    strain: float = 0.0


def conditions(scale: float = 1.0) -> tuple[Condition, ...]:
    """The pool's conditions; ``scale`` shrinks the frames per run (quick mode)."""

    def frames(n: int) -> int:
        return max(2, round(n * scale))

    return (
        Condition('bulk_300K', 'bulk', 300.0, 4, frames(350)),
        Condition('bulk_900K', 'bulk', 900.0, 1, frames(250)),
        Condition('bulk_1500K', 'bulk', 1500.0, 1, frames(250)),
        Condition('melt_2000K', 'melt', 2000.0, 1, frames(200)),
        Condition('vacancy_600K', 'vacancy', 600.0, 1, frames(200)),
        Condition('slab111_600K', 'slab', 600.0, 1, frames(200)),
        Condition('strained_600K', 'strained', 600.0, 2, frames(100), strain=0.04),
    )


def starting_cell(condition: Condition, rng: np.random.Generator):
    """The starting geometry of one run (ASE ``Atoms``), drawn with ``rng`` (the strain, the removed atom)."""
    from ase.build import bulk, fcc111

    if condition.cell == 'slab':
        return fcc111('Cu', size=(3, 3, 4), a=LATTICE, vacuum=6.0)
    atoms = bulk('Cu', 'fcc', a=LATTICE, cubic=True) * (2, 2, 2)
    if condition.cell == 'vacancy':
        del atoms[int(rng.integers(len(atoms)))]
    elif condition.cell == 'strained':
        factors = 1.0 + rng.uniform(-condition.strain, condition.strain, size=3)
        atoms.set_cell(atoms.cell[:] * factors[:, None], scale_atoms=True)
    return atoms


def emt_labelled(frame):
    """Copy of ``frame`` with EMT energy (eV) and forces (eV/Å) on a ``SinglePointCalculator`` (no stress: the
    benchmark trains on energies and forces, as seed 001, and the slab has none)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = frame.copy()
    frame.set_constraint()
    frame.calc = EMT()
    energy, forces = frame.get_potential_energy(), frame.get_forces()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    return frame


def md_run(task: tuple[Condition, int, int, int, int, int]) -> list[Any]:
    """Frames of one Langevin run: (condition, seed, frames, interval, equilibration steps, melting steps) ->
    labelled frames."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    condition, seed, n_frames, interval, equilibration, melt_steps = task
    rng = np.random.default_rng(seed)
    atoms = starting_cell(condition, rng)
    atoms.rattle(stdev=0.02, seed=int(rng.integers(2**31)))
    common = {'timestep_fs': TIMESTEP_FS, 'friction_per_fs': FRICTION_PER_FS, 'labelled': False, 'rng': rng}
    if condition.cell == 'melt':
        atoms = langevin_frames(atoms, EMT, MELT_TEMPERATURE_K, 1, melt_steps, seed, 0, **common)[0]
    frames = langevin_frames(
        atoms, EMT, condition.temperature_K, n_frames, interval, seed, equilibration, **common
    )  # fmt: skip
    labelled = []
    for frame in frames:
        frame = emt_labelled(frame)
        frame.info = {'condition': condition.name}
        labelled.append(frame)
    return labelled


# ---------------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that sizes the benchmark (:meth:`quick`: the smoke test). See the module docstring."""

    data_seed: int = 0
    frames_scale: float = 1.0  # pool frames per run, relative to :func:`conditions`
    pool_interval: int = 10  # MD steps between kept pool frames (40 fs: neighbouring frames are strongly correlated)
    equilibration: int = 200  # MD steps before the first kept frame of every run
    melt_steps: int = 300  # MD steps at MELT_TEMPERATURE_K that melt the cell of a melt run
    test_runs: int = 2  # per condition, separate from the pool runs (other seeds, other strains / vacancies)
    test_frames: int = 25  # per test run
    test_interval: int = 20  # MD steps between kept test frames (80 fs)
    n_valid: int = 40  # frames held out of the generated pool frames for early stopping (never selectable)
    n_initial: int = 20
    batch_size: int = 20
    max_labels: int = 200
    model: tuple[tuple[str, Any], ...] = (('cutoff', 4.0), ('n_basis', 5), ('n_radial', 3), ('hidden_widths', (32, 32)))
    model_kind: str = 'gmnn'  # 'mace' (--model mace): ``model`` then holds MACEHyperparameters overrides
    epochs: int = 128  # Adam epochs per training (seed 001: a fixed number of epochs) ...
    min_steps: int = 1600  # ... but at least this many optimiser steps (the small early training sets)
    train_batch_size: int = 4
    lr_scale: float = 3.0  # the Adam learning rates are this times seed 001's (0.03, 0.02, 0.05, 0.001)
    committee_size: int = 4
    feature_dim: int = 512

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            frames_scale=0.08,
            pool_interval=3,
            equilibration=20,
            melt_steps=60,
            test_runs=1,
            test_frames=4,
            test_interval=10,
            n_valid=8,
            n_initial=8,
            batch_size=6,
            max_labels=20,
            model=(('cutoff', 4.0), ('n_basis', 4), ('n_radial', 2), ('hidden_widths', (8, 8))),
            epochs=6,
            min_steps=24,
            committee_size=4,
            feature_dim=64,
        )

    def data_key(self) -> str:
        """Hash of the settings the generated data depend on (the cache file name)."""
        fields = ('data_seed', 'frames_scale', 'pool_interval', 'equilibration', 'melt_steps', 'test_runs', 'test_frames',
                  'test_interval', 'n_valid')  # fmt: skip
        text = json.dumps({name: getattr(self, name) for name in fields}, sort_keys=True)
        text += repr(conditions(self.frames_scale)) + f'{LATTICE} {TIMESTEP_FS} {FRICTION_PER_FS}'
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_model(self, kind: str, quick: bool = False) -> Settings:
        """These settings with the model of ``kind`` (``gmnn``: unchanged; ``mace``: :data:`MACE_MODEL`, or
        :data:`MACE_QUICK_MODEL` in quick mode)."""
        if kind == 'gmnn':
            return self
        if kind != 'mace':
            raise ValueError(f'unknown model kind {kind!r}')
        return dataclasses.replace(self, model_kind='mace', model=MACE_QUICK_MODEL if quick else MACE_MODEL)

    def hyperparameters(self, **overrides: Any) -> Any:
        """The hyper-parameter object of the benchmark's model (species Cu; MACE: ``avg_num_neighbors`` None until
        ``complete_hyperparameters`` sets it from a training set)."""
        from aiida_alkit.models.potential import hyperparameters_from_dict

        values = {key: list(value) if isinstance(value, tuple) else value for key, value in self.model}
        return hyperparameters_from_dict({'model_kind': self.model_kind, 'species': ['Cu'], **values, **overrides})

    def label_counts(self) -> list[int]:
        """Labels of the training set of every round: n_initial, + batch_size ... up to max_labels."""
        counts = [self.n_initial]
        while counts[-1] < self.max_labels:
            counts.append(min(counts[-1] + self.batch_size, self.max_labels))
        return counts

    def epochs_for(self, n_train: int) -> int:
        """Epochs of a training on ``n_train`` structures: ``epochs``, or more when they would make fewer than
        ``min_steps`` optimiser steps."""
        per_epoch = math.ceil(n_train / min(self.train_batch_size, n_train))
        return max(1, self.epochs, math.ceil(self.min_steps / per_epoch))

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data['model'] = {key: list(value) if isinstance(value, tuple) else value for key, value in self.model}
        if self.model_kind == 'gmnn':
            del data['model_kind']  # the GM-NN output keeps the keys it had before --model existed
        data['label_counts'] = self.label_counts()
        data['conditions'] = [dataclasses.asdict(c) for c in conditions(self.frames_scale)]
        return data


# ---------------------------------------------------------------------------------------------------- data
def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def md_tasks(settings: Settings) -> list[tuple[str, tuple[Condition, int, int, int, int, int]]]:
    """(split, md_run task) of every run: pool runs and, per condition, ``test_runs`` separate test runs (other seeds,
    hence other velocities, noise, strains and vacancy sites)."""
    tasks = []
    for index, condition in enumerate(conditions(settings.frames_scale)):
        runs = [('pool', run, condition.pool_frames, settings.pool_interval) for run in range(condition.pool_runs)]
        runs += [('test', run, settings.test_frames, settings.test_interval) for run in range(settings.test_runs)]
        for split, run, n_frames, interval in runs:
            seed = _seed(settings.data_seed, split == 'test', index, run)
            tasks.append((split, (condition, seed, n_frames, interval, settings.equilibration, settings.melt_steps)))
    return tasks


def generate_data(settings: Settings, cache: pathlib.Path | None, jobs: int) -> tuple[dict[str, Any], float, bool]:
    """Pool, validation and test sets (``ConfigurationArrays`` with ``info['condition']``), from the cache when it
    holds them. :return: (sets, seconds spent generating, whether they came from the cache)."""
    from aiida_alkit.io.arrays import ConfigurationArrays

    folder = None if cache is None else cache / settings.data_key()
    names = ('pool', 'valid', 'test')
    if folder is not None and all((folder / f'{name}.npz').exists() for name in names):
        return {name: ConfigurationArrays.load(folder / f'{name}.npz') for name in names}, 0.0, True
    started = time.perf_counter()
    tasks = md_tasks(settings)
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1][2] * tasks[i][1][3])  # longest runs first
    runs = map_jobs(md_run, [tasks[i][1] for i in order], jobs)
    frames: dict[str, list[Any]] = {'pool': [], 'test': []}
    by_task = dict(zip(order, runs, strict=True))
    for index, (split, _) in enumerate(tasks):  # in the task order: the same sets whatever ran first
        frames[split] += by_task[index]
    generated = ConfigurationArrays.from_atoms(frames['pool'], info_keys=['condition'])
    permutation = np.random.default_rng(_seed(settings.data_seed, 2)).permutation(len(generated))
    sets = {
        'pool': generated.subset(np.sort(permutation[settings.n_valid :])),
        'valid': generated.subset(np.sort(permutation[: settings.n_valid])),
        'test': ConfigurationArrays.from_atoms(frames['test'], info_keys=['condition']),
    }
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, arrays in sets.items():
            arrays.save(folder / f'{name}.part.npz')  # then renamed: a killed run leaves no partial cache
            os.replace(folder / f'{name}.part.npz', folder / f'{name}.npz')
    return sets, time.perf_counter() - started, False


def map_jobs(function, tasks: list[Any], jobs: int) -> list[Any]:
    """``[function(task) for task in tasks]``, in ``jobs`` single-threaded processes when ``jobs > 1``."""
    if jobs <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_single_thread) as executor:
        return list(executor.map(function, tasks))


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------- methods
#: method name -> (selection, kernel): ``select()`` method and posterior flag (GP or FEAT); ``qbc`` and ``random``
#: are handled here.
METHODS: dict[str, tuple[str, bool | None]] = {
    'random': ('random', None),
    'maxdiag_gp': ('maxdiag', True),
    'maxdet_gp': ('maxdet', True),
    'maxdist_feat': ('maxdist', False),
    'lcmd_feat': ('lcmd', False),
    'qbc_maxdiag': ('qbc', None),
}
DIVERSE = ('maxdet_gp', 'maxdist_feat', 'lcmd_feat')  # seed 001's criteria (1) + (2): informative and diverse
BEST_DIVERSE_CANDIDATES = ('lcmd_feat', 'maxdet_gp')  # the "best diverse method (LCMD or MaxDet)"
NAIVE = ('maxdiag_gp', 'qbc_maxdiag')  # criterion (1) only


def training_config(settings: Settings, n_train: int, seed: int, device: str = 'cpu'):
    from aiida_alkit.models.gmnn import PAPER_LEARNING_RATES
    from aiida_alkit.models.training import TrainingConfig

    return TrainingConfig(
        epochs=settings.epochs_for(n_train),
        batch_size=settings.train_batch_size,
        # both kinds: seed 001's GM-NN rates x lr_scale (the MACE defaults are those rates; its 'scale' group is empty)
        learning_rates={group: settings.lr_scale * rate for group, rate in PAPER_LEARNING_RATES.items()},
        stress_weight=0.0,  # energies and forces only (seed 001 eq. 5); the frames carry no stress
        valid_fraction=0.0,  # the fixed validation set is passed explicitly
        seed=seed,
        num_threads=1,
        device=device,
    )


def condition_graphs(arrays: Any, hyperparameters: Any, device: str = 'cpu', dtype: Any = None) -> dict[str, Any]:
    """Test set split by condition, neighbour lists computed once: {condition: GraphDataset}."""
    from aiida_alkit.models.training import GraphDataset

    graphs = {}
    labels = arrays.info['condition']
    for name in dict.fromkeys(labels.tolist()):  # first-seen order
        subset = arrays.subset(np.flatnonzero(labels == name))
        graphs[name] = GraphDataset.from_configurations(
            subset, hyperparameters.species, hyperparameters.cutoff, device, *([dtype] if dtype is not None else [])
        )
    return graphs


def test_errors(model: Any, graphs: dict[str, Any]) -> dict[str, Any]:
    """Force (meV/Å) and energy-per-atom (meV/atom) RMSE of one model: overall (all test frames pooled), per
    condition, and the maximum over conditions."""
    from aiida_alkit.models.training import evaluate_errors

    force, energy, weights = {}, {}, {}
    for name, graph in graphs.items():
        result = evaluate_errors(model, graph)
        force[name], energy[name] = 1e3 * result['forces_rmse'], 1e3 * result['energy_rmse']
        weights[name] = (3 * result['n_atoms'], result['n_structures'])
    atoms = sum(w[0] for w in weights.values())
    structures = sum(w[1] for w in weights.values())
    return {
        'force': math.sqrt(sum(force[n] ** 2 * weights[n][0] for n in force) / atoms),
        'energy': math.sqrt(sum(energy[n] ** 2 * weights[n][1] for n in energy) / structures),
        'force_per_condition': force,
        'energy_per_condition': energy,
    }


def mean_errors(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of several models' errors, key by key (seed 001 reports a committee by its members' mean errors)."""
    return {
        key: float(np.mean([item[key] for item in items]))
        if not isinstance(items[0][key], dict)
        else {name: float(np.mean([item[key][name] for item in items])) for name in items[0][key]}
        for key in items[0]
    }


def error_fields(errors: dict[str, Any]) -> dict[str, Any]:
    """The output keys of one set of errors (meV/Å, meV/atom)."""
    force, energy = errors['force_per_condition'], errors['energy_per_condition']
    worst_force, worst_energy = max(force, key=force.get), max(energy, key=energy.get)
    return {
        'force_rmse_mev_per_ang': errors['force'],
        'energy_rmse_mev_per_atom': errors['energy'],
        'force_rmse_max_over_conditions_mev_per_ang': force[worst_force],
        'force_worst_condition': worst_force,
        'energy_rmse_max_over_conditions_mev_per_atom': energy[worst_energy],
        'energy_worst_condition': worst_energy,
        'force_rmse_per_condition_mev_per_ang': force,
        'energy_rmse_per_condition_mev_per_atom': energy,
    }


def committee_force_disagreement(committee: Any, graph: Any, indices: np.ndarray) -> np.ndarray:
    """σ_F^ens of seed 001 eq. 25 for the pool structures ``indices`` (eV/Å):
    sqrt((1/K) Σ_k (1/3N) Σ_j ||F_kj - F̄_j||²), i.e. the root mean over the structure's force components of the
    members' (population) variance."""

    values = []
    for chunk in np.array_split(indices, max(1, math.ceil(len(indices) / 64))):
        batch = graph.batch(chunk)
        variance = committee.predict(batch, compute_forces=True)['forces_std'].square().sum(dim=-1)  # (N,)
        sums = variance.new_zeros(batch.n_structures).index_add_(0, batch.structure_index, variance)
        values.append((sums / (3 * batch.n_atoms)).sqrt().cpu().numpy())
    return np.concatenate(values).astype(np.float64)


def run_campaign(task: tuple[str, int, Settings, str, str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One (method, seed) learning curve: initial random set, then a batch per round until ``max_labels``; a fresh
    model trained every round. Each round's record is printed as soon as it is done; the rounds of ``done`` (records
    of an interrupted run, in round order) are not repeated: the campaign goes on from the last one's labelled set.

    :return: one record per round run now (trained label count).
    """
    import torch

    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.models.committee import Committee
    from aiida_alkit.models.potential import MODEL_KINDS
    from aiida_alkit.models.training import GraphDataset, train
    from aiida_alkit.selection.api import select
    from aiida_alkit.selection.greedy import max_diag
    from aiida_alkit.uncertainty.features import compute_features

    method, seed, settings, folder, device, done = task
    torch.set_num_threads(1)
    if settings.model_kind == 'mace':  # mace-torch prints a notice on import: keep stdout JSON lines only
        import contextlib

        from aiida_alkit.models.mace import _import_mace

        with contextlib.redirect_stdout(sys.stderr):
            _import_mace()
    started = time.perf_counter()
    sets = {name: ConfigurationArrays.load(pathlib.Path(folder) / f'{name}.npz') for name in ('pool', 'valid', 'test')}
    pool, valid = sets['pool'], sets['valid']
    base = settings.hyperparameters()
    model_class = MODEL_KINDS[base.model_kind].model_class()
    dtype = base.torch_dtype
    graphs = condition_graphs(sets['test'], base, device, dtype)
    pool_graph = GraphDataset.from_configurations(pool, base.species, base.cutoff, device, dtype)
    conditions_of = pool.info['condition']
    selection_kind, posterior = METHODS[method]
    # the initial set depends on the seed only: every method starts from the same labels at one seed
    labelled = np.random.default_rng(_seed(seed, 3)).choice(len(pool), settings.n_initial, replace=False)
    if done:  # resume after the last finished round
        labelled = np.concatenate([done[-1]['train_indices'], done[-1]['picked_indices']]).astype(np.int64)
    records = []
    for round_index, target in enumerate(settings.label_counts()):
        if round_index < len(done):
            continue
        assert len(labelled) == target, (method, seed, round_index, len(labelled), target)
        labelled_set = pool.subset(labelled)
        model_seed = _seed(seed, 5, round_index) % 2**31  # the same initialisation for every method at one seed
        config = training_config(settings, len(labelled_set), model_seed, device)
        hyperparameters = dataclasses.replace(base, seed=model_seed)
        # MACE: avg_num_neighbors from this round's training set, as the train job does (GM-NN: unchanged)
        hyperparameters = model_class.complete_hyperparameters(hyperparameters, labelled_set)
        tick, tick_cpu = time.perf_counter(), time.process_time()
        if selection_kind == 'qbc':
            committee = Committee(hyperparameters, n_members=settings.committee_size)
            results = train(committee, labelled_set, valid, config).members
            members = [test_errors(member, graphs) for member in committee.members]
            errors, extra = mean_errors(members), {'committee_mean': error_fields(test_errors(committee, graphs))}
            best_epochs = [result.best_epoch for result in results]
            model = committee
        else:
            model = model_class(hyperparameters)
            best_epochs = [train(model, labelled_set, valid, config).best_epoch]
            errors, extra = test_errors(model, graphs), {}
        train_s, train_cpu_s = time.perf_counter() - tick, time.process_time() - tick_cpu
        record: dict[str, Any] = {
            'benchmark': 'pool_selection',
            'method': method,
            'seed': seed,
            'round': round_index,
            'labels': len(labelled),
            **model_fields(settings, hyperparameters),
            **error_fields(errors),
            'errors_of': 'mean over the committee members' if selection_kind == 'qbc' else 'model',
            **extra,
            'labelled_per_condition': _counts(conditions_of[labelled]),
            'epochs': config.epochs,
            'steps': config.epochs * math.ceil(len(labelled_set) / min(config.batch_size, len(labelled_set))),
            'best_epoch': best_epochs if len(best_epochs) > 1 else best_epochs[0],
            'train_s': train_s,
            'train_cpu_s': train_cpu_s,
            'device': str(device),
            'data_key': settings.data_key(),
            'train_indices': labelled.tolist(),  # pool indices of the training set (a resumed run goes on from them)
        }
        if round_index + 1 < len(settings.label_counts()):
            size = settings.label_counts()[round_index + 1] - len(labelled)
            remaining = np.setdiff1d(np.arange(len(pool)), labelled)
            tick, tick_cpu = time.perf_counter(), time.process_time()
            if selection_kind == 'random':
                picks = select('random', size, n_pool=len(remaining), seed=_seed(seed, 4, round_index) % 2**31).indices
            elif selection_kind == 'qbc':
                picks = np.asarray(max_diag(committee_force_disagreement(model, pool_graph, remaining), size).indices)
            else:
                features = compute_features(
                    model, pool_graph, kind='sketch', dim=settings.feature_dim, seed=model_seed, per_atom=False,
                    normalise_per_atom=False, batch_size=64,
                ).structure  # fmt: skip
                picks = select(
                    selection_kind, size, pool_features=features[remaining], train_features=features[labelled],
                    posterior=bool(posterior),
                ).indices  # fmt: skip
            chosen = remaining[np.asarray(picks, dtype=np.int64)]
            record['select_s'], record['select_cpu_s'] = time.perf_counter() - tick, time.process_time() - tick_cpu
            record['selected_per_condition'] = _counts(conditions_of[chosen])
            record['picked_indices'] = chosen.tolist()
            labelled = np.concatenate([labelled, chosen])
        record['elapsed_s'] = time.perf_counter() - started
        records.append(record)
        emit(record)  # now: an interrupted run keeps every finished round (--resume)
        log(
            f'[{method} seed {seed}] {record["labels"]} labels: F {record["force_rmse_mev_per_ang"]:.1f} meV/Å '
            f'(worst {record["force_rmse_max_over_conditions_mev_per_ang"]:.1f}, {record["force_worst_condition"]}), '
            f'E {record["energy_rmse_mev_per_atom"]:.2f} meV/atom; train {train_s:.0f} s'
        )
    return records


def model_fields(settings: Settings, hyperparameters: Any) -> dict[str, Any]:
    """The model of a round's record: nothing for GM-NN (its records keep their keys); for MACE the kind and the
    hyper-parameters (this round's seed and avg_num_neighbors; committee member k has seed + k)."""
    if settings.model_kind == 'gmnn':
        return {}
    return {'model_kind': settings.model_kind, 'hyperparameters': hyperparameters.to_dict()}


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values, return_counts=True)
    return {str(name): int(count) for name, count in zip(names, counts, strict=True)}


# ---------------------------------------------------------------------------------------------------- analysis
def labels_to_target(labels: list[float], rmse: list[float], target: float) -> float | None:
    """Labels at which ``rmse`` first falls to ``target`` or below (linear interpolation between rounds; the first
    round's count when it is below already), None if it never does."""
    for index, (count, value) in enumerate(zip(labels, rmse, strict=True)):
        if value <= target:
            if index == 0:
                return float(count)
            before, previous = labels[index - 1], rmse[index - 1]
            return float(before + (previous - target) / (previous - value) * (count - before))
    return None


def curves_of(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{method: {'labels', 'seeds', per-seed and mean/std curves of the overall and worst-condition RMSEs}}."""
    keys = {
        'force': 'force_rmse_mev_per_ang',
        'force_worst': 'force_rmse_max_over_conditions_mev_per_ang',
        'energy': 'energy_rmse_mev_per_atom',
        'energy_worst': 'energy_rmse_max_over_conditions_mev_per_atom',
    }
    curves: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(record['method'] for record in records):
        mine = [record for record in records if record['method'] == method]
        seeds = sorted({record['seed'] for record in mine})
        labels = sorted({record['labels'] for record in mine})
        entry: dict[str, Any] = {'labels': labels, 'seeds': seeds}
        for short, key in keys.items():
            table = np.full((len(seeds), len(labels)), np.nan)
            for record in mine:
                table[seeds.index(record['seed']), labels.index(record['labels'])] = record[key]
            entry[short] = {
                'mean': np.nanmean(table, axis=0).tolist(),
                'std': np.nanstd(table, axis=0).tolist(),
                'per_seed': {str(s): row.tolist() for s, row in zip(seeds, table, strict=True)},
            }
        curves[method] = entry
    return curves


def _at(curve: dict[str, Any], quantity: str, labels: float) -> float:
    return float(np.interp(labels, curve['labels'], curve[quantity]['mean']))


def summarise(records: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The summary line: target, labels to target and their ratios to random, RMSE ratios at equal labels."""
    curves = curves_of(records)
    out: dict[str, Any] = {'summary': True, 'benchmark': 'pool_selection_summary'}
    if 'random' not in curves:
        out['note'] = 'no random baseline: no target, no ratios'
        out['curves'] = curves
        return out
    random_curve = curves['random']
    target = random_curve['force']['mean'][-1]
    random_labels = float(random_curve['labels'][-1])
    out['target_force_rmse_mev_per_ang'] = target
    out['target_definition'] = (
        "random's final overall test force RMSE (mean over seeds); labels to target: first label count at which a "
        "method's seed-mean overall force RMSE is at or below it, linearly interpolated between rounds; random's "
        'labels to target = its final label count; ratio = labels / random labels (null: never reached, then '
        '*_lower_bound = final labels / random labels)'
    )
    reached: dict[str, float | None] = {}
    out['labels_to_target'], out['labels_ratio_vs_random'] = {}, {}
    for method, curve in curves.items():
        value = (
            random_labels if method == 'random' else labels_to_target(curve['labels'], curve['force']['mean'], target)
        )
        reached[method] = value
        out['labels_to_target'][method] = value
        out['labels_ratio_vs_random'][method] = None if value is None else value / random_labels
        if value is None:
            out['labels_ratio_vs_random'][f'{method}_lower_bound'] = curve['labels'][-1] / random_labels
    out['labels_to_target_per_seed'] = {
        method: {
            seed: labels_to_target(curve['labels'], row, target) for seed, row in curve['force']['per_seed'].items()
        }
        for method, curve in curves.items()
    }
    candidates = {m: reached[m] for m in BEST_DIVERSE_CANDIDATES if m in reached and reached[m] is not None}
    best = min(candidates, key=candidates.get) if candidates else None
    out['best_diverse_method'] = best
    out['pool_labels_ratio_best_vs_random'] = None if best is None else candidates[best] / random_labels
    out['pool_labels_ratio_best_vs_random_target'] = 0.5
    # guard against a flat random curve: where random's own seed-mean curve first reaches its final value
    own = labels_to_target(random_curve['labels'], random_curve['force']['mean'], target)
    out['random_labels_to_target_own_curve'] = own
    out['pool_labels_ratio_best_vs_random_own_curve'] = (
        None if best is None or not own else candidates[best] / own
    )  # fmt: skip

    def fewer(ours: str, theirs: str) -> bool:
        """``ours`` reached the target and with fewer labels than ``theirs`` (which may not have reached it)."""
        return reached[ours] is not None and (reached[theirs] is None or reached[ours] < reached[theirs])

    comparisons = {f'{d}_vs_{n}': fewer(d, n) for d in DIVERSE for n in NAIVE if d in curves and n in curves}
    out['fewer_labels_than'] = comparisons
    for naive in NAIVE:
        pairs = [value for key, value in comparisons.items() if key.endswith(f'_vs_{naive}')]
        if pairs:
            name = 'maxdiag' if naive == 'maxdiag_gp' else naive
            out[f'diverse_need_fewer_labels_than_{name}'] = all(pairs)
    counts = settings.label_counts()
    for tag, labels in (('final', counts[-1]), ('mid', counts[len(counts) // 2])):
        ratios: dict[str, Any] = {'labels': labels}
        for method, curve in curves.items():
            if method != 'random':
                ratios[method] = {
                    quantity: _at(curve, quantity, labels) / _at(random_curve, quantity, labels)
                    for quantity in ('force', 'force_worst', 'energy', 'energy_worst')
                }
        out[f'rmse_ratio_vs_random_at_{tag}_labels'] = ratios
    out['final_mean_rmse'] = {
        method: {quantity: curve[quantity]['mean'][-1] for quantity in ('force', 'force_worst', 'energy')}
        for method, curve in curves.items()
    }
    out['targets'] = {
        'best_diverse_labels_ratio_le_0.5': out['pool_labels_ratio_best_vs_random'] is not None
        and out['pool_labels_ratio_best_vs_random'] <= 0.5,
        'diverse_need_fewer_labels_than_maxdiag': out.get('diverse_need_fewer_labels_than_maxdiag'),
    }
    out['curves'] = {
        method: {
            'labels': curve['labels'],
            **{quantity: {'mean': curve[quantity]['mean'], 'std': curve[quantity]['std']} for quantity in
               ('force', 'force_worst', 'energy', 'energy_worst')},
        }
        for method, curve in curves.items()
    }  # fmt: skip
    out['cpu_s_per_method'] = {
        method: sum(r['train_cpu_s'] + r.get('select_cpu_s', 0.0) for r in records if r['method'] == method)
        for method in curves
    }
    out['cpu_s_total'] = sum(out['cpu_s_per_method'].values())
    return out


def plot_curves(records: list[dict[str, Any]], target: float | None, path: pathlib.Path, model: str = '') -> None:
    """Overall and worst-condition test force RMSE against labels, mean ± std over seeds, log-log (``model``: a
    note after the title)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    curves = curves_of(records)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    titles = {'force': 'overall test force RMSE', 'force_worst': 'worst condition: test force RMSE'}
    for axis, quantity in zip(axes, titles, strict=True):
        for method, curve in curves.items():
            labels = np.array(curve['labels'], dtype=float)
            mean, std = np.array(curve[quantity]['mean']), np.array(curve[quantity]['std'])
            line = axis.plot(labels, mean, marker='o', markersize=3, label=method)[0]
            lower = np.maximum(mean - std, 0.5 * mean)  # keep the band on the log axis
            axis.fill_between(labels, lower, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
        if quantity == 'force' and target is not None:
            axis.axhline(target, color='black', linestyle=':', linewidth=1, label="target (random's final)")
        axis.set_xscale('log')
        axis.set_yscale('log')
        axis.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([20, 50, 100, 200]))
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overprinted minor labels
        axis.set_title(titles[quantity])
        axis.set_xlabel('labelled configurations')
        axis.set_ylabel('meV/Å')
        axis.grid(alpha=0.3, which='both')
    axes[0].legend(fontsize=8)
    n_seeds = max(len(curve['seeds']) for curve in curves.values())
    figure.suptitle(f'EMT Cu MD pool: batch active learning vs random, mean ± std over {n_seeds} seed(s){model}')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


#: method name -> how the docs' tables name it
METHOD_TITLES = {
    'random': 'random',
    'maxdiag_gp': 'MaxDiag + GP',
    'maxdet_gp': 'MaxDet + GP',
    'maxdist_feat': 'MaxDist + FEAT',
    'lcmd_feat': 'LCMD + FEAT',
    'qbc_maxdiag': 'QBC MaxDiag',
}
#: label counts the learning-curve tables show (those a run has; all of its counts when it has fewer than two of these)
TABLE_LABELS = (20, 40, 60, 100, 140, 200)


def markdown_tables(records: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    """The docs' tables of a run (Markdown): overall and worst-condition test force RMSE, meV/Å, mean ± standard
    deviation over the seeds at :data:`TABLE_LABELS`; per condition at the final labels (seed means); the
    conditions of the picked labels; with ``summary`` (the summary line) labels to random's final error per method,
    from the seed-mean curve and per seed, and the RMSE ratios to random at equal labels."""
    curves = curves_of(records)
    if not curves:
        return ''
    labels = sorted({count for curve in curves.values() for count in curve['labels']})
    columns = [count for count in labels if count in TABLE_LABELS]
    columns = columns if len(columns) > 1 else labels
    n_seeds = max(len(curve['seeds']) for curve in curves.values())
    lines: list[str] = []

    def table(header: list[str], rows: list[list[str]]) -> None:
        lines.append('| ' + ' | '.join(header) + ' |')
        lines.append('|' + '---|' * len(header))
        lines.extend('| ' + ' | '.join(row) + ' |' for row in rows)
        lines.append('')

    for quantity, title in (('force', 'Overall'), ('force_worst', 'Worst condition')):
        lines.append(f'{title}, test force RMSE (meV/Å), mean ± std over {n_seeds} seed(s):')
        lines.append('')
        rows = []
        for method, curve in curves.items():
            cells = []
            for count in columns:
                if count not in curve['labels']:
                    cells.append('–')
                    continue
                at = curve['labels'].index(count)
                cells.append(f'{curve[quantity]["mean"][at]:.1f} ± {curve[quantity]["std"][at]:.1f}')
            rows.append([METHOD_TITLES.get(method, method), *cells])
        table(['method', *map(str, columns)], rows)

    final = labels[-1]
    conditions = list(
        dict.fromkeys(name for r in records for name in r.get('force_rmse_per_condition_mev_per_ang', {}))
    )
    if conditions:
        lines.append(f'Per condition at {final} labels, test force RMSE (meV/Å), mean over the seeds:')
        lines.append('')
        rows = []
        for method in curves:
            mine = [r for r in records if r['method'] == method and r['labels'] == final]
            cells = []
            for name in conditions:
                values = [r['force_rmse_per_condition_mev_per_ang'][name] for r in mine
                          if name in r.get('force_rmse_per_condition_mev_per_ang', {})]  # fmt: skip
                cells.append(f'{np.mean(values):.1f}' if values else '–')
            rows.append([METHOD_TITLES.get(method, method), *cells])
        table(['method', *(name.replace('_', ' ') for name in conditions)], rows)

        lines.append(
            'Share of each condition among the labels every method picked (rounds after the first, all seeds):'
        )
        lines.append('')
        rows = []
        for method in curves:
            picked = dict.fromkeys(conditions, 0)
            for seed in {r['seed'] for r in records if r['method'] == method}:
                mine = sorted((r for r in records if r['method'] == method and r['seed'] == seed),
                              key=lambda r: r['labels'])  # fmt: skip
                first, last = mine[0].get('labelled_per_condition', {}), mine[-1].get('labelled_per_condition', {})
                for name in conditions:
                    picked[name] += last.get(name, 0) - first.get(name, 0)
            total = sum(picked.values())
            cells = [f'{100 * picked[name] / total:.0f} %' if total else '–' for name in conditions]
            rows.append([METHOD_TITLES.get(method, method), *cells])
        table(['method', *(name.replace('_', ' ') for name in conditions)], rows)

    if summary and summary.get('labels_to_target'):
        target = summary['target_force_rmse_mev_per_ang']
        seeds = [str(seed) for seed in sorted({r['seed'] for r in records})]
        lines.append(f"Labels to random's final overall error ({target:.1f} meV/Å; linear interpolation; – : never):")
        lines.append('')
        rows = []
        for method, value in summary['labels_to_target'].items():
            ratio = summary['labels_ratio_vs_random'].get(method)
            per_seed = summary.get('labels_to_target_per_seed', {}).get(method, {})
            cells = ['–' if value is None else f'{value:.0f}', '–' if ratio is None else f'{ratio:.2f}']
            cells += ['–' if per_seed.get(seed) is None else f'{per_seed[seed]:.0f}' for seed in seeds]
            rows.append([METHOD_TITLES.get(method, method), *cells])
        table(['method', 'labels (seed mean)', 'ratio to random', *(f'seed {seed}' for seed in seeds)], rows)
        mid, end = (summary.get(f'rmse_ratio_vs_random_at_{tag}_labels') for tag in ('mid', 'final'))
        if mid and end:
            lines.append('Force RMSE relative to random at equal labels (seed means):')
            lines.append('')
            header = ['method']
            for ratios in (mid, end):
                header += [f'overall, {ratios["labels"]} labels', f'worst, {ratios["labels"]} labels']
            rows = []
            for method in curves:
                if method in mid and method in end:
                    cells = [f'{ratios[method][quantity]:.2f}' for ratios in (mid, end)
                             for quantity in ('force', 'force_worst')]  # fmt: skip
                    rows.append([METHOD_TITLES.get(method, method), *cells])
            table(header, rows)
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------- settings check
#: model sizes the convergence check compares (GMNNHyperparameters overrides)
MODEL_SIZES: dict[str, tuple[tuple[str, Any], ...]] = {
    'small': (('cutoff', 4.0), ('n_basis', 5), ('n_radial', 3), ('hidden_widths', (32, 32))),
    'small_wide': (('cutoff', 4.0), ('n_basis', 5), ('n_radial', 3), ('hidden_widths', (128, 128))),
    'medium': (('cutoff', 5.0), ('n_basis', 7), ('n_radial', 5), ('hidden_widths', (64, 64))),
}


def check_run(task: tuple[str, int, int, int, float, Settings, str]) -> dict[str, Any]:
    """One training of the convergence check: ``n_train`` random pool frames (seed 0), a model size, a mini-batch
    size and a number of optimiser steps; test errors as in the campaigns."""
    import torch

    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.models.training import train

    size, n_train, batch_size, steps, lr_scale, settings, folder = task
    torch.set_num_threads(1)
    sets = {name: ConfigurationArrays.load(pathlib.Path(folder) / f'{name}.npz') for name in ('pool', 'valid', 'test')}
    settings = dataclasses.replace(
        settings, model=MODEL_SIZES[size], epochs=1, min_steps=steps, train_batch_size=batch_size, lr_scale=lr_scale
    )  # epochs_for(n_train) = ceil(steps / mini-batches per epoch)
    hyperparameters = GMNNHyperparameters(species=['Cu'], **dict(settings.model), seed=0)
    chosen = np.random.default_rng(_seed(0, 3)).choice(len(sets['pool']), n_train, replace=False)
    config = training_config(settings, n_train, 0)
    model = GMNN(hyperparameters)
    tick, tick_cpu = time.perf_counter(), time.process_time()
    result = train(model, sets['pool'].subset(chosen), sets['valid'], config)
    train_s, train_cpu_s = time.perf_counter() - tick, time.process_time() - tick_cpu
    record = {
        'benchmark': 'pool_selection_convergence_check',
        'model_size': size,
        'n_train': n_train,
        'train_batch_size': batch_size,
        'steps': steps,
        'lr_scale': lr_scale,
        'epochs': config.epochs,
        'best_epoch': result.best_epoch,
        **error_fields(test_errors(model, condition_graphs(sets['test'], hyperparameters))),
        'train_s': train_s,
        'train_cpu_s': train_cpu_s,
    }
    log(
        f'[check] {size} n={n_train} batch {batch_size} lr x{lr_scale:g} steps {steps} ({config.epochs} epochs): test F '
        f'{record["force_rmse_mev_per_ang"]:.1f} meV/Å, E {record["energy_rmse_mev_per_atom"]:.2f} meV/atom, '
        f'{train_s:.0f} s'
    )
    return record


def convergence_summary(records: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per (model size, n_train, batch size): the smallest step count after which doubling the steps improves the
    overall test force RMSE by less than ``tolerance`` (relative)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        key = f'{record["model_size"]}_n{record["n_train"]}_batch{record["train_batch_size"]}_lr{record["lr_scale"]:g}'
        groups.setdefault(key, []).append(record)
    out: dict[str, Any] = {'summary': True, 'benchmark': 'pool_selection_convergence_check_summary'}
    out['tolerance'] = tolerance
    for key, group in groups.items():
        group.sort(key=lambda r: r['steps'])
        converged = None
        for before, after in itertools.pairwise(group):
            if after['force_rmse_mev_per_ang'] > (1 - tolerance) * before['force_rmse_mev_per_ang']:
                converged = before['steps']
                break
        out[key] = {
            'steps': [r['steps'] for r in group],
            'force_rmse_mev_per_ang': [r['force_rmse_mev_per_ang'] for r in group],
            'force_rmse_max_over_conditions_mev_per_ang': [
                r['force_rmse_max_over_conditions_mev_per_ang'] for r in group
            ],
            'energy_rmse_mev_per_atom': [r['energy_rmse_mev_per_atom'] for r in group],
            'train_s': [r['train_s'] for r in group],
            'train_cpu_s': [r.get('train_cpu_s') for r in group],
            'converged_steps': converged,
        }
    return out


# ---------------------------------------------------------------------------------------------------- main
def run_jobs(function, tasks: list[Any], jobs: int, on_done, on_error=None) -> None:
    """Call ``on_done(task, function(task))`` for every task as it finishes (``jobs`` single-threaded processes);
    a task that raises goes to ``on_error(task, exception)`` when given (the others go on), else the error is raised."""

    def failed(task: Any, error: Exception) -> None:
        if on_error is None:
            raise error
        on_error(task, error)

    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                result = function(task)
            except Exception as error:  # e.g. TrainingDivergedError: keep the other campaigns going
                failed(task, error)
                continue
            on_done(task, result)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_single_thread) as executor:
        futures = {executor.submit(function, task): task for task in tasks}
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                failed(futures[future], error)
            else:
                on_done(futures[future], future.result())


def resumed_records(
    path: pathlib.Path | None, settings: Settings, methods: list[str], seeds: list[int]
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Finished rounds of an interrupted run, {(method, seed): records in round order}: only rounds that follow on
    from each other from round 0 (a gap ends a campaign's resumable part). Refuses a file written with other
    settings (its summary's settings, or its label counts, differ) or with another model kind (``--model``)."""
    if path is None:
        return {}
    counts = settings.label_counts()
    groups: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith('{'):
            continue
        record = json.loads(line)
        if record.get('summary'):
            if record.get('settings', {}).get('label_counts', counts) != counts:
                raise SystemExit(f'{path}:{number}: written with other settings; cannot resume from it')
            if record.get('settings', {}).get('model_kind', 'gmnn') != settings.model_kind:
                raise SystemExit(f'{path}:{number}: written with another --model; cannot resume from it')
            continue
        if record.get('benchmark') != 'pool_selection' or 'train_indices' not in record:
            continue
        if record.get('model_kind', 'gmnn') != settings.model_kind:  # GM-NN records have no model_kind
            raise SystemExit(f'{path}:{number}: written with another --model; cannot resume from it')
        if record['method'] not in methods or record['seed'] not in seeds:
            continue
        if record.get('data_key') != settings.data_key():
            raise SystemExit(f'{path}:{number}: written with other data (data_key); cannot resume from it')
        if record['round'] >= len(counts) or record['labels'] != counts[record['round']]:
            raise SystemExit(f'{path}:{number}: label counts differ from these settings; cannot resume from it')
        groups.setdefault((record['method'], record['seed']), {})[record['round']] = record
    previous = {}
    for key, by_round in groups.items():
        chain = []
        while len(chain) in by_round and (len(chain) == len(counts) - 1 or 'picked_indices' in by_round[len(chain)]):
            chain.append(by_round[len(chain)])
        previous[key] = chain
    return previous


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(rounded(record)), flush=True)


def rounded(values: Any, digits: int = 4) -> Any:
    if isinstance(values, dict):
        return {key: rounded(value, digits) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [rounded(value, digits) for value in values]
    if isinstance(values, (float, np.floating)):
        return round(float(values), digits) if math.isfinite(values) else None
    if isinstance(values, np.integer):
        return int(values)
    return values


def data_statistics(sets: dict[str, Any]) -> dict[str, Any]:
    return {name: {'frames': len(arrays), **_counts(arrays.info['condition'])} for name, arrays in sets.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smoke test: tiny pool, every method, 1 seed (minutes)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='method seeds (default 0 1 2; quick: 0)')
    parser.add_argument('--methods', default=','.join(METHODS), help='comma-separated subset of the methods')
    parser.add_argument('--jobs', type=int, default=1, help='campaigns (or MD runs) at the same time, one core each')
    parser.add_argument(
        '--model', choices=('gmnn', 'mace'), default='gmnn',
        help="the model of every round: GM-NN (the benchmark's) or the campaign's fast MACE (see the docstring)",
    )  # fmt: skip
    parser.add_argument(
        '--plot', type=pathlib.Path, default=None,
        help=f'learning-curve PNG (default {DEFAULT_PLOT}; --model mace: {DEFAULT_PLOT_MACE.name} there)',
    )  # fmt: skip
    parser.add_argument(
        '--epochs', type=int, default=None,
        help='epochs per training for every method (default: the settings check\'s choice, see the docstring)',
    )  # fmt: skip
    parser.add_argument('--cache', default=str(DEFAULT_CACHE), help="folder of the generated data ('none': no cache)")
    parser.add_argument(
        '--resume',
        type=pathlib.Path,
        default=None,
        help='JSON lines of an interrupted run with the same settings: its finished rounds are kept, the campaigns go '
        'on from there (append the new output to the same file: --resume F >> F)',
    )
    parser.add_argument(
        '--summary-only',
        action='store_true',
        help='with --resume: run nothing, summarise (and plot) the seeds whose campaigns all finished',
    )
    parser.add_argument(
        '--tables', type=pathlib.Path, default=None,
        help="also write the run's tables (learning curves, per condition, labels to target) as Markdown there",
    )  # fmt: skip
    parser.add_argument('--device', default='cpu', help="where the models train and predict ('cpu', 'cuda')")
    parser.add_argument(
        '--convergence-check', action='store_true',
        help='instead of the campaigns: train on random pool frames with increasing optimiser steps (settings check)',
    )  # fmt: skip
    parser.add_argument('--check-sizes', type=int, nargs='+', default=[100], help='training-set sizes of the check')
    parser.add_argument('--check-steps', type=int, nargs='+', default=[100, 200, 400, 800, 1600])
    parser.add_argument('--check-batch-sizes', type=int, nargs='+', default=[8, 32])
    parser.add_argument('--check-models', nargs='+', default=['small'], choices=sorted(MODEL_SIZES))
    parser.add_argument('--check-lr-scales', type=float, nargs='+', default=[1.0], help="times seed 001's rates")
    parser.add_argument('--check-tolerance', type=float, default=0.05)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = (Settings.quick() if args.quick else Settings()).with_model(args.model, quick=args.quick)
    if args.plot is None:
        args.plot = DEFAULT_PLOT_MACE if args.model == 'mace' else DEFAULT_PLOT
    if args.convergence_check and args.model != 'gmnn':
        parser.error('--convergence-check is the GM-NN settings check; it has no --model mace')
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    methods = [name.strip() for name in args.methods.split(',') if name.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f'unknown methods {unknown}; choose from {list(METHODS)}')
    cache = None if args.cache.lower() == 'none' else pathlib.Path(args.cache)

    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        sets, data_s, cached = generate_data(settings, cache, args.jobs)
        folder = cache / settings.data_key() if cache is not None else pathlib.Path(scratch)
        if cache is None:
            for name, arrays in sets.items():
                arrays.save(folder / f'{name}.npz')
        statistics = data_statistics(sets)
        log(f'[data] {"cached" if cached else f"generated in {data_s:.0f} s"} ({folder}): {statistics}')

        if args.convergence_check:
            tasks = [(size, n, b, s, lr, settings, str(folder)) for size in args.check_models for n in args.check_sizes
                     for b in args.check_batch_sizes for lr in args.check_lr_scales
                     for s in sorted(args.check_steps, reverse=True)]  # fmt: skip
            records: list[dict[str, Any]] = []
            run_jobs(check_run, tasks, args.jobs, lambda task, record: (records.append(record), emit(record)))
            out = convergence_summary(records, args.check_tolerance)
            out.update({'data': statistics, 'total_s': time.perf_counter() - started, 'command': _command(argv)})
            emit(out)
            return

        # the committees (4 models per round, the longest campaigns) first, then seed by seed: parallel jobs finish
        # together, and a stopped run keeps every finished round anyway (--resume)
        previous = resumed_records(args.resume, settings, methods, seeds)
        finished = len(settings.label_counts())
        if args.summary_only:
            if args.resume is None:
                parser.error('--summary-only needs --resume')
            complete = [s for s in seeds if all(len(previous.get((m, s), [])) == finished for m in methods)]
            if not complete:
                parser.error(f'no seed of {seeds} has every campaign finished in {args.resume}')
            log(f'[summary only] seeds with every campaign finished: {complete} (of {seeds})')
            seeds = complete
            previous = {key: group for key, group in previous.items() if key[1] in complete}
        tasks = [
            (method, seed, settings, str(folder), args.device, previous.get((method, seed), []))
            for seed in seeds
            for method in methods
            if len(previous.get((method, seed), [])) < finished and not args.summary_only
        ]
        tasks.sort(key=lambda task: (task[0] != 'qbc_maxdiag', seeds.index(task[1])))
        records = [record for group in previous.values() for record in group]
        if args.resume is not None:
            log(f'[resume] {len(records)} finished rounds from {args.resume}; {len(tasks)} campaigns to go on')

        def done(task: tuple[str, int, Settings, str, str, list[dict[str, Any]]], result: list[dict[str, Any]]) -> None:
            records.extend(result)  # each round was printed by the campaign itself

        failures: dict[str, str] = {}

        def error(task: tuple[str, int, Settings, str, str, list[dict[str, Any]]], exception: Exception) -> None:
            failures[f'{task[0]} seed {task[1]}'] = f'{type(exception).__name__}: {exception}'
            log(f'[{task[0]} seed {task[1]}] FAILED: {type(exception).__name__}: {exception}')

        campaigns_started = time.perf_counter()
        run_jobs(run_campaign, tasks, args.jobs, done, error)
        campaigns_s = time.perf_counter() - campaigns_started

    records.sort(key=lambda r: (methods.index(r['method']), r['seed'], r['labels']))
    out = summarise(records, settings)
    plot_curves(records, out.get('target_force_rmse_mev_per_ang'), args.plot, ' (MACE)' if args.model == 'mace' else '')
    out.update(
        {
            'quick': args.quick,
            'methods': methods,
            'seeds': seeds,
            'errors_of_qbc': "mean of the committee members' errors (seed 001); the committee-mean prediction's "
            'errors are in each qbc_maxdiag line under "committee_mean"',
            'data': statistics,
            'failed_campaigns': failures,
            'data_cached': cached,
            'data_s': data_s,
            'campaigns_s': campaigns_s,
            'wall_s': time.perf_counter() - started,
            'jobs': args.jobs,
            'device': args.device,
            'resumed_rounds': sum(len(group) for group in previous.values()),
            'summary_only': args.summary_only,
            'plot': str(args.plot),
            'command': _command(argv),
            'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, torch threads 1 per job',
            'settings': settings.as_dict(),
        }
    )
    if args.model != 'gmnn':  # GM-NN's summary keeps its keys
        out['model_kind'] = args.model
        out['hyperparameters'] = settings.hyperparameters().to_dict()
        out['avg_num_neighbors'] = "from each round's training set (the train job's rule), in each round's line"
    if args.tables is not None:
        args.tables.parent.mkdir(parents=True, exist_ok=True)
        args.tables.write_text(markdown_tables(records, out), encoding='utf-8')
        out['tables'] = str(args.tables)
    emit(out)


def _command(argv: list[str] | None) -> str:
    arguments = sys.argv[1:] if argv is None else argv
    return ' '.join(['python', 'benchmarks/bench_pool_selection.py', *arguments])


if __name__ == '__main__':
    main()
