"""Explore with (biased) MD driven by a trained potential: ``python -m aiida_alkit.jobs.explore <folder>``.

Reads ``potential.pt`` (a GM-NN or a committee), ``seeds.npz`` (starting structures), optionally ``training.npz``
(the training set: gradient features for selection, the minimum interatomic distance for the unphysical-frame
check) and ``parameters.json``::

    {"walkers": 4, "steps": 200, "timestep_fs": 2.0, "temperature_K": 300.0, "friction_per_fs": 0.01,
     "pressure_GPa": null,                       # a number: NPT with a Berendsen barostat
     "sample_every": 10, "seed": 0,
     "bias": {"kind": "none" | "committee" | "gradient" | "hal", "tau": 0.0, "relative_tau": null,
              "stress_tau": 0.0, "species_strength": {}, "dim": 256},
     "stop": {"max_force": 20.0, "min_distance_fraction": 0.75,   # eV/Å; unphysical frames
              "uncertainty": null,        # eV/Å: committee force deviation, or the calibrated gradient-feature
                                          # atom uncertainty of a single model (seed 003), above which a walker stops
              "calibration_alpha": 0.1,   # conformal miscoverage of that calibration
              "hal": null,                # {"s_tol": 0.5, "f_tol": null}: HAL's stop (seed 002 eq. 6-8), bias hal
              "gamma_break": null,        # D-optimality extrapolation grade above which a walker stops (seed 004)
              "check_every": 1},          # MD steps between two gamma evaluations
     "features": {"kind": "sketch", "dim": 512},  # null: no gradient features
     "kpu": {"fraction": 0.5},                    # when the potential carries RLEKF P blocks
     "device": "auto", "num_threads": null}

Writes ``pool.npz`` (the candidates: frames every ``sample_every`` steps plus each walker's stop frame, with walker,
step, temperature, pressure, volume, model energy and uncertainties in ``info``), ``scores.npz`` (per-candidate
arrays for the select step: ``pool_features``/``train_features`` (gradient features), ``calibrated_uncertainty``
(max atom posterior uncertainty as a conformally calibrated force-error bound, eV/Å, when the training set has a
validation split), ``max_force_deviation`` (committee, eV/Å), ``kpu`` (RLEKF)), ``stops.json`` (why and when each walker stopped) and ``results.json``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import progress, run_job

__all__ = ['POOL_FILE', 'POTENTIAL_FILE', 'SCORES_FILE', 'SEEDS_FILE', 'STOPS_FILE', 'TRAINING_FILE', 'main']

POTENTIAL_FILE = 'potential.pt'
SEEDS_FILE = 'seeds.npz'
TRAINING_FILE = 'training.npz'
POOL_FILE = 'pool.npz'
SCORES_FILE = 'scores.npz'
STOPS_FILE = 'stops.json'


def load_model(path: pathlib.Path, device: str):
    """A GM-NN or a committee from a potential file (by its ``model_kind``)."""
    from aiida_alkit.models.serialization import load_potential_file

    kind = load_potential_file(path).hyperparameters['model_kind']
    if kind == 'gmnn-committee':
        from aiida_alkit.models.committee import Committee

        return Committee.load(path, device=device)
    from aiida_alkit.models.gmnn import GMNN

    return GMNN.load(path, device=device)


def _training_min_distance(train: ConfigurationArrays | None, cutoff: float = 4.0) -> float | None:
    if train is None:
        return None
    from aiida_alkit.io.geometry import min_interatomic_distances

    distances = min_interatomic_distances(train.positions, train.cells, train.pbc, train.offsets, cutoff)
    finite = distances[np.isfinite(distances)]
    return float(finite.min()) if finite.size else None


def _main(folder: pathlib.Path, parameters: dict[str, Any]) -> dict[str, Any]:
    import torch

    from aiida_alkit.exploration.bias import AdaptiveStrength, BiasedPotential
    from aiida_alkit.exploration.dynamics import BatchedMD, BerendsenBarostat, PhysicalLimits
    from aiida_alkit.exploration.pool import CandidatePool
    from aiida_alkit.jobs.train import _device

    if parameters.get('num_threads'):
        torch.set_num_threads(int(parameters['num_threads']))
    device = _device(parameters.get('device', 'auto'))
    model = load_model(folder / POTENTIAL_FILE, device)
    members = list(getattr(model, 'members', [model]))
    seeds = ConfigurationArrays.load(folder / SEEDS_FILE)
    train = ConfigurationArrays.load(folder / TRAINING_FILE) if (folder / TRAINING_FILE).is_file() else None
    rng = np.random.default_rng(int(parameters.get('seed', 0)))
    n_walkers = int(parameters.get('walkers', 4))
    starts = [seeds.get_atoms(int(i)) for i in rng.permutation(np.resize(np.arange(len(seeds)), n_walkers))]
    for atoms in starts:
        atoms.calc = None

    bias = dict(parameters.get('bias') or {})
    kind = bias.get('kind', 'none')
    strength: Any = AdaptiveStrength(bias['relative_tau']) if bias.get('relative_tau') else bias.get('tau', 0.0)
    pressure = parameters.get('pressure_GPa')
    stop = dict(parameters.get('stop') or {})
    criteria, term = _stop_criteria(stop, kind, bias, members, train)
    potential = BiasedPotential(
        model if len(members) > 1 else members[0],
        term=term,
        strength=strength if term is not None else 0.0,
        stress_strength=bias.get('stress_tau', 0.0) if term is not None else 0.0,
        species_strength=bias.get('species_strength') or None,
        compute_stress=pressure is not None,
    )
    physical = PhysicalLimits(
        max_force=float(stop.get('max_force', 20.0)),
        training_min_distance=_training_min_distance(train),
        min_distance_fraction=float(stop.get('min_distance_fraction', 0.75)),
    )
    pool = CandidatePool(interval=int(parameters.get('sample_every', 10)))
    progress(
        f'exploring with {n_walkers} walkers for up to {parameters.get("steps", 200)} steps at '
        f'{parameters.get("temperature_K", 300.0)} K'
        + (f', {pressure} GPa' if pressure is not None else '')
        + f', bias {kind}'
    )
    md = BatchedMD(
        potential,
        starts,
        timestep=float(parameters.get('timestep_fs', 2.0)),
        temperature=float(parameters.get('temperature_K', 300.0)),
        friction=float(parameters.get('friction_per_fs', 0.01)),
        n_steps=int(parameters.get('steps', 200)),
        criteria=criteria,
        physical=physical,
        barostat=BerendsenBarostat() if pressure is not None else None,
        pressure=pressure,
        pool=pool,
        seed=int(parameters.get('seed', 0)),
    )
    result = md.run()
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
    scores = _scores(model, members, arrays, train, parameters, folder)
    np.savez(folder / SCORES_FILE, **scores)
    progress(f'{len(arrays)} candidates; walker stops: {reasons}')
    return {'status': 'ok', 'n_candidates': len(arrays), 'n_steps': int(result.n_steps), 'stop_counts': reasons}


def _bias_term(kind: str, bias: dict[str, Any], members: list, train: ConfigurationArrays | None):
    """The uncertainty u of E_bias = E - τu: committee σ (seed 002 eq. 5 on a model committee), gradient-feature
    posterior (seed 003) or HAL's Bayesian-ridge σ̃ on last-layer features (seed 002; fitted on the training
    energies and, for at most ``bias.force_structures`` (50) configurations, their forces, eq. 18-19)."""
    from aiida_alkit.exploration.bias import CommitteeUncertainty

    if kind == 'none':
        return None
    if kind == 'committee':
        if len(members) < 2:
            raise ValueError('bias kind "committee" needs a committee potential (committee_size > 1)')
        return CommitteeUncertainty()
    if kind not in ('gradient', 'hal'):
        raise ValueError(f'unknown bias kind {kind!r}: use "none", "committee", "gradient" or "hal"')
    if train is None:
        raise ValueError(f'bias kind {kind!r} needs the training set (input "training")')
    from aiida_alkit.exploration.terms import GradientFeatureUncertainty, HALUncertainty

    model = members[0]
    if kind == 'gradient':
        return GradientFeatureUncertainty.from_data(model, train, kind='posterior', dim=int(bias.get('dim', 256)))
    from aiida_alkit.exploration.terms import structure_force_features
    from aiida_alkit.uncertainty.features import compute_features
    from aiida_alkit.uncertainty.hal import BayesianRidge, build_design_matrix

    features = np.asarray(compute_features(model, train, kind='last_layer', per_atom=False).structure)
    if train.forces is None:
        design, targets = build_design_matrix(features, train.energy)
    else:  # the force rows of eq. 18-19, for at most `force_structures` configurations (d backward passes each)
        chosen = np.arange(min(len(train), int(bias.get('force_structures', 50))))
        structures = [train.get_atoms(int(i)) for i in chosen]
        force_features = [structure_force_features(model, atoms)[1] for atoms in structures]
        design, targets = _hal_design(features, train, chosen, force_features, [a.get_forces() for a in structures])
    return HALUncertainty(model, BayesianRidge().fit(design, targets), atom_quantity=None)


def _stop_criteria(stop: dict[str, Any], kind: str, bias: dict[str, Any], members: list, train):
    """The papers' MD stop criteria (besides the physical limits) and the bias term (:func:`_bias_term`, built once).

    ``stop.uncertainty`` (eV/Å): a committee stops on its max atom force deviation; a single model on its gradient
    -feature atom uncertainty, conformally calibrated to a force-error bound (seed 003 Methods; the GP is fitted on
    the 'train' rows, calibrated on the 'valid' rows), which then also is the bias term of the ``gradient`` bias (or a
    zero-strength term without bias). ``stop.hal``: HAL's relative-force / softmax criterion (seed 002 eq. 6-8) on the
    HAL term's member forces. ``stop.gamma_break``: the D-optimality extrapolation grade (seed 004).
    """
    from aiida_alkit.exploration.dynamics import HALStop, UncertaintyThreshold
    from aiida_alkit.exploration.terms import ExtrapolationGradeStop, atom_values

    criteria: list[Any] = []
    term = None
    threshold = stop.get('uncertainty')
    if threshold is not None:
        if len(members) > 1:
            criteria.append(UncertaintyThreshold(float(threshold)))
        elif kind in ('none', 'gradient'):
            # the calibrated term replaces the plain gradient bias term: fit the GP once, on the 'train' rows
            term = _calibrated_gradient_term(members[0], bias, train, float(stop.get('calibration_alpha', 0.1)))
            if term is None:
                progress(
                    'stop.uncertainty not applied: calibrating it needs >= 2 validation configurations with forces'
                )
            else:
                criteria.append(UncertaintyThreshold(float(threshold), atom_uncertainty=atom_values))
        else:
            raise ValueError(
                f'stop.uncertainty is for committees and the gradient bias; with bias {kind!r} use stop.hal'
            )
    if term is None:
        term = _bias_term(kind, bias, members, train)
    hal = stop.get('hal')
    if hal:
        if kind != 'hal':
            raise ValueError(f'stop.hal needs bias kind "hal", not {kind!r}')
        term.atom_quantity = 'relative_force'
        criteria.append(HALStop(f_tol=hal.get('f_tol'), s_tol=hal.get('s_tol', 0.5), relative_force=atom_values))
    if stop.get('gamma_break') is not None:
        if train is None:
            raise ValueError('stop.gamma_break needs the training set (input "training")')
        criteria.append(
            ExtrapolationGradeStop.from_training(
                members[0], train, float(stop['gamma_break']), check_every=int(stop.get('check_every', 1))
            )
        )
    return criteria, term


def _calibrated_gradient_term(model, bias: dict[str, Any], train: ConfigurationArrays | None, alpha: float):
    """Gradient-feature posterior term fitted on the 'train' rows, atom values calibrated on the 'valid' rows."""
    from aiida_alkit.exploration.terms import GradientFeatureUncertainty, calibrated, fit_atom_calibrator

    if train is None or train.forces is None or 'split' not in train.info:
        return None
    valid = np.flatnonzero(train.info['split'] == 'valid')
    fit = np.flatnonzero(train.info['split'] != 'valid')
    if valid.size < 2 or fit.size < 1:
        return None
    term = GradientFeatureUncertainty.from_data(
        model, train.subset(fit), kind='posterior', dim=int(bias.get('dim', 256))
    )
    structures = [train.get_atoms(int(i)) for i in valid]
    return calibrated(term, fit_atom_calibrator(term, structures, alpha=alpha))


def _hal_design(features, train, chosen, force_features, forces):
    """Energy rows of every training configuration plus force rows of the ``chosen`` ones."""
    from aiida_alkit.uncertainty.hal import build_design_matrix

    energy_design, energy_targets = build_design_matrix(features, train.energy)
    force_design, force_targets = build_design_matrix(
        features[chosen], train.energy[chosen], force_features=force_features, forces=forces
    )
    n_energy_rows = len(chosen)  # build_design_matrix puts the energy rows first
    return (
        np.concatenate([energy_design, force_design[n_energy_rows:]]),
        np.concatenate([energy_targets, force_targets[n_energy_rows:]]),
    )


def _scores(model, members, arrays, train, parameters, folder) -> dict[str, np.ndarray]:
    """Per-candidate arrays for selection: gradient features, committee force deviation, KPU."""
    from aiida_alkit.models.batching import batch_from_configurations

    scores: dict[str, np.ndarray] = {}
    first = members[0]
    features = parameters.get('features', {'kind': 'sketch', 'dim': 512})
    if features:
        from aiida_alkit.uncertainty.features import compute_features

        settings = {'kind': features.get('kind', 'sketch'), 'dim': int(features.get('dim', 512)), 'seed': 0}
        pool_features = compute_features(first, arrays, per_atom=True, **settings)
        scores['pool_features'] = np.asarray(pool_features.structure)
        if train is not None:
            train_features = compute_features(first, train, per_atom=True, **settings)
            scores['train_features'] = np.asarray(train_features.structure)
            calibrated = calibrated_uncertainty(first, train, train_features, pool_features, parameters)
            if calibrated is not None:
                scores['calibrated_uncertainty'] = calibrated
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

        fraction = float((parameters.get('kpu') or {}).get('fraction', 0.5))
        values = []
        for start in range(0, len(arrays), 16):
            indices = np.arange(start, min(start + 16, len(arrays)))
            batch = batch_from_configurations(arrays, first.species, first.cutoff, indices, first.device, first.dtype)
            values.append(kalman_prediction_uncertainty(first, extras['rlekf'], batch, fraction=fraction, seed=start))
        scores['kpu'] = np.concatenate(values)
    return scores


def calibrated_uncertainty(model, train, train_features, pool_features, parameters) -> np.ndarray | None:
    """Max atom posterior uncertainty of every candidate as a force-error bound in eV/Å (seed 003 Methods).

    The GP posterior (seed 003 eq. 4) is fitted on the atomic features of the configurations whose ``info.split`` is
    'train'; inductive conformal calibration (confidence 1 - ``calibration_alpha``, default 0.1) maps it to the
    largest per-atom force RMSE of the model on the 'valid' configurations. None without at least two validation
    configurations with forces.
    """
    from aiida_alkit.models.batching import batch_from_configurations
    from aiida_alkit.uncertainty.conformal import ConformalCalibrator, atomic_force_rmse
    from aiida_alkit.uncertainty.gp import GradientUncertainty

    if train.forces is None or 'split' not in train.info:
        return None
    valid = np.flatnonzero(train.info['split'] == 'valid')
    fit = np.flatnonzero(train.info['split'] != 'valid')
    if valid.size < 2 or fit.size < 1:
        return None
    atom_rows = np.repeat(np.arange(len(train)), train.sizes)
    atomic = np.asarray(train_features.atomic)
    gp = GradientUncertainty('posterior').fit(atomic=atomic[np.isin(atom_rows, fit)])
    valid_atomic = atomic[np.isin(atom_rows, valid)]
    u_valid = gp.predict(atomic=valid_atomic, n_atoms=train.sizes[valid]).structure
    batch = batch_from_configurations(train, model.species, model.cutoff, valid, model.device, model.dtype)
    forces = np.asarray(model(batch, compute_forces=True)['forces'].detach().cpu(), dtype=np.float64)
    errors_per_atom = atomic_force_rmse(forces, train.subset(valid).forces)
    starts = np.concatenate([[0], np.cumsum(train.sizes[valid])[:-1]])
    errors = np.maximum.reduceat(errors_per_atom, starts)
    alpha = float((parameters.get('stop') or {}).get('calibration_alpha', 0.1))
    calibrator = ConformalCalibrator().fit(u_valid, errors, alpha=alpha)
    pool_u = gp.predict(atomic=np.asarray(pool_features.atomic), n_atoms=np.asarray(pool_features.n_atoms)).structure
    return np.asarray(calibrator.calibrate(pool_u), dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == '__main__':
    raise SystemExit(main())
