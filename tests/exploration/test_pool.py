"""Candidate pool: frames every k steps plus stop frames, metadata, features, files."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from aiida_alkit.exploration.bias import BiasedPotential, CommitteeUncertainty, PotentialResult
from aiida_alkit.exploration.dynamics import BatchedMD, UncertaintyThreshold
from aiida_alkit.exploration.pool import CandidatePool
from aiida_alkit.io.arrays import ConfigurationArrays
from tests.exploration.toys import PlantedPotential


def _growing(walker: int):
    """Atom uncertainty 0.1 (w + 1) n eV/Å at the n-th force evaluation: walker w crosses 1 eV/Å at a known step."""

    def plant(result: PotentialResult, atoms: np.ndarray, count: int) -> None:
        result.atom_uncertainty[atoms] = 0.1 * (walker + 1) * count

    return plant


def test_pool_has_frames_every_k_steps_plus_stop_frames_with_metadata(tmp_path):
    structures = []
    for w in range(3):
        atoms = Atoms('Cu8', positions=np.random.default_rng(w).uniform(0, 6, (8, 3)), cell=np.eye(3) * 7.0, pbc=True)
        structures.append(atoms)
    anchors = {w: a.get_positions().copy() for w, a in enumerate(structures)}
    potential = PlantedPotential(anchors, {w: _growing(w) for w in range(3)})
    pool = CandidatePool(interval=4)

    def features(system, result):  # per-structure (B, 2): walker id and mean x
        return np.stack([system.walker_ids, np.bincount(system.structure_index, system.positions[:, 0])], axis=1)

    run = BatchedMD(
        potential,
        structures,
        timestep=1.0,
        temperature=[300.0, 400.0, 500.0],
        n_steps=30,
        criteria=[UncertaintyThreshold(1.0)],
        pool=pool,
        features=features,
        recorders={'twice_energy': lambda system, result: 2 * result.energy},
        seed=2,
    ).run()
    # value at step s is 0.1 (w+1)(s+1): walker 0 stops at s = 10, walker 1 at s = 5, walker 2 at s = 3
    assert run.stop_steps == {0: 10, 1: 5, 2: 3}
    assert set(run.stop_reasons.values()) == {'uncertainty'}
    arrays = pool.to_arrays()
    frames = list(zip(arrays.info['walker'].tolist(), arrays.info['step'].tolist(), strict=True))
    assert sorted(frames) == [(0, 4), (0, 8), (0, 10), (1, 4), (1, 5), (2, 3)]
    kind = dict(zip(frames, arrays.info['frame_kind'].tolist(), strict=True))
    assert kind == {
        (0, 4): 'sample',
        (0, 8): 'sample',
        (0, 10): 'stop',
        (1, 4): 'sample',
        (1, 5): 'stop',
        (2, 3): 'stop',
    }
    reasons = dict(zip(frames, arrays.info['stop_reason'].tolist(), strict=True))
    assert reasons[(0, 10)] == 'uncertainty' and reasons[(0, 4)] == ''
    info = arrays.info
    np.testing.assert_allclose(info['temperature'], [300.0 + 100.0 * w for w in info['walker']])
    np.testing.assert_allclose(info['volume'], 343.0)
    expected_unc = 0.1 * (info['walker'] + 1) * (info['step'] + 1)
    np.testing.assert_allclose(info['max_atom_force_unc'], expected_unc)
    np.testing.assert_allclose(info['twice_energy'], 2 * info['model_energy'])
    assert np.all(info['kinetic_temperature'] > 0)
    assert np.isnan(info['pressure']).all()  # the toy potential has no stress
    for key in ('u_energy', 'f_max', 's_max', 'tau', 'biased_energy', 'target_pressure'):
        assert key in info
    assert 'energy' not in info and arrays.energy is None  # candidates are unlabelled
    # each frame's positions are that walker's configuration at that step
    stop_atoms = run.final[2]
    index = frames.index((2, 3))
    np.testing.assert_allclose(arrays.get_atoms(index).positions, stop_atoms.positions)
    # features ride along, one row per frame
    features_array = pool.features
    assert features_array.shape == (len(arrays), 2)
    np.testing.assert_array_equal(features_array[:, 0], info['walker'])
    # files
    paths = pool.save(tmp_path)
    loaded, loaded_features, stops = CandidatePool.load(tmp_path)
    assert isinstance(loaded, ConfigurationArrays) and loaded.sha256() == arrays.sha256()
    np.testing.assert_array_equal(loaded_features, features_array)
    assert stops == {
        0: {'reason': 'uncertainty', 'step': 10},
        1: {'reason': 'uncertainty', 'step': 5},
        2: {'reason': 'uncertainty', 'step': 3},
    }
    assert set(paths) == {'pool', 'features', 'stops'}


def test_pool_of_a_biased_committee_run_records_the_uncertainties(tiny_committee, copper_cells):
    potential = BiasedPotential(tiny_committee, CommitteeUncertainty(), strength=0.3, compute_stress=True)
    pool = CandidatePool(interval=3)
    run = BatchedMD(potential, copper_cells, timestep=2.0, temperature=500.0, n_steps=7, pool=pool, seed=0).run()
    assert run.stop_reasons == {0: 'max_steps', 1: 'max_steps'}
    arrays = pool.to_arrays()
    assert sorted(zip(arrays.info['walker'].tolist(), arrays.info['step'].tolist(), strict=True)) == [
        (0, 3),
        (0, 6),
        (0, 7),
        (1, 3),
        (1, 6),
        (1, 7),
    ]
    info = arrays.info
    assert np.all(info['u_energy'] > 0) and np.all(info['max_atom_force_unc'] > 0)
    assert np.all((info['s_max'] > 0) & (info['s_max'] <= 1)) and np.all(info['f_max'] > 0)
    np.testing.assert_allclose(info['biased_energy'], info['model_energy'] - 0.3 * info['u_energy'])
    assert np.isfinite(info['pressure']).all() and np.all(info['volume'] > 40)
    assert pool.features is None
    with pytest.raises(ValueError, match='empty'):
        CandidatePool().to_arrays()
