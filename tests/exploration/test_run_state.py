"""BatchedMD's run bookkeeping: ``RunState`` (one place records every stop) and ``StepObservables`` (one pass)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units

from aiida_alkit.exploration import dynamics
from aiida_alkit.exploration.dynamics import (
    LOG_KEYS,
    BatchedMD,
    BerendsenBarostat,
    PhysicalLimits,
    RunState,
    StepObservables,
    WalkerSystem,
)
from aiida_alkit.exploration.pool import CandidatePool
from tests.exploration.toys import HarmonicPotential


class _Toy(HarmonicPotential):
    """Harmonic atoms, an internal pressure ``p[walker]`` (GPa) in the stress, atom uncertainty 0.1 (walker + 1)
    eV/Å, and evaluations of batches holding walker ``bad`` raising from the ``after``-th updating call on."""

    def __init__(self, anchors, p: dict[int, float], bad: int = -1, after: int = 0) -> None:
        super().__init__(anchors, k=0.5)
        self.p, self.bad, self.after, self.updates = p, bad, after, 0

    def evaluate(self, system, forces=True, update_strength=True):
        self.updates += int(update_strength)
        if self.bad in system.walker_ids.tolist() and self.updates >= self.after:
            raise RuntimeError('planted failure')
        result = super().evaluate(system, forces, update_strength)
        pressure = np.array([self.p[int(w)] for w in system.walker_ids]) * units.GPa
        result.stress = -pressure[:, None, None] * np.eye(3)[None]
        result.bias_stress = np.zeros_like(result.stress)
        result.atom_uncertainty = 0.1 * (system.walker_ids[system.structure_index] + 1.0)
        return result


def _cells(n_walkers: int) -> list[Atoms]:
    """Periodic cells of 8 Cu atoms in 216 Å³ (3.9 g/cm³)."""
    rng = np.random.default_rng(0)
    grid = 1.5 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing='ij'), axis=-1).reshape(-1, 3) + 1.0
    return [
        Atoms('Cu8', positions=grid + 0.05 * rng.standard_normal((8, 3)), cell=np.eye(3) * 6.0, pbc=True)
        for _ in range(n_walkers)
    ]


def test_run_state_records_each_stop_once_in_order_and_tells_the_pool():
    pool = CandidatePool(interval=None)
    state = RunState(pool=pool)
    frames = [Atoms('Cu'), Atoms('Cu2')]
    state.stop(np.array([3, 1]), np.array(['uncertainty', 'nan']), 4, frames)
    failed = {7: 'error: RuntimeError'}
    state.stop(failed.keys(), failed.values(), 5)  # no frame: absent from final
    assert list(state.stop_reasons.items()) == [(3, 'uncertainty'), (1, 'nan'), (7, 'error: RuntimeError')]
    assert state.stop_steps == {3: 4, 1: 4, 7: 5}
    assert all(type(w) is int and type(r) is str for w, r in state.stop_reasons.items())
    assert list(state.final) == [3, 1] and state.final[3] is frames[0] and state.final[1] is frames[1]
    assert pool.stop_reasons == state.stop_reasons and pool.stop_steps == state.stop_steps
    with pytest.raises(ValueError, match='one reason'):
        state.stop([2], ['nan', 'density'], 6)
    with pytest.raises(ValueError, match='one reason'):
        state.stop([2, 5], ['nan', 'density'], 6, frames[:1])
    assert 2 not in state.stop_reasons and 5 not in state.stop_steps  # a refused call records nothing
    result = state.result(9)
    assert result.n_steps == 9 and result.pool is pool and result.stop_reasons is state.stop_reasons
    assert list(result.log) == list(LOG_KEYS) and all(value.size == 0 for value in result.log.values())
    assert result.mc_acceptance == {'swap': [0, 0], 'volume': [0, 0], 'cell': [0, 0]}


def test_run_states_do_not_share_their_containers():
    first, second = RunState(), RunState()
    first.log['step'].append(1)
    first.acceptance['swap'][0] += 1
    first.stop([0], ['nan'], 0)
    assert second.log['step'] == [] and second.acceptance['swap'] == [0, 0] and second.stop_reasons == {}


def test_step_observables_of_a_mixed_batch():
    structures = _cells(2)
    structures[1].pbc = False  # a cluster: no pressure, no volume
    system = WalkerSystem.from_atoms(structures)
    system.velocities[:] = 0.01
    potential = _Toy({w: s.positions for w, s in enumerate(structures)}, {0: 2.0, 1: 3.0})
    result = potential.evaluate(system)
    observed = StepObservables.of(system, result)
    kinetic = structures[0].get_masses().sum() * 3 * 0.01**2 / (3 * 216.0) / units.GPa  # Σ m v² / 3V
    assert observed.pressure[0] == pytest.approx(2.0 + kinetic, rel=1e-12)
    assert np.isnan(observed.pressure[1]) and np.isnan(observed.volume[1])
    assert observed.volume[0] == pytest.approx(216.0, rel=1e-12)
    np.testing.assert_allclose(observed.max_atom_uncertainty, [0.1, 0.2])
    np.testing.assert_array_equal(observed.kinetic_temperature, system.temperatures())
    assert np.isnan(observed.u_energy).all() and not observed.tau.any() and not observed.tau_stress.any()


def test_pressure_and_max_atom_values_are_computed_once_per_step(monkeypatch):
    """A pool frame every step: the log and the pool metadata share one pressure and one max-atom pass."""
    calls = {'pressure_tensor': 0, 'segment_max': 0}

    def counted(name):
        original = getattr(dynamics, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(dynamics, name, counted(name))
    structures = _cells(2)
    pool = CandidatePool(interval=1)
    potential = _Toy({w: s.positions for w, s in enumerate(structures)}, {0: 1.0, 1: 2.0})
    n_steps = 6
    run = BatchedMD(
        potential, structures, n_steps=n_steps, physical=PhysicalLimits(max_force=None), pool=pool, seed=3
    ).run()
    assert len(pool) == 2 * n_steps  # samples at steps 1..5 and the stop frames at step 6
    assert calls == {'pressure_tensor': n_steps + 1, 'segment_max': n_steps + 1}  # steps 0..6, no barostat
    info = pool.to_arrays().info
    for key, log_key in (('pressure', 'pressure'), ('max_atom_force_unc', 'max_atom_uncertainty')):
        log = {(w, s): v for w, s, v in zip(run.log['walker'], run.log['step'], run.log[log_key], strict=True)}
        frames = zip(info['walker'].tolist(), info['step'].tolist(), info[key].tolist(), strict=True)
        assert [log[(w, s)] for w, s, _ in frames] == info[key].tolist()
    assert np.all(run.log['pressure'] > 1.0)


def test_every_kind_of_stop_is_recorded_once_in_the_result_and_the_pool():
    """Input NaN (step 0, with its frame), density after a barostat step (no frame: never evaluated), a failing
    evaluation during the run (no frame) and ``max_steps`` (with its frame), in the order they happened."""
    structures = _cells(4)
    structures[3].positions[2, 0] = np.nan
    pool = CandidatePool(interval=None)
    potential = _Toy({w: s.positions for w, s in enumerate(structures)}, {0: 0.0, 1: 50.0, 2: 0.0}, bad=2, after=4)
    run = BatchedMD(
        potential,
        structures,
        n_steps=20,
        barostat=BerendsenBarostat(tau=20.0, compressibility=0.1),
        pressure=0.0,
        physical=PhysicalLimits(density_bounds=(3.0, 4.5)),
        pool=pool,
        seed=6,
    ).run()
    assert list(run.stop_reasons.items()) == [(3, 'nan'), (2, 'error: RuntimeError'), (1, 'density'), (0, 'max_steps')]
    assert run.stop_steps[3] == 0 and run.stop_steps[2] == 3 and 3 < run.stop_steps[1] < 20 and run.stop_steps[0] == 20
    assert sorted(run.final) == [0, 3]
    assert np.isnan(run.final[3].positions[2, 0])
    assert pool.stop_reasons == run.stop_reasons and pool.stop_steps == run.stop_steps
    assert pool.to_arrays().info['walker'].tolist() == [0]  # the only stop frame that is physical and evaluated
    volume = run.log['volume'][run.log['walker'] == 1]
    assert volume[-1] > volume[0]  # walker 1 expanded until its density fell below 3 g/cm³
