"""Explore with (biased) MD driven by a trained potential: ``python -m aiida_alkit.jobs.explore <folder>``.

Reads ``potential.pt`` (a model of any kind or a committee), ``seeds.npz`` (starting structures), optionally ``training.npz``
(the training set: gradient features for selection, the minimum interatomic distance for the unphysical-frame
check) and ``parameters.json``, e.g.::

    {"walkers": 4, "steps": 200, "temperature_K": 300.0, "pressure_GPa": null, "sample_every": 10,
     "bias": {"kind": "gradient", "relative_tau": 0.2}, "stop": {"uncertainty": 1.5},
     "features": {"kind": "sketch", "dim": 512}}

Every key, its default, unit and allowed values: :class:`~aiida_alkit.jobs.explore_parameters.ExploreParameters`
(the one definition, also used by the CalcJob's validator and the campaign's checks). The bias kinds and stop
criteria are registries in :mod:`aiida_alkit.jobs.explore_terms` (plugins can add their own).

Writes ``pool.npz`` (the candidates: frames every ``sample_every`` steps plus each walker's stop frame, with walker,
step, temperature, pressure, volume, model energy and uncertainties in ``info``), ``scores.npz`` (per-candidate
arrays for the select step: ``pool_features``/``train_features`` (gradient features), ``calibrated_uncertainty``
(max atom posterior uncertainty as a conformally calibrated force-error bound, eV/Å, when the training set has a
validation configuration; the same calibration as the walker stop, its record in ``results.json`` under
``calibration``), ``max_force_deviation`` (committee, eV/Å), ``kpu`` (RLEKF; with ``kpu_trained``, the training set's mean KPU
as one value, the alkpu window's reference), ``hal_stop`` and ``relative_force_uncertainty``
(with ``stop.hal``: whether a candidate is a walker's HAL stop frame, its max relative force uncertainty f_i, and
its ``walker``)), ``stops.json`` (why and when each walker stopped) and ``results.json`` (with ``timings_s``: wall
seconds of the stages ``load``, ``calibration``, ``md`` and ``scores``).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import configure_threads, progress, run_job
from aiida_alkit.jobs.explore_parameters import (
    BarostatParameters,
    BiasParameters,
    ExploreParameters,
    MonteCarloParameters,
)
from aiida_alkit.jobs.explore_terms import AtomCalibration, ExploreContext, bias_kinds, bias_term_and_stop_criteria

__all__ = [
    'POOL_FILE',
    'POTENTIAL_FILE',
    'SCORES_FILE',
    'SEEDS_FILE',
    'STOPS_FILE',
    'TRAINING_FILE',
    'main',
    'potential_forces',
]

POTENTIAL_FILE = 'potential.pt'
SEEDS_FILE = 'seeds.npz'
TRAINING_FILE = 'training.npz'
POOL_FILE = 'pool.npz'
SCORES_FILE = 'scores.npz'
STOPS_FILE = 'stops.json'


def load_model(path: pathlib.Path, device: str):
    """A model or a committee, of whatever kind the potential file holds (its ``model_kind``)."""
    from aiida_alkit.models.potential import load_potential

    return load_potential(path, device=device)


def potential_forces(model, arrays: ConfigurationArrays, batch_size: int = 32) -> np.ndarray:
    """Forces (N, 3), eV/Å, of a model or a committee (member mean) on every configuration of ``arrays``."""
    from aiida_alkit.models.batching import batch_from_configurations

    first = next(iter(getattr(model, 'members', [model])))
    parts = []
    for start in range(0, len(arrays), batch_size):
        indices = np.arange(start, min(start + batch_size, len(arrays)))
        batch = batch_from_configurations(arrays, first.species, first.cutoff, indices, first.device, first.dtype)
        if hasattr(model, 'members'):
            forces = model.predict(batch)['forces']
        else:
            forces = model(batch, compute_forces=True, training=False)['forces']
        parts.append(np.asarray(forces.detach().cpu(), dtype=np.float64))
    return np.concatenate(parts)


def _training_min_distance(train: ConfigurationArrays | None, cutoff: float = 4.0) -> float | None:
    if train is None:
        return None
    from aiida_alkit.io.geometry import min_interatomic_distances

    distances = min_interatomic_distances(train.positions, train.cells, train.pbc, train.offsets, cutoff)
    finite = distances[np.isfinite(distances)]
    return float(finite.min()) if finite.size else None


def _main(folder: pathlib.Path, parameters: dict[str, Any]) -> dict[str, Any]:

    from aiida_alkit.exploration.bias import BiasedPotential
    from aiida_alkit.exploration.dynamics import BatchedMD, PhysicalLimits
    from aiida_alkit.exploration.pool import CandidatePool
    from aiida_alkit.jobs.train import _device

    timer = _StageTimer()
    threads = configure_threads(parameters)
    if threads is not None:
        progress(f'torch threads: {threads}')
    settings = ExploreParameters.from_dict(parameters, runtime=True)
    device = _device(settings.device)
    model = load_model(folder / POTENTIAL_FILE, device)
    members = list(getattr(model, 'members', [model]))
    seeds = ConfigurationArrays.load(folder / SEEDS_FILE)
    train = ConfigurationArrays.load(folder / TRAINING_FILE) if (folder / TRAINING_FILE).is_file() else None
    rng = np.random.default_rng(settings.seed)
    n_walkers = settings.walkers
    starts = [seeds.get_atoms(int(i)) for i in rng.permutation(np.resize(np.arange(len(seeds)), n_walkers))]
    for atoms in starts:
        atoms.calc = None

    bias, stop = settings.bias, settings.stop
    strength, stress_strength = _bias_strengths(bias)
    pressure = settings.pressure_GPa
    timer.lap('load')
    calibration = _atom_calibration(members, settings, train)
    criteria, term = bias_term_and_stop_criteria(ExploreContext(members, train, settings, calibration))
    timer.lap('calibration')
    potential = BiasedPotential(
        model if len(members) > 1 else members[0],
        term=term,
        strength=strength if term is not None else 0.0,
        stress_strength=stress_strength if term is not None else 0.0,
        species_strength=bias.species_strength,
        compute_stress=pressure is not None,
        neighbor_skin=settings.neighbor_skin_A,
    )
    physical = PhysicalLimits(
        max_force=stop.max_force,
        training_min_distance=_training_min_distance(train),
        min_distance_fraction=stop.min_distance_fraction,
    )
    pool = CandidatePool(interval=settings.sample_every)
    progress(
        f'exploring with {n_walkers} walkers for up to {settings.steps} steps at {settings.temperature_K} K'
        + (f', {pressure} GPa' if pressure is not None else '')
        + f', bias {bias.kind}'
    )
    md = BatchedMD(
        potential,
        starts,
        timestep=settings.timestep_fs,
        temperature=settings.temperature_K,
        friction=settings.friction_per_fs,
        n_steps=settings.steps,
        criteria=criteria,
        physical=physical,
        barostat=_barostat(settings.barostat, potential, starts) if pressure is not None else None,
        pressure=pressure,
        monte_carlo=_monte_carlo(settings.monte_carlo, starts, pressure),
        pool=pool,
        seed=settings.seed,
    )
    result = md.run()
    timer.lap('md')
    stops = {
        str(w): {'reason': r, 'step': result.stop_steps.get(w, -1)} for w, r in sorted(result.stop_reasons.items())
    }
    (folder / STOPS_FILE).write_text(json.dumps(stops, indent=1))
    reasons: dict[str, int] = {}
    for value in result.stop_reasons.values():
        reasons[value] = reasons.get(value, 0) + 1
    if not len(pool):
        return {'status': 'empty', 'error_message': 'no candidate frame was recorded', 'stop_counts': reasons}
    arrays = pool.to_arrays()
    arrays.save(folder / POOL_FILE)
    scores = _scores(model, members, arrays, train, settings, folder, calibration)
    np.savez(folder / SCORES_FILE, **scores)
    timer.lap('scores')
    progress(f'{len(arrays)} candidates; walker stops: {reasons}')
    results = {'status': 'ok', 'n_candidates': len(arrays), 'n_steps': int(result.n_steps), 'stop_counts': reasons}
    if calibration is not None:
        results['calibration'] = calibration.record
    if md.monte_carlo is not None:
        results['mc_acceptance'] = result.mc_acceptance  # move kind -> [accepted, attempted]
    results['neighbor_lists'] = {'rebuilt': potential.neighbor_rebuilds, 'needed': potential.neighbor_requests}
    results['timings_s'] = timer.laps  # load, calibration, md, scores (pool features and uncertainties), seconds
    return results


class _StageTimer:
    """Wall seconds of the job's stages (``laps``: stage name -> s), the device synchronised at each lap so that
    asynchronous GPU work is charged to the stage that queued it."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _bias_strengths(bias: BiasParameters) -> tuple[Any, Any]:
    """τ of the bias forces and τ_s of the bias stress: adaptive (seed 002 eq. 12, seed 003 eq. 8: "an equivalent
    expression is applied for bias stresses") from ``relative_tau`` / ``relative_stress_tau``, each with its own
    history and a burn-in of ``burn_in_steps`` (default 100, as HAL) with τ = 0; else the constants ``tau`` /
    ``stress_tau``."""
    from aiida_alkit.exploration.bias import AdaptiveStrength

    strengths: list[Any] = []
    for relative, constant in ((bias.relative_tau, bias.tau), (bias.relative_stress_tau, bias.stress_tau)):
        strengths.append(AdaptiveStrength(float(relative), burn_in=bias.burn_in_steps) if relative else constant)
    return strengths[0], strengths[1]


def _barostat(settings: BarostatParameters, potential, starts: list) -> Any:
    """The NPT barostat (``barostat``): stochastic cell rescaling (default) or Berendsen, τ_P ``tau_fs`` (1000 fs)
    and β_T ``compressibility_per_GPa``, by default each walker's own from the model (B = V ∂²E/∂V² at its start)."""
    from aiida_alkit.exploration.dynamics import (
        BerendsenBarostat,
        StochasticCellRescaling,
        WalkerSystem,
        estimate_compressibility,
    )

    tau = settings.tau_fs
    compressibility: Any = settings.compressibility_per_GPa
    if compressibility is None:
        compressibility = estimate_compressibility(potential, WalkerSystem.from_atoms(starts))
        progress(f'barostat compressibility from the model: {np.round(compressibility, 5).tolist()} 1/GPa')
    if settings.kind == 'berendsen':
        return BerendsenBarostat(tau=tau, compressibility=compressibility, anisotropic=settings.anisotropic)
    return StochasticCellRescaling(tau=tau, compressibility=compressibility)


def _monte_carlo(settings: MonteCarloParameters | None, starts: list, pressure: Any) -> Any:
    """HAL's Monte-Carlo moves on E_bias (``monte_carlo``, seed 002), or None."""
    from aiida_alkit.exploration.dynamics import MonteCarlo

    if settings is None:
        return None
    monte_carlo = MonteCarlo(
        interval=settings.every,
        n_swap=settings.swap,
        n_volume=settings.volume,
        n_cell=settings.cell,
        max_log_change=float(settings.max_log_volume_change),
        cell_strain=float(settings.cell_strain),
    )
    skipped = []
    if monte_carlo.n_swap and all(len(set(atoms.numbers)) < 2 for atoms in starts):
        skipped.append('swaps (every walker has a single element)')
    if (monte_carlo.n_volume or monte_carlo.n_cell) and pressure is None:
        skipped.append('volume and cell moves (no pressure_GPa: the cell stays fixed)')
    if skipped:
        progress('Monte Carlo: no ' + ', no '.join(skipped))
    return monte_carlo


def _atom_calibration(members: list, settings: ExploreParameters, train) -> AtomCalibration | None:
    """Calibrated atom uncertainty of a single model (seed 003 Methods), used by the walker stop, the gradient bias
    and the candidate scores alike, so that ``stop.uncertainty`` (e.g. 1.5 eV/Å) and the select step's
    ``uncertain_above`` (e.g. 0.15 eV/Å) are bounds on the same calibrated quantity.

    The GP posterior (seed 003 eq. 4) is fitted on the atomic sketched gradient features (``bias.dim``, default 256)
    of the configurations whose ``info.split`` is 'train'; inductive conformal calibration pools the per-atom scores
    ``|ΔF_i| / u_i`` of every 'valid' configuration (per-atom force RMSE, eV/Å) at confidence 1 - ``calibration_alpha``
    (default 0.1), with the quantile level clipped to 1 when there are too few atoms (recorded). A committee's or the
    HAL bias's exploration calibrates its first model's term for the scores only. None when neither the features,
    the stop nor the bias needs it, or without a validation configuration.
    """
    from aiida_alkit.exploration.terms import GradientFeatureUncertainty, calibrated, fit_atom_calibrator

    kind = settings.bias.kind
    # the single-model stop.uncertainty compares the calibrated atom uncertainty for the kinds marked `calibrated`
    single_stop = settings.stop.uncertainty is not None and len(members) == 1 and bias_kinds()[kind].calibrated
    if not (single_stop or kind == 'gradient' or settings.features_requested):
        return None
    if train is None or train.forces is None or 'split' not in train.info:
        return None
    valid = np.flatnonzero(train.info['split'] == 'valid')
    fit = np.flatnonzero(train.info['split'] != 'valid')
    if valid.size < 1 or fit.size < 1:
        return None
    model = members[0]
    term = GradientFeatureUncertainty.from_data(model, train.subset(fit), kind='posterior', dim=settings.bias.dim)
    structures = [train.get_atoms(int(i)) for i in valid]
    calibrator = fit_atom_calibrator(term, structures, alpha=settings.stop.calibration_alpha)
    record = calibrator.record(n_structures=int(valid.size), n_fit_structures=int(fit.size))
    progress(
        f'calibration: q_hat = {record["q_hat"]:.4g} (eV/Å per unit u) from {record["n_scores"]} atoms of '
        f'{valid.size} validation configurations'
        + (' (quantile level clipped to 1)' if record['level_clipped'] else '')
    )
    return AtomCalibration(term=calibrated(term, calibrator), record=record)


def _scores(model, members, arrays, train, settings: ExploreParameters, folder, calibration) -> dict[str, np.ndarray]:
    """Per-candidate arrays for selection: gradient features, calibrated uncertainty, committee deviation, KPU.

    Structure features are per-atom means of the atomic features (``features.normalise_per_atom``, default true, as
    the gradient bias uses them, seed 003 eq. 21) or sums (false, seed 001 eq. 11). ``calibrated_uncertainty`` is the
    largest calibrated atom uncertainty of a candidate, eV/Å (the quantity the walker stop compares).
    """
    from aiida_alkit.models.batching import batch_from_configurations

    scores: dict[str, np.ndarray] = {}
    first = members[0]
    features = settings.features
    if features is not None:
        from aiida_alkit.uncertainty.features import compute_features

        options = {
            'kind': features.kind,
            'dim': features.dim,
            'seed': 0,
            'normalise_per_atom': features.normalise_per_atom,
        }
        scores['pool_features'] = np.asarray(compute_features(first, arrays, per_atom=False, **options).structure)
        if train is not None:
            scores['train_features'] = np.asarray(compute_features(first, train, per_atom=False, **options).structure)
        if calibration is not None:
            scores['calibrated_uncertainty'] = calibrated_uncertainty(calibration, arrays)
    if settings.stop.hal is not None and 'frame_kind' in arrays.info:
        # seed 002: the configuration at which HAL's stop criterion fired is the one to label
        reasons = np.asarray(arrays.info['stop_reason']).astype(str)
        scores['hal_stop'] = (np.asarray(arrays.info['frame_kind']).astype(str) == 'stop') & np.char.startswith(
            reasons, 'hal'
        )
        scores['relative_force_uncertainty'] = np.asarray(arrays.info['f_max'], dtype=np.float64)
        scores['walker'] = np.asarray(arrays.info['walker'], dtype=np.int64)
    if len(members) > 1:
        deviation = []
        for start in range(0, len(arrays), 32):
            indices = np.arange(start, min(start + 32, len(arrays)))
            batch = batch_from_configurations(arrays, first.species, first.cutoff, indices, first.device, first.dtype)
            deviation.append(np.asarray(model.predict(batch)['max_force_deviation'].detach().cpu(), dtype=np.float64))
        scores['max_force_deviation'] = np.concatenate(deviation)
    from aiida_alkit.models.serialization import load_potential_file

    extras = load_potential_file(folder / POTENTIAL_FILE).extras
    if 'rlekf' in extras and len(members) == 1:
        from aiida_alkit.models.rlekf import kalman_prediction_uncertainty

        fraction = settings.kpu.fraction
        values = []
        for start in range(0, len(arrays), 16):
            indices = np.arange(start, min(start + 16, len(arrays)))
            batch = batch_from_configurations(arrays, first.species, first.cutoff, indices, first.device, first.dtype)
            values.append(kalman_prediction_uncertainty(first, extras['rlekf'], batch, fraction=fraction, seed=start))
        scores['kpu'] = np.concatenate(values)
        if 'kpu_trained' in extras:  # the alkpu window's reference (one value, seed 000), kept with the scores
            scores['kpu_trained'] = np.array([float(extras['kpu_trained'])])
    return scores


def calibrated_uncertainty(calibration: AtomCalibration, arrays: ConfigurationArrays) -> np.ndarray:
    """Largest calibrated atom uncertainty ``max_i q̂ u_i`` of every configuration, eV/Å (seed 003 Methods): the
    same term and q̂ as the walker stop, so a candidate recorded at the stop has the score that stopped it."""
    _, atoms = calibration.term.evaluate(arrays)
    starts = np.concatenate([[0], np.cumsum(arrays.sizes)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(np.asarray(atoms, dtype=np.float64), starts)


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == '__main__':
    raise SystemExit(main())
