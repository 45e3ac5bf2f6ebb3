"""Biased potential: bias forces/stress against finite differences, fast vs generic path, species weights, τ."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.exploration.bias import (
    AdaptiveStrength,
    BiasedPotential,
    CommitteeUncertainty,
    ConstantStrength,
    UncertaintyTerm,
    UncertaintyValues,
    committee_force_deviation,
    relative_force_uncertainty,
    softmax_max,
)
from aiida_alkit.exploration.dynamics import WalkerSystem

from .toys import strained


def _u_and_e(potential: BiasedPotential, system: WalkerSystem) -> tuple[np.ndarray, np.ndarray]:
    result = potential.evaluate(system, forces=False, update_strength=False)
    return result.uncertainty, result.energy


def test_bias_forces_are_minus_finite_differences_of_minus_tau_u(tiny_committee, copper_cells):
    """F^bias = -∇(-τ u) = τ ∇u (seeds/002 eq. 9-11, seeds/003 eq. 6), and F = -∇E, by central differences."""
    tau = 0.7
    potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=tau)
    system = WalkerSystem.from_atoms(copper_cells)
    result = potential.evaluate(system)
    assert isinstance(potential.term, UncertaintyTerm)
    assert np.all(result.uncertainty > 1e-3)  # untrained members disagree
    np.testing.assert_allclose(result.energy_bias, result.energy - tau * result.uncertainty)
    h = 1e-5
    for atom in (0, 3, 5, 11):
        for axis in range(3):
            plus, minus = system.copy(), system.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            (u_plus, e_plus), (u_minus, e_minus) = _u_and_e(potential, plus), _u_and_e(potential, minus)
            walker = system.structure_index[atom]
            du = (u_plus[walker] - u_minus[walker]) / (2 * h)
            de = (e_plus[walker] - e_minus[walker]) / (2 * h)
            assert result.bias_forces[atom, axis] == pytest.approx(tau * du, rel=1e-5, abs=1e-8)
            assert result.forces[atom, axis] == pytest.approx(-de, rel=1e-5, abs=1e-8)


def test_bias_stress_is_the_strain_derivative_of_u(tiny_committee, copper_cells):
    """σ^bias = -(τ_s/V) ∂u/∂ε (seeds/003 eq. 7) and σ = (1/V) ∂E/∂ε, by central differences of a symmetric strain."""
    tau_s = 0.3
    potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.0, stress_strength=tau_s)
    potential.compute_stress = True
    system = WalkerSystem.from_atoms(copper_cells)
    result = potential.evaluate(system)
    volumes = system.volumes()
    h = 1e-5
    for row in range(system.n_structures):
        for a, b in ((0, 0), (1, 1), (0, 1), (1, 2)):
            (u_p, e_p), (u_m, e_m) = (
                _u_and_e(potential, strained(system, row, a, b, h)),
                _u_and_e(potential, strained(system, row, a, b, -h)),
            )
            factor = 1.0 if a == b else 0.5  # ε_ab = ε_ba = h moves both symmetric components
            du = factor * (u_p[row] - u_m[row]) / (2 * h)
            de = factor * (e_p[row] - e_m[row]) / (2 * h)
            assert result.bias_stress[row, a, b] == pytest.approx(-tau_s * du / volumes[row], rel=1e-5, abs=1e-9)
            assert result.stress[row, a, b] == pytest.approx(de / volumes[row], rel=1e-5, abs=1e-9)
    # the physical stress agrees with the model's own stress (ASE sign)
    batch = tiny_committee.make_batch(copper_cells)
    reference = tiny_committee.predict(batch, compute_forces=True, compute_stress=True)['stress'].numpy()
    np.testing.assert_allclose(result.stress, reference, rtol=1e-8, atol=1e-12)


class _GenericCommittee(CommitteeUncertainty):
    """The committee σ evaluated on the full model graph (second backward pass)."""

    energy_level = False


def test_generic_path_equals_single_backward_fast_path(tiny_committee, copper_cells):
    """The chain rule through member energies (one backward) equals autograd of u on the model graph."""
    system = WalkerSystem.from_atoms(copper_cells)
    fast = BiasedPotential(tiny_committee, CommitteeUncertainty(), 0.4, 0.2, compute_stress=True).evaluate(system)
    slow = BiasedPotential(tiny_committee, _GenericCommittee(), 0.4, 0.2, compute_stress=True).evaluate(system)
    for name in ('energy', 'energy_bias', 'uncertainty', 'forces', 'bias_forces', 'stress', 'bias_stress'):
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-12, err_msg=name)
    # member forces (fast path only) give the committee force deviation
    assert fast.member_forces.shape == (3, len(system.positions), 3)
    np.testing.assert_allclose(fast.atom_uncertainty, committee_force_deviation(fast.member_forces))


def test_species_strength_weights_the_bias_force_per_element(copper_cells):
    """w_Z multiplies the bias force on the atoms of element Z (w = 0: no bias force, e.g. hydrogen in seeds/003)."""
    from aiida_alkit.models.committee import Committee
    from aiida_alkit.models.gmnn import GMNNHyperparameters

    committee = Committee(GMNNHyperparameters.small(['Cu', 'Au'], dtype='float64', hidden_widths=(8, 8)), n_members=2)
    atoms = copper_cells[1].copy()
    atoms.numbers[[1, 4]] = 79
    system = WalkerSystem.from_atoms([atoms])
    plain = BiasedPotential(committee, CommitteeUncertainty(), strength=0.5).evaluate(system)
    weighted = BiasedPotential(committee, CommitteeUncertainty(), strength=0.5, species_strength={'Au': 0.0})
    result = weighted.evaluate(system)
    gold = atoms.numbers == 79
    assert np.all(result.bias_forces[gold] == 0.0)
    np.testing.assert_array_equal(result.bias_forces[~gold], plain.bias_forces[~gold])
    np.testing.assert_array_equal(result.forces, plain.forces)
    np.testing.assert_array_equal(result.energy_bias, plain.energy_bias)  # E - τu itself is not weighted
    with pytest.raises(ValueError, match='does not know'):
        BiasedPotential(committee, CommitteeUncertainty(), species_strength={'H': 0.0})


def test_tau_zero_gives_exactly_the_unbiased_forces(tiny_committee, copper_cells):
    system = WalkerSystem.from_atoms(copper_cells)
    plain = BiasedPotential(tiny_committee).evaluate(system)
    zero = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.0).evaluate(system)
    np.testing.assert_array_equal(plain.total_forces(), zero.total_forces())
    np.testing.assert_array_equal(plain.energy_bias, zero.energy_bias)
    assert np.isnan(plain.uncertainty).all() and np.all(zero.uncertainty > 0)


def test_adaptive_strength_reaches_the_target_ratio_on_a_steady_signal():
    """τ = τ_r Σ||F|| / Σ||F^u|| over the last 100 steps (seeds/002 eq. 12): τ <||F^u||> / <||F||> -> τ_r."""
    rng = np.random.default_rng(0)
    strength = AdaptiveStrength(relative=0.2, window=100)
    walkers = np.array([0, 1])
    for _ in range(400):
        physical = np.array([10.0, 3.0]) * (1 + 0.1 * rng.standard_normal(2))
        bias = np.array([2.0, 0.05]) * (1 + 0.1 * rng.standard_normal(2))
        tau = strength(walkers, physical, bias)
    # the steady state: τ ≈ τ_r · 10/2 and τ_r · 3/0.05
    assert tau[0] == pytest.approx(0.2 * 5.0, rel=0.03)
    assert tau[1] == pytest.approx(0.2 * 60.0, rel=0.03)
    # exact window arithmetic: after a step change only the last 100 values count
    for _ in range(100):
        tau = strength(walkers, np.array([4.0, 4.0]), np.array([1.0, 8.0]))
    np.testing.assert_allclose(tau, [0.2 * 4.0, 0.2 * 0.5])
    np.testing.assert_allclose(strength.current(walkers), tau)
    np.testing.assert_allclose(strength(walkers, np.ones(2), np.ones(2), update=False), tau)  # no update
    assert strength.current(np.array([7]))[0] == 0.0  # unknown walker
    burn = AdaptiveStrength(relative=0.1, burn_in=3)
    taus = [burn(np.array([0]), np.array([1.0]), np.array([1.0]))[0] for _ in range(5)]
    assert taus == [0.0, 0.0, 0.0, 0.1, 0.1]
    assert ConstantStrength(0.3)(walkers, np.ones(2), np.ones(2)).tolist() == [0.3, 0.3]


def test_adaptive_strength_in_biased_md_keeps_the_relative_bias(tiny_committee, copper_cells):
    """In MD the applied bias-force norm over the last 100 steps is τ_r times the physical force norm."""
    from aiida_alkit.exploration.dynamics import BatchedMD

    potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=AdaptiveStrength(0.2))
    run = BatchedMD(potential, copper_cells, timestep=1.0, temperature=300.0, n_steps=120, seed=3).run()
    log = run.log
    for walker in (0, 1):
        rows = np.flatnonzero(log['walker'] == walker)[-100:]
        ratio = log['bias_force_norm'][rows].sum() / log['force_norm'][rows].sum()
        assert ratio == pytest.approx(0.2, rel=0.1)


def test_committee_helpers_match_their_definitions():
    rng = np.random.default_rng(1)
    members = rng.standard_normal((4, 5, 3))
    mean = members.mean(axis=0)
    expected = np.sqrt(np.mean([np.sum((m - mean) ** 2, axis=1) for m in members], axis=0))
    np.testing.assert_allclose(committee_force_deviation(members), expected)
    spread = np.mean([np.linalg.norm(m - mean, axis=1) for m in members], axis=0)
    np.testing.assert_allclose(relative_force_uncertainty(members, 0.2), spread / (np.linalg.norm(mean, axis=1) + 0.2))
    f = np.array([0.0, 1.0, 2.0, 5.0, 0.0])
    index = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(softmax_max(f, index, 2), [np.e**2 / (1 + np.e + np.e**2), np.e**5 / (np.e**5 + 1)])
    values = CommitteeUncertainty(noise_variance=0.25)(
        {'member_energies': __import__('torch').tensor([[1.0], [3.0]])}, None, None, None
    )
    assert isinstance(values, UncertaintyValues)
    assert float(values.structure[0]) == pytest.approx(np.sqrt(1.0 + 0.25))  # eq. 5 with 1/λ = 0.25 eV²


def test_burn_in_delays_both_adaptive_strengths_in_npt(tiny_committee, copper_cells):
    """HAL's burn-in (seeds/002: norms recorded for a while before τ adapts) for τ and τ_s alike (seeds/003: "an
    equivalent expression is applied for bias stresses"): zero for the first ``burn_in`` steps, then positive."""
    from aiida_alkit.exploration.dynamics import BatchedMD, StochasticCellRescaling

    potential = BiasedPotential(
        tiny_committee,
        CommitteeUncertainty(),
        strength=AdaptiveStrength(0.2, burn_in=5),
        stress_strength=AdaptiveStrength(0.5, burn_in=5),
        compute_stress=True,
    )
    run = BatchedMD(
        potential,
        copper_cells,
        timestep=1.0,
        temperature=300.0,
        n_steps=8,
        barostat=StochasticCellRescaling(tau=100.0),
        pressure=0.0,
        seed=2,
    ).run()
    log = run.log
    early = log['step'] < 5
    assert np.all(log['tau'][early] == 0) and np.all(log['tau_stress'][early] == 0)
    assert np.all(log['tau'][~early] > 0) and np.all(log['tau_stress'][~early] > 0)
    with pytest.raises(ValueError, match='separate AdaptiveStrength'):
        shared = AdaptiveStrength(0.2)
        BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=shared, stress_strength=shared)


# ---------------------------------------------------------------------------------------------------------- Verlet skin
_COMPARED = ('energy', 'energy_bias', 'forces', 'bias_forces', 'stress', 'bias_stress', 'uncertainty', 'tau')
_COMPARED += ('tau_stress', 'atom_uncertainty', 'member_forces', 'member_energies', 'min_distance')


def _skin_walkers(copper_cells) -> list:
    """The two copper cells plus a 32-atom cell whose atom 0 starts outside the cell (wrapped after one step)."""
    from ase.build import bulk

    big = bulk('Cu', 'fcc', a=3.63, cubic=True) * (2, 2, 2)
    big.rattle(0.05, seed=3)
    big.positions[0] = [-0.02, 0.9, 1.1]
    return [*copper_cells, big]


class _StopWalker:
    """Stops one walker after a number of checks (the walker set shrinks mid-run)."""

    unphysical = False

    def __init__(self, walker: int, after: int) -> None:
        self.walker, self.after, self.calls = walker, after, 0

    def check(self, system, result):
        self.calls += 1
        fired = (system.walker_ids == self.walker) & (self.calls > self.after)
        return np.where(fired, 'planted', ''), {}


def _runs_with_and_without_skin(tiny_committee, structures, potential_options: dict, criteria=None, **md_options):
    """Runs with skins 0, 1 and 0.25 Å (the small one rebuilds mid-run) compared; returns the runs and potentials."""
    from aiida_alkit.exploration.dynamics import BatchedMD

    runs = []
    for skin in (0.0, 1.0, 0.25):
        potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), neighbor_skin=skin, **potential_options)
        md = BatchedMD(
            potential,
            [atoms.copy() for atoms in structures],
            timestep=2.0,
            temperature=600.0,
            criteria=[criteria()] if criteria else (),
            seed=5,
            **md_options,
        )
        runs.append((md.run(), potential))
    (fresh, fresh_potential), *others = runs
    assert {potential.neighbor_requests for _, potential in runs} == {fresh_potential.neighbor_requests}
    assert fresh_potential.neighbor_rebuilds == fresh_potential.neighbor_requests  # skin 0: every evaluation
    for skinned, skinned_potential in others:
        _assert_same_run(fresh, fresh_potential, skinned, skinned_potential)
    return fresh, [potential for _, potential in others]


def _assert_same_run(fresh, fresh_potential, skinned, skinned_potential) -> None:
    assert fresh.stop_reasons == skinned.stop_reasons and fresh.stop_steps == skinned.stop_steps
    for key, value in fresh.log.items():
        np.testing.assert_allclose(skinned.log[key], value, rtol=1e-10, atol=1e-10, err_msg=key)
    for walker, atoms in fresh.final.items():
        np.testing.assert_allclose(skinned.final[walker].positions, atoms.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(skinned.final[walker].cell[:], atoms.cell[:], rtol=0, atol=1e-10)
    # forces, stresses and biased quantities at the final frames (the skin potential reuses its lists there)
    final = WalkerSystem.from_atoms([fresh.final[w] for w in sorted(fresh.final)], walker_ids=sorted(fresh.final))
    expected = fresh_potential.evaluate(final, update_strength=False)
    result = skinned_potential.evaluate(final, update_strength=False)
    for name in _COMPARED:
        if getattr(expected, name) is None:
            assert getattr(result, name) is None, name
        else:
            np.testing.assert_allclose(getattr(result, name), getattr(expected, name), rtol=1e-10, atol=1e-10)


def test_verlet_skin_nvt_md_equals_rebuilding_every_step(tiny_committee, copper_cells):
    """Biased NVT MD with a 1 Å skin follows the rebuild-every-step trajectory to 1e-10 (float64), with far fewer
    neighbour-list builds; walker 1 stops at step 12 (the walker set shrinks) and an atom is wrapped at step 1."""
    fresh, (potential, small) = _runs_with_and_without_skin(
        tiny_committee,
        _skin_walkers(copper_cells),
        {'strength': 0.3},
        criteria=lambda: _StopWalker(1, 12),
        n_steps=30,
    )
    assert fresh.stop_steps == {0: 30, 1: 12, 2: 30}
    assert potential.neighbor_skin == 1.0
    assert potential.neighbor_rebuilds <= potential.neighbor_requests / 5
    assert 3 < small.neighbor_rebuilds < small.neighbor_requests / 2  # the 0.25 Å skin rebuilt during the run


def test_verlet_skin_npt_md_with_monte_carlo_cell_moves(tiny_committee, copper_cells):
    """The same under NPT: stochastic cell rescaling every step (bias stress on), HAL volume and cell MC moves."""
    from aiida_alkit.exploration.dynamics import MonteCarlo, StochasticCellRescaling

    fresh, (potential, small) = _runs_with_and_without_skin(
        tiny_committee,
        _skin_walkers(copper_cells),
        {'strength': 0.3, 'stress_strength': 0.2, 'compute_stress': True},
        n_steps=30,
        barostat=StochasticCellRescaling(tau=50.0),
        pressure=0.5,
        monte_carlo=MonteCarlo(interval=5, n_swap=0, n_volume=1, n_cell=1, max_log_change=0.01),
    )
    volumes = fresh.log['volume'][fresh.log['walker'] == 2]
    assert np.ptp(volumes) > 0.1  # the cells did change
    assert sum(accepted for accepted, _ in fresh.mc_acceptance.values()) > 0
    assert potential.neighbor_rebuilds <= potential.neighbor_requests / 5
    assert 3 < small.neighbor_rebuilds < small.neighbor_requests / 2


def test_verlet_skin_keeps_feature_terms_unchanged(copper_cells):
    """The gradient-feature (seeds/003) and HAL (seeds/002) terms on the generic path, after moving, wrapping and
    straining the walkers: the same u, bias forces and bias stress whether the lists are reused or rebuilt."""
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.terms import GradientFeatureUncertainty, HALUncertainty
    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.uncertainty.features import compute_features
    from aiida_alkit.uncertainty.hal import BayesianRidge, build_design_matrix

    model = GMNN(GMNNHyperparameters.small(['Cu'], dtype='float64', hidden_widths=(16, 16), seed=4))
    training = [atoms.copy() for atoms in copper_cells]
    for atoms in training:
        atoms.calc = EMT()
    features = compute_features(model, training, kind='last_layer')
    design, targets = build_design_matrix(features.structure, [atoms.get_potential_energy() for atoms in training])
    ridge = BayesianRidge().fit(design, targets)
    ridge.sample_committee(4, seed=1)
    terms = [
        GradientFeatureUncertainty.from_data(model, training, kind='distance', dim=16, seed=2),
        HALUncertainty(model, ridge),
    ]
    rng = np.random.default_rng(0)
    for term in terms:
        options = {'strength': 0.3, 'stress_strength': 0.2, 'compute_stress': True}
        fresh = BiasedPotential(model, term, neighbor_skin=0.0, **options)
        skinned = BiasedPotential(model, term, neighbor_skin=1.0, **options)
        system = WalkerSystem.from_atoms(_skin_walkers(copper_cells))
        skinned.evaluate(system)
        system.positions += rng.normal(0.0, 0.08, system.positions.shape)
        system.cells *= 0.99
        system.positions *= 0.99
        system.wrap()
        expected, result = fresh.evaluate(system), skinned.evaluate(system)
        assert skinned.neighbor_rebuilds == 3 and skinned.neighbor_requests == 6  # the second call reused all lists
        for name in _COMPARED:
            if getattr(expected, name) is not None:
                np.testing.assert_allclose(getattr(result, name), getattr(expected, name), rtol=1e-10, atol=1e-12)
        assert np.all(expected.uncertainty > 0) and np.abs(expected.bias_forces).max() > 0


def test_negative_neighbor_skin_is_rejected(tiny_committee):
    with pytest.raises(ValueError, match='skin'):
        BiasedPotential(tiny_committee, neighbor_skin=-0.5)
