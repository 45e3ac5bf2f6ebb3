"""Batched MD driver: thermostat, τ = 0 reproducibility, stop criteria, blow-ups, Monte-Carlo moves, barostat."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units

from aiida_alkit.exploration.bias import BiasedPotential, CommitteeUncertainty, PotentialResult
from aiida_alkit.exploration.dynamics import (
    KB,
    BatchedMD,
    BerendsenBarostat,
    HALStop,
    MonteCarlo,
    PhysicalLimits,
    Schedule,
    StochasticCellRescaling,
    UncertaintyThreshold,
    WalkerSystem,
    cell_move,
    estimate_compressibility,
    metropolis_accept,
    swap_move,
    volume_move,
)
from aiida_alkit.exploration.pool import CandidatePool
from tests.exploration.toys import HarmonicPotential, PlantedPotential


def _cluster(n: int, seed: int, spacing: float = 2.5) -> Atoms:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing='ij'), axis=-1).reshape(-1, 3)[:n]
    return Atoms('Cu' * n, positions=spacing * grid + 0.05 * rng.standard_normal((n, 3)))


def _anchors(structures) -> dict[int, np.ndarray]:
    return {w: atoms.get_positions().copy() for w, atoms in enumerate(structures)}


def test_langevin_thermostat_reaches_the_target_temperatures():
    """BAOAB Langevin on harmonic atoms: <T_kin> equals each walker's target within 5 %."""
    structures = [_cluster(32, 0), _cluster(32, 1)]
    potential = HarmonicPotential(_anchors(structures), k=1.0)
    md = BatchedMD(
        potential, structures, timestep=2.0, temperature=[300.0, 900.0], friction=0.05, n_steps=2500, seed=11
    )
    log = md.run().log
    for walker, target in ((0, 300.0), (1, 900.0)):
        rows = (log['walker'] == walker) & (log['step'] > 500)
        assert log['temperature'][rows].mean() == pytest.approx(target, rel=0.05)


def test_schedules():
    ramp = Schedule.linear(300.0, 1400.0, 12)
    assert ramp(0) == 300.0 and ramp(11) == 1400.0 and ramp(20) == 1400.0
    assert ramp(5.5) == pytest.approx(850.0)
    table2 = Schedule.staircase([500.0, 800.0, 1200.0, 1400.0], repeat=3)  # seeds/000 Table 2, rounds 0..11
    assert [table2(r) for r in range(12)] == [500.0] * 3 + [800.0] * 3 + [1200.0] * 3 + [1400.0] * 3
    assert Schedule.constant(2.0)(1e6) == 2.0
    with pytest.raises(ValueError):
        Schedule([1.0, 0.0], [1.0, 2.0])


def test_temperature_schedule_drives_the_thermostat():
    structures = [_cluster(27, 2)]
    md = BatchedMD(
        HarmonicPotential(_anchors(structures)),
        structures,
        timestep=2.0,
        temperature=Schedule([0, 1000, 1001, 3000], [100.0, 100.0, 1000.0, 1000.0]),
        friction=0.1,
        n_steps=3000,
        seed=5,
    )
    log = md.run().log
    assert log['temperature'][(log['step'] > 300) & (log['step'] < 1000)].mean() == pytest.approx(100, rel=0.12)
    assert log['temperature'][log['step'] > 1500].mean() == pytest.approx(1000, rel=0.08)


def test_tau_zero_reproduces_plain_md_bit_for_bit(tiny_committee, copper_cells):
    """τ = 0 biased MD (committee σ computed every step) equals unbiased MD with the same seed exactly."""
    runs = []
    for term in (None, CommitteeUncertainty()):
        potential = BiasedPotential(tiny_committee, term, strength=0.0, compute_stress=True)
        pool = CandidatePool(interval=5)
        md = BatchedMD(
            potential,
            copper_cells,
            timestep=2.0,
            temperature=600.0,
            n_steps=25,
            barostat=BerendsenBarostat(tau=200.0),
            pressure=1.0,
            pool=pool,
            seed=7,
        )
        runs.append((md.run(), pool.to_arrays()))
    (plain, plain_pool), (zero, zero_pool) = runs
    np.testing.assert_array_equal(plain_pool.positions, zero_pool.positions)
    np.testing.assert_array_equal(plain_pool.cells, zero_pool.cells)
    for key in ('energy', 'energy_bias', 'temperature', 'volume', 'pressure'):
        np.testing.assert_array_equal(plain.log[key], zero.log[key], err_msg=key)
    assert np.all(zero.log['uncertainty'] > 0) and np.isnan(plain.log['uncertainty']).all()
    for walker in (0, 1):
        np.testing.assert_array_equal(plain.final[walker].positions, zero.final[walker].positions)
    # a positive τ changes the trajectory
    biased = BatchedMD(
        BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.5),
        copper_cells,
        timestep=2.0,
        temperature=600.0,
        n_steps=25,
        seed=7,
    ).run()
    assert not np.array_equal(biased.final[0].positions, plain.final[0].positions)


def _plant_uncertainty(result: PotentialResult, atoms: np.ndarray, count: int) -> None:
    result.atom_uncertainty[atoms] = 2.0


def _plant_hal(result: PotentialResult, atoms: np.ndarray, count: int) -> None:
    first = np.flatnonzero(atoms)[0]
    result.member_forces[0, first] += 3.0  # one atom with a large relative force deviation
    result.member_forces[1, first] -= 3.0


def _plant_force(result: PotentialResult, atoms: np.ndarray, count: int) -> None:
    if count >= 4:
        result.forces[np.flatnonzero(atoms)[0], 1] = -25.0


def _plant_nan(result: PotentialResult, atoms: np.ndarray, count: int) -> None:
    if count >= 2:
        result.energy[result.structure_index[np.flatnonzero(atoms)[0]]] = np.nan


def test_each_stop_criterion_fires_on_a_planted_case_and_records_its_reason():
    structures = [_cluster(8, w) for w in range(8)]
    structures[4].positions[1] = structures[4].positions[0] + [0.9, 0.0, 0.0]  # too close: 0.9 < 0.75 * 2.3 Å
    structures[5].cell = np.eye(3) * 40.0  # periodic, density ~ 0.01 g/cm³
    structures[5].pbc = True
    plant = {1: _plant_uncertainty, 2: _plant_hal, 3: _plant_force, 6: _plant_nan, 7: 'raise'}
    potential = PlantedPotential(_anchors(structures), plant)
    potential.min_distance = True
    original = potential.evaluate

    def evaluate(system, forces=True, update_strength=True):
        result = original(system, forces, update_strength)
        distances = []
        for row in range(system.n_structures):
            part = system.atoms_slice(row)
            diff = system.positions[part][:, None] - system.positions[part][None]
            d = np.linalg.norm(diff, axis=-1) + np.eye(part.stop - part.start) * 1e9
            distances.append(d.min())
        result.min_distance = np.array(distances)
        return result

    potential.evaluate = evaluate
    pool = CandidatePool(interval=None)
    md = BatchedMD(
        potential,
        structures,
        timestep=1.0,
        temperature=100.0,
        n_steps=10,
        criteria=[UncertaintyThreshold(1.0), HALStop(f_tol=2.0, s_tol=None)],
        physical=PhysicalLimits(max_force=20.0, training_min_distance=2.3, density_bounds=(1.0, 20.0)),
        pool=pool,
        seed=0,
    )
    run = md.run()
    assert run.stop_reasons == {
        0: 'max_steps',
        1: 'uncertainty',
        2: 'hal_f_tol',
        3: 'max_force',
        4: 'min_distance',
        5: 'density',
        6: 'nan',
        7: 'error: RuntimeError',
    }
    assert run.stop_steps[0] == 10 and run.stop_steps[3] == 3 and run.stop_steps[6] == 1 and run.stop_steps[1] == 0
    assert pool.stop_reasons == run.stop_reasons
    # only the physical stops leave a stop frame in the pool
    arrays = pool.to_arrays()
    assert sorted(arrays.info['walker'].tolist()) == [0, 1, 2]
    assert dict(zip(arrays.info['walker'].tolist(), arrays.info['stop_reason'].tolist(), strict=True)) == {
        0: 'max_steps',
        1: 'uncertainty',
        2: 'hal_f_tol',
    }
    assert arrays.info['max_atom_force_unc'][arrays.info['walker'] == 1][0] == pytest.approx(2.0)


def test_calibrated_uncertainty_and_softmax_criteria():
    structures = [_cluster(8, 0), _cluster(8, 1)]

    def spike(result, atoms, count):
        first = np.flatnonzero(atoms)[0]
        result.member_forces[0, first] += 4.0
        result.member_forces[1, first] -= 4.0

    potential = PlantedPotential(_anchors(structures), {1: spike})
    calibrated = UncertaintyThreshold(0.5, atom_uncertainty=lambda system, result: 6.0 * result.atom_uncertainty)
    run = BatchedMD(potential, structures, n_steps=5, criteria=[HALStop(s_tol=0.5)]).run()
    assert run.stop_reasons == {0: 'max_steps', 1: 'hal_s_tol'}  # softmax of f: one atom dominates (eq. 8)
    run = BatchedMD(potential, structures, n_steps=5, criteria=[calibrated]).run()
    assert run.stop_reasons == {0: 'uncertainty', 1: 'uncertainty'}  # 6 x 0.1 eV/Å > 0.5 eV/Å
    with pytest.raises(ValueError, match='per-atom uncertainty'):
        BatchedMD(HarmonicPotential(_anchors(structures)), structures, criteria=[UncertaintyThreshold(1.0)]).run()


def test_a_blowing_up_walker_is_stopped_while_the_others_continue(tiny_committee):
    """Walker 0 with a 400 fs timestep is stopped as unphysical; walker 1 (1 fs) runs to the end."""
    from ase.build import bulk

    structures = [bulk('Cu', 'fcc', a=3.61, cubic=True), bulk('Cu', 'fcc', a=3.61, cubic=True)]
    structures[1].rattle(0.05, seed=1)
    potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.2)
    pool = CandidatePool(interval=5)
    run = BatchedMD(
        potential,
        structures,
        timestep=[400.0, 1.0],
        temperature=2000.0,
        n_steps=30,
        physical=PhysicalLimits(training_min_distance=2.4, density_bounds=(4.0, 15.0)),
        pool=pool,
        seed=1,
    ).run()
    assert run.stop_reasons[0] in {'nan', 'max_force', 'min_distance', 'density'}
    assert run.stop_steps[0] < 30
    assert run.stop_reasons[1] == 'max_steps' and run.stop_steps[1] == 30
    assert np.isfinite(run.final[1].positions).all()
    arrays = pool.to_arrays()
    assert 'stop' not in arrays.info['frame_kind'][arrays.info['walker'] == 0].tolist()


def test_metropolis_swap_acceptance_matches_boltzmann_factor():
    """Swaps between two states with ΔE: acceptance uphill = exp(-ΔE/kT), occupancy = Boltzmann."""
    n_walkers, kT, gap = 200, 0.05, 0.05 * np.log(1 / 0.3)  # exp(-gap/kT) = 0.3
    structures = [Atoms('CuAu', positions=[[0, 0, 0], [3, 0, 0]]) for _ in range(n_walkers)]
    system = WalkerSystem.from_atoms(structures)

    def energy(trial: WalkerSystem) -> np.ndarray:  # E = gap when Cu sits at x = 3 Å
        copper = trial.numbers == 29
        return np.bincount(trial.structure_index[copper], gap * trial.positions[copper, 0] / 3.0, trial.n_structures)

    rngs = [np.random.default_rng(s) for s in range(n_walkers)]
    current = energy(system)
    uphill_tries = uphill_accepted = 0
    occupancy = []
    for sweep in range(100):
        low = current < gap / 2
        accepted, current = swap_move(system, energy, current, np.full(n_walkers, kT), rngs)
        uphill_tries += int(low.sum())
        uphill_accepted += int((accepted & low).sum())
        assert np.all(accepted[~low])  # downhill moves are always accepted
        if sweep >= 10:
            occupancy.append((current > gap / 2).mean())
    rate = uphill_accepted / uphill_tries
    assert rate == pytest.approx(0.3, abs=4 * np.sqrt(0.3 * 0.7 / uphill_tries))
    assert np.mean(occupancy) == pytest.approx(0.3 / 1.3, abs=0.02)
    np.testing.assert_allclose(current, energy(system))
    assert metropolis_accept(np.array([np.nan, -1.0]), np.ones(2), np.zeros(2)).tolist() == [False, True]


def test_volume_moves_sample_the_isobaric_ideal_gas():
    """With E = 0, p(V) ∝ V^N exp(-P V/kT): <V> = (N + 1) kT / P; checks the (N + 1) ln(V'/V) term."""
    n_walkers, kT, pressure = 300, 0.025, 7.5e-4  # <V> = 3 kT / P = 100 Å³ for N = 2
    structures = [Atoms('Cu2', positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * 4.0, pbc=True)] * n_walkers
    system = WalkerSystem.from_atoms(structures)
    rngs = [np.random.default_rng(100 + s) for s in range(n_walkers)]

    def zero(trial: WalkerSystem) -> np.ndarray:
        return np.zeros(trial.n_structures)

    current = np.zeros(n_walkers)
    volumes = []
    for sweep in range(250):
        _, current = volume_move(
            system, zero, current, np.full(n_walkers, kT), np.full(n_walkers, pressure), rngs, max_log_change=0.8
        )
        if sweep >= 50:
            volumes.append(system.volumes())
    assert np.mean(volumes) == pytest.approx(3 * kT / pressure, rel=0.04)
    # positions are scaled with the cell
    fractional = np.linalg.solve(system.cells[0].T, system.positions[1])
    np.testing.assert_allclose(fractional, [0.25, 0.25, 0.25])


def test_monte_carlo_inside_md_uses_the_biased_energy(tiny_committee):
    from aiida_alkit.models.committee import Committee
    from aiida_alkit.models.gmnn import GMNNHyperparameters

    committee = Committee(GMNNHyperparameters.small(['Cu', 'Au'], hidden_widths=(8, 8)), n_members=2)
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms('Cu2Au2', scaled_positions=fcc, cell=np.eye(3) * 3.8, pbc=True)
    potential = BiasedPotential(committee, CommitteeUncertainty(), strength=0.1, compute_stress=True)
    run = BatchedMD(
        potential,
        [atoms, atoms.copy()],
        temperature=1000.0,
        n_steps=20,
        pressure=0.0,
        monte_carlo=MonteCarlo(interval=2, n_swap=2, n_volume=1, max_log_change=0.01),
        seed=4,
    ).run()
    assert run.mc_acceptance['swap'][1] == 2 * 2 * 10 and run.mc_acceptance['volume'][1] == 2 * 10
    assert 0 < run.mc_acceptance['volume'][0] <= 20
    assert set(run.stop_reasons.values()) == {'max_steps'}


class _PressurePotential(HarmonicPotential):
    """Harmonic atoms plus a constant internal pressure p (GPa) in the stress."""

    def __init__(self, anchors, p: float) -> None:
        super().__init__(anchors, k=0.0)
        self.p = p

    def evaluate(self, system, forces=True, update_strength=True):
        result = super().evaluate(system, forces, update_strength)
        result.stress = np.repeat(-self.p * units.GPa * np.eye(3)[None], system.n_structures, axis=0)
        result.bias_stress = np.zeros_like(result.stress)
        return result


@pytest.mark.parametrize('anisotropic', [False, True])
def test_berendsen_barostat_expands_under_internal_pressure(anisotropic):
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms('Cu4', scaled_positions=fcc, cell=np.eye(3) * 3.6, pbc=True)
    barostat = BerendsenBarostat(tau=100.0, anisotropic=anisotropic)
    run = BatchedMD(
        _PressurePotential({0: atoms.positions, 1: atoms.positions}, p=5.0),
        [atoms, atoms.copy()],
        temperature=1.0,
        n_steps=20,
        barostat=barostat,
        pressure=[0.0, 10.0],
    ).run()
    volume = run.log['volume']
    first, last = volume[run.log['step'] == 0], volume[run.log['step'] == 20]
    assert last[0] > first[0] and last[1] < first[1]  # P = 5 GPa above 0 GPa expands, below 10 GPa shrinks
    assert run.log['pressure'][0] == pytest.approx(5.0, rel=0.01)


def test_kinetic_temperature_and_density_helpers():
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms('Cu4', scaled_positions=fcc, cell=np.eye(3) * 3.61, pbc=True)
    system = WalkerSystem.from_atoms([atoms])
    assert system.densities()[0] == pytest.approx(8.96, rel=0.01)  # copper
    system.velocities[:] = np.sqrt(KB * 300.0 / system.masses)[:, None]
    assert system.temperatures()[0] == pytest.approx(300.0)


def test_bias_stress_enters_the_barostat(tiny_committee, copper_cells):
    """NPT with an adaptive stress bias (seeds/003 eq. 7-8): τ_s > 0 and the cell evolves differently."""
    from aiida_alkit.exploration.bias import AdaptiveStrength

    volumes = []
    for stress_strength in (0.0, AdaptiveStrength(2.0)):
        potential = BiasedPotential(
            tiny_committee, CommitteeUncertainty(), strength=0.0, stress_strength=stress_strength, compute_stress=True
        )
        run = BatchedMD(
            potential,
            copper_cells,
            timestep=2.0,
            temperature=300.0,
            n_steps=15,
            barostat=BerendsenBarostat(tau=50.0, anisotropic=True),
            pressure=0.0,
            seed=9,
        ).run()
        volumes.append(run.log['volume'][run.log['step'] == 15])
        if stress_strength:
            assert np.all(run.log['tau_stress'] > 0)
    assert not np.allclose(volumes[0], volumes[1], rtol=1e-6)


def _ideal_gas(n_walkers: int, n_atoms: int, temperature: float, targets: np.ndarray) -> list[Atoms]:
    """Cubic cells of <V> = (N + 1) kT / P_0 with atoms at random positions (no interactions)."""
    rng = np.random.default_rng(0)
    structures = []
    for target in targets[:n_walkers]:
        side = ((n_atoms + 1) * KB * temperature / (target * units.GPa)) ** (1 / 3)
        positions = rng.random((n_atoms, 3))
        structures.append(Atoms(f'Cu{n_atoms}', scaled_positions=positions, cell=np.eye(3) * side, pbc=True))
    return structures


def test_stochastic_cell_rescaling_samples_the_isobaric_ideal_gas():
    """Ideal gas (E = 0, σ = 0), N = 27, 300 K, P_0 = 0.5 and 1 GPa: p(V) ∝ V^N exp(-P_0 V/kT), so
    <V> = (N + 1) kT/P_0, std(V) = sqrt(N + 1) kT/P_0 and <P_int> = P_0 exactly. Bernetti-Bussi samples it (per-walker
    β_T = 1/P_0); Berendsen, under the same conditions (τ_P = 100 fs), damps the volume fluctuations to about half."""
    n_walkers, n_atoms, temperature = 32, 27, 300.0
    targets = np.repeat([0.5, 1.0], n_walkers // 2)  # GPa
    compressibility = 1.0 / targets  # 1/GPa, one per walker id
    structures = _ideal_gas(n_walkers, n_atoms, temperature, targets)
    anchors = {w: atoms.positions for w, atoms in enumerate(structures)}
    spreads = {}
    for barostat, steps in (
        (StochasticCellRescaling(tau=100.0, compressibility=compressibility, max_scaling=0.05), 600),
        (BerendsenBarostat(tau=100.0, compressibility=compressibility, max_scaling=0.05), 400),
    ):
        run = BatchedMD(
            _PressurePotential(anchors, p=0.0),
            structures,
            timestep=2.0,
            temperature=temperature,
            n_steps=steps,
            barostat=barostat,
            pressure=targets,
            seed=1,
            wrap=False,
        ).run()
        assert set(run.stop_reasons.values()) == {'max_steps'}  # no blow-up
        log = run.log
        for target in (0.5, 1.0):
            rows = (log['step'] >= 100) & np.isin(log['walker'], np.flatnonzero(targets == target))
            scale = KB * temperature / (target * units.GPa)  # kT/P_0, Å³
            volume = log['volume'][rows]
            spreads[type(barostat).__name__, target] = volume.std() / (np.sqrt(n_atoms + 1) * scale)
            if isinstance(barostat, StochasticCellRescaling):
                assert volume.mean() == pytest.approx((n_atoms + 1) * scale, rel=0.06)
                assert log['pressure'][rows].mean() == pytest.approx(target, rel=0.05)  # GPa
    for target in (0.5, 1.0):
        assert spreads['StochasticCellRescaling', target] == pytest.approx(1.0, abs=0.15)
        assert spreads['BerendsenBarostat', target] < 0.7


def test_cell_moves_sample_the_isobaric_ideal_gas_and_change_the_shape():
    """h' = h exp(A), A symmetric: with E = 0 the volume follows p(V) ∝ V^N exp(-P V/kT), <V> = (N + 1) kT/P."""
    n_walkers, kT, pressure = 100, 0.025, 7.5e-4  # <V> = 3 kT / P = 100 Å³ for N = 2
    structures = [Atoms('Cu2', positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * 4.0, pbc=True)] * n_walkers
    system = WalkerSystem.from_atoms(structures)
    rngs = [np.random.default_rng(300 + s) for s in range(n_walkers)]

    def zero(trial: WalkerSystem) -> np.ndarray:
        return np.zeros(trial.n_structures)

    current = np.zeros(n_walkers)
    volumes, accepted = [], 0
    for sweep in range(150):
        moved, current = cell_move(
            system, zero, current, np.full(n_walkers, kT), np.full(n_walkers, pressure), rngs, strain=0.2
        )
        accepted += int(moved.sum())
        if sweep >= 30:
            volumes.append(system.volumes())
    assert np.mean(volumes) == pytest.approx(3 * kT / pressure, rel=0.05)
    assert 0.2 < accepted / (150 * n_walkers) < 0.95
    cell = system.cells[0]
    assert np.abs(cell - np.diag(np.diag(cell))).max() > 0.1  # sheared, not only scaled
    fractional = np.linalg.solve(cell.T, system.positions[1])
    np.testing.assert_allclose(fractional, [0.25, 0.25, 0.25], atol=1e-4)  # after ~100 accepted deformations


def test_hal_monte_carlo_needs_two_elements_for_swaps_and_a_pressure_for_cell_moves(tiny_committee):
    """Single-element walkers skip swaps; volume and cell moves run only under a target pressure (NPT)."""
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms('Cu4', scaled_positions=fcc, cell=np.eye(3) * 3.61, pbc=True)
    settings = MonteCarlo(interval=2, n_swap=1, n_volume=1, n_cell=2, cell_strain=0.01)
    for pressure in (None, 0.0):
        potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.1, compute_stress=True)
        run = BatchedMD(
            potential, [atoms, atoms.copy()], temperature=600.0, n_steps=8, pressure=pressure, monte_carlo=settings
        ).run()
        assert run.mc_acceptance['swap'] == [0, 0]
        rounds = 4  # steps 2, 4, 6, 8
        expected = 0 if pressure is None else 2 * rounds
        assert run.mc_acceptance['volume'][1] == expected and run.mc_acceptance['cell'][1] == 2 * expected
        assert set(run.stop_reasons.values()) == {'max_steps'}


class _QuadraticVolumePotential(HarmonicPotential):
    """E = B/(2 V_0) (V - V_0)² per walker (B in GPa per walker id), so V ∂²E/∂V² = B at V = V_0."""

    def __init__(self, anchors, moduli: dict[int, float], volume: float) -> None:
        super().__init__(anchors, k=0.0)
        self.moduli, self.volume = moduli, volume

    def evaluate(self, system, forces=True, update_strength=True):
        result = super().evaluate(system, forces, update_strength)
        moduli = np.array([self.moduli[int(w)] for w in system.walker_ids]) * units.GPa
        result.energy = moduli / (2 * self.volume) * (system.volumes() - self.volume) ** 2
        result.energy_bias = result.energy.copy()
        return result


def test_compressibility_is_estimated_from_the_model_curvature():
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    periodic = Atoms('Cu4', scaled_positions=fcc, cell=np.eye(3) * 3.61, pbc=True)
    cluster = Atoms('Cu4', positions=periodic.positions)
    structures = [periodic, periodic.copy(), periodic.copy(), periodic.copy(), cluster]
    moduli = {0: 140.0, 1: 5.0, 2: 0.1, 3: -20.0, 4: 140.0}  # Cu, a soft framework, too soft, unstable, a cluster
    potential = _QuadraticVolumePotential(_anchors(structures), moduli, periodic.get_volume())
    beta = estimate_compressibility(potential, WalkerSystem.from_atoms(structures))
    np.testing.assert_allclose(beta[:2], [1 / 140.0, 1 / 5.0], rtol=1e-6)  # 1/GPa
    assert beta[2] == 1.0 and beta[3] == beta[4] == 0.01  # clipped to B >= 1 GPa; the generic 100 GPa


class _FailsAfterMonteCarlo(HarmonicPotential):
    """Harmonic atoms whose re-evaluation after a Monte-Carlo move (forces without a strength update, which only
    ``BatchedMD._monte_carlo`` asks for) raises for walker 1: a fault a real model cannot be made to raise on cue."""

    def evaluate(self, system, forces=True, update_strength=True):
        if forces and not update_strength and 1 in system.walker_ids:
            raise RuntimeError('planted failure after a swap')
        return super().evaluate(system, forces, update_strength)


def test_a_walker_that_fails_after_a_monte_carlo_move_is_stopped_with_its_reason():
    """Swaps leave the harmonic energy unchanged, so attempts are accepted and the walkers re-evaluated; the walker
    whose re-evaluation raises stops with the error as its reason (it used to vanish without a record)."""
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms('Cu2Au2', scaled_positions=fcc, cell=np.eye(3) * 3.8, pbc=True)
    potential = _FailsAfterMonteCarlo({0: atoms.positions.copy(), 1: atoms.positions.copy()}, k=1.0)
    run = BatchedMD(
        potential, [atoms, atoms.copy()], temperature=300.0, n_steps=6, monte_carlo=MonteCarlo(interval=2, n_swap=1)
    ).run()
    assert run.stop_reasons == {1: 'error: RuntimeError', 0: 'max_steps'}
    assert run.stop_steps == {1: 2, 0: 6}
    assert run.mc_acceptance['swap'][1] == 2 + 1 + 1  # attempts: both walkers at step 2, then walker 0 alone
