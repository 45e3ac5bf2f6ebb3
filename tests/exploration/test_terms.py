"""Uncertainty terms: values equal the non-differentiable references, bias forces/stress against finite differences,
batched MD with each term, calibrated and HAL stop criteria."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.exploration.bias import AdaptiveStrength, BiasedPotential, UncertaintyTerm
from aiida_alkit.exploration.dynamics import BatchedMD, HALStop, UncertaintyThreshold, WalkerSystem
from aiida_alkit.exploration.terms import (
    GradientFeatureUncertainty,
    HALUncertainty,
    atom_values,
    calibrated,
    differentiable_atomic_features,
    fit_atom_calibrator,
    structure_force_features,
)
from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
from aiida_alkit.uncertainty.features import GradientFeatureMap, compute_features
from aiida_alkit.uncertainty.gp import GradientUncertainty
from aiida_alkit.uncertainty.hal import BayesianRidge, build_design_matrix

from .toys import strained


def _cells(seed: int, count: int, amplitude: float = 0.1) -> list:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = bulk('Cu', 'fcc', a=float(rng.uniform(3.55, 3.68)), cubic=True) * ((1, 1, 1) if k % 2 else (2, 1, 1))
        atoms.rattle(amplitude, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_forces()
        out.append(atoms)
    return out


@pytest.fixture(scope='module')
def model():
    return GMNN(GMNNHyperparameters.small(['Cu'], dtype='float64', hidden_widths=(16, 16), seed=4))


@pytest.fixture(scope='module')
def training():
    return _cells(0, 6)


@pytest.fixture(scope='module')
def feature_map(model):
    return GradientFeatureMap(model, kind='sketch', dim=48, seed=2)


@pytest.fixture(scope='module')
def ridge(model, training):
    """Bayesian ridge on the last-layer structure features (sums) and EMT energies, committee of 8."""
    features = compute_features(model, training, kind='last_layer')
    design, targets = build_design_matrix(features.structure, [a.get_potential_energy() for a in training])
    ridge = BayesianRidge().fit(design, targets)
    ridge.sample_committee(8, seed=1)
    return ridge


def _gradient_term(model, training, feature_map, kind='posterior', structure='total', per_atom=True):
    features = compute_features(model, training, feature_map=feature_map, normalise_per_atom=per_atom)
    fitted = GradientUncertainty(kind, n_representative=12).fit(features)
    return GradientFeatureUncertainty(model, fitted, per_atom=per_atom, structure=structure, feature_map=feature_map)


def _u(potential: BiasedPotential, system: WalkerSystem) -> np.ndarray:
    return potential.evaluate(system, forces=False, update_strength=False).uncertainty


# ---------------------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize('kind', ['sketch', 'last_layer'])
def test_differentiable_features_equal_the_feature_map(model, copper_cells, kind):
    fmap = GradientFeatureMap(model, kind=kind, dim=32, seed=5)
    batch = model.make_batch(copper_cells)
    reference = compute_features(model, batch, feature_map=fmap).atomic
    values = differentiable_atomic_features(fmap, model.descriptors(batch), batch.species).detach().numpy()
    np.testing.assert_allclose(values, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('kind', ['posterior', 'distance'])
@pytest.mark.parametrize(('structure', 'per_atom'), [('total', True), ('total', False), ('max', True), ('mean', True)])
def test_gradient_term_equals_gradient_uncertainty_predict(
    model, training, feature_map, copper_cells, kind, structure, per_atom
):
    term = _gradient_term(model, training, feature_map, kind, structure, per_atom)
    assert isinstance(term, UncertaintyTerm) and term.name == f'gradient_{kind}'
    features = compute_features(model, copper_cells, feature_map=feature_map, normalise_per_atom=per_atom)
    reference = term.uncertainty.predict(features)
    u, atoms = term.evaluate(copper_cells)
    expected = {
        'total': reference.total,
        'max': reference.structure,
        'mean': [part.mean() for part in np.split(reference.atomic, np.cumsum(features.n_atoms)[:-1])],
    }[structure]
    np.testing.assert_allclose(u, expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(atoms, reference.atomic, rtol=1e-10, atol=1e-14)
    assert np.all(u > 0)


def test_gradient_term_from_training_features_and_data(model, training, feature_map, copper_cells):
    features = compute_features(model, training, feature_map=feature_map, normalise_per_atom=True)
    term = GradientFeatureUncertainty(model, features, kind='distance', feature_map=feature_map)
    again = GradientFeatureUncertainty.from_data(model, training, kind='distance', dim=48, seed=2)
    np.testing.assert_allclose(term.evaluate(copper_cells)[0], again.evaluate(copper_cells)[0], rtol=1e-12)
    with pytest.raises(ValueError, match='normalisation'):
        GradientFeatureUncertainty(model, features, per_atom=False, feature_map=feature_map)


def test_hal_term_equals_bayesian_ridge(model, ridge, copper_cells):
    term = HALUncertainty(model, ridge)
    assert term.n_members == 8 and isinstance(term, UncertaintyTerm)
    features = compute_features(model, copper_cells, kind='last_layer')
    u, f = term.evaluate(copper_cells)
    np.testing.assert_allclose(u, ridge.committee_energy_std(features.structure), rtol=1e-10)
    deviation, _ = HALUncertainty(model, ridge, atom_quantity='force_deviation').evaluate(copper_cells)
    np.testing.assert_allclose(deviation, u, rtol=1e-12)
    # f_i (eq. 6) and ∇σ̃ (eq. 9-10) of BayesianRidge.evaluate from autograd force features
    potential = BiasedPotential(model, term, strength=1.0)
    result = potential.evaluate(WalkerSystem.from_atoms(copper_cells))
    offset = 0
    for atoms in copper_cells:
        atomic, force_features = structure_force_features(model, atoms)
        reference = ridge.evaluate(atomic, force_features)
        part = slice(offset, offset + len(atoms))
        np.testing.assert_allclose(f[part], reference.f, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(result.bias_forces[part], reference.grad_sigma, rtol=1e-8, atol=1e-12)
        offset += len(atoms)


# ---------------------------------------------------------------------------------------------------------- derivatives
def _terms(model, training, feature_map, ridge) -> dict:
    return {
        'posterior': _gradient_term(model, training, feature_map, 'posterior'),
        'distance': _gradient_term(model, training, feature_map, 'distance'),
        'max_posterior': _gradient_term(model, training, feature_map, 'posterior', 'max'),
        'hal': HALUncertainty(model, ridge, atom_quantity=None),
    }


@pytest.mark.parametrize('name', ['posterior', 'distance', 'max_posterior', 'hal'])
def test_bias_forces_are_tau_times_finite_differences(model, training, feature_map, ridge, copper_cells, name):
    """F^bias = -∇(-τ u) (seeds/003 eq. 6) by central differences of u (float64)."""
    tau = 0.4
    potential = BiasedPotential(model, _terms(model, training, feature_map, ridge)[name], strength=tau)
    system = WalkerSystem.from_atoms(copper_cells)
    result = potential.evaluate(system)
    assert np.abs(result.bias_forces).max() > 0
    h = 1e-5
    for atom in (1, 6):
        for axis in range(3):
            plus, minus = system.copy(), system.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            row = system.structure_index[atom]
            du = (_u(potential, plus)[row] - _u(potential, minus)[row]) / (2 * h)
            assert result.bias_forces[atom, axis] == pytest.approx(tau * du, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('name', ['posterior', 'max_posterior', 'hal'])
def test_the_readout_runs_once_per_biased_evaluation(model, training, feature_map, ridge, copper_cells, name):
    """The feature terms read the readout factors that the potential computed with the energies (one pass through
    the network per evaluation, not two), and give the same u as the term's stand-alone evaluation."""
    term = _terms(model, training, feature_map, ridge)[name]
    potential = BiasedPotential(model, term, strength=0.4)
    system = WalkerSystem.from_atoms(copper_cells)
    passes = []
    handle = model.network[0].register_forward_hook(lambda *args: passes.append(1))
    try:
        result = potential.evaluate(system)
    finally:
        handle.remove()
    assert len(passes) == 1
    expected, _ = term.evaluate(copper_cells)
    np.testing.assert_allclose(result.uncertainty, expected, rtol=1e-10)
    assert np.abs(result.bias_forces).max() > 0


@pytest.mark.parametrize('name', ['posterior', 'hal'])
def test_bias_stress_is_the_strain_derivative_of_u(model, training, feature_map, ridge, copper_cells, name):
    """σ^bias = -(τ_s/V) ∂u/∂ε (seeds/003 eq. 7), central differences of a symmetric strain."""
    tau_s = 0.3
    potential = BiasedPotential(
        model, _terms(model, training, feature_map, ridge)[name], stress_strength=tau_s, compute_stress=True
    )
    system = WalkerSystem.from_atoms(copper_cells)
    result = potential.evaluate(system)
    volumes = system.volumes()
    h = 1e-5
    for row in range(system.n_structures):
        for a, b in ((0, 0), (2, 2), (0, 1)):
            factor = 1.0 if a == b else 0.5
            du_p, du_m = _u(potential, strained(system, row, a, b, h)), _u(potential, strained(system, row, a, b, -h))
            du = factor * (du_p[row] - du_m[row]) / (2 * h)
            assert result.bias_stress[row, a, b] == pytest.approx(-tau_s * du / volumes[row], rel=1e-5, abs=1e-10)


# ---------------------------------------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize('name', ['posterior', 'distance', 'hal'])
def test_batched_md_with_each_term_records_the_uncertainty(model, training, feature_map, ridge, copper_cells, name):
    term = _terms(model, training, feature_map, ridge)[name]
    potential = BiasedPotential(model, term, strength=AdaptiveStrength(0.2))
    md = BatchedMD(potential, copper_cells, timestep=1.0, temperature=300.0, n_steps=4, seed=3)
    result = md.run()
    assert set(result.stop_reasons.values()) == {'max_steps'}
    log = result.log
    assert len(log['step']) == 2 * 5
    assert np.all(np.isfinite(log['uncertainty'])) and np.all(log['uncertainty'] > 0)
    assert np.all(log['tau'] > 0)
    assert np.all(log['bias_force_norm'][log['step'] > 0] > 0)
    if name != 'hal':
        assert np.all(np.isfinite(log['max_atom_uncertainty']))


def test_calibrated_threshold_stops_the_dynamics(model, training, feature_map, copper_cells):
    term = _gradient_term(model, training, feature_map, 'posterior')
    calibration = _cells(7, 4)
    calibrator = fit_atom_calibrator(term, calibration, alpha=0.2)
    wrapped = calibrated(term, calibrator)
    assert wrapped.name == 'gradient_posterior_calibrated'
    u_raw, a_raw = term.evaluate(copper_cells)
    u_cal, a_cal = wrapped.evaluate(copper_cells)
    np.testing.assert_allclose(u_cal, u_raw)
    np.testing.assert_allclose(a_cal, calibrator.scale_ * a_raw)
    maximum = a_cal.max()  # eV/Å
    outcomes = {}
    for threshold in (0.5 * maximum, 100.0 * maximum):
        potential = BiasedPotential(model, wrapped, strength=AdaptiveStrength(0.2))
        criteria = [UncertaintyThreshold(threshold)]
        outcomes[threshold] = BatchedMD(potential, copper_cells, n_steps=2, criteria=criteria, seed=1).run()
    low, high = outcomes[0.5 * maximum], outcomes[100.0 * maximum]
    assert 'uncertainty' in low.stop_reasons.values() and min(low.stop_steps.values()) == 0
    assert set(high.stop_reasons.values()) == {'max_steps'}
    np.testing.assert_allclose(high.log['max_atom_uncertainty'][:2], [a_cal[:4].max(), a_cal[4:].max()], rtol=1e-8)
    # the calibrated threshold in raw units is equivalent
    raw = calibrator.threshold(0.5 * maximum)
    assert (a_raw.max() > raw) == (a_cal.max() > 0.5 * maximum)


def test_hal_stop_fires_on_the_relative_force_uncertainty(model, ridge, copper_cells):
    term = HALUncertainty(model, ridge)
    _, f = term.evaluate(copper_cells)
    for f_tol, expected in ((0.5 * f.max(), 'hal_f_tol'), (10.0 * f.max(), 'max_steps')):
        potential = BiasedPotential(model, term, strength=AdaptiveStrength(0.1))
        stop = HALStop(f_tol=f_tol, s_tol=None, relative_force=atom_values)
        result = BatchedMD(potential, copper_cells, n_steps=1, criteria=[stop], seed=2).run()
        assert expected in result.stop_reasons.values()
