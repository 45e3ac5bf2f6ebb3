"""GM-NN model: symmetries, derivatives (forces, stress), cutoff smoothness, extensivity, batching, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from scipy.spatial.transform import Rotation

from aiida_alkit.models.calculator import GMNNCalculator
from aiida_alkit.models.gmnn import (
    GMNN,
    PAPER_LEARNING_RATES,
    SILU_SCALE,
    GMNNHyperparameters,
    count_species,
    n_gaussian_moment_features,
)

SPECIES = ['H', 'C', 'O', 'Si']


def _model(dtype: str = 'float64', seed: int = 0, **overrides) -> GMNN:
    """A small model with random (non-zero) biases, shifts and scales so that every term is exercised."""
    model = GMNN(GMNNHyperparameters.small(SPECIES, dtype=dtype, seed=seed, **overrides))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in model.network:
            if hasattr(module, 'bias'):
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
        model.atomic_shift.copy_(torch.randn(len(SPECIES), generator=generator))
        model.atomic_scale.copy_(1.0 + 0.1 * torch.randn(len(SPECIES), generator=generator))
    return model


def _evaluate(model: GMNN, atoms: Atoms, stress: bool = False) -> dict[str, np.ndarray]:
    out = model(model.make_batch([atoms]), compute_forces=True, compute_stress=stress)
    return {key: value.detach().numpy() for key, value in out.items()}


def _energy(model: GMNN, atoms: Atoms) -> float:
    return float(model(model.make_batch([atoms]), compute_forces=False)['energy'].item())


def _periodic() -> Atoms:
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.set_cell(atoms.cell[:] + np.array([[0.0, 0.1, -0.05], [0.08, 0.0, 0.0], [0.0, -0.07, 0.0]]), True)
    atoms = atoms * (1, 1, 2)
    atoms.symbols[1] = 'C'
    atoms.rattle(0.08, seed=4)
    return atoms


def _molecule() -> Atoms:
    atoms = molecule('CH3OH')
    atoms.rattle(0.05, seed=5)
    return atoms


# ---------------------------------------------------------------------- descriptor definition
def test_feature_dimension_matches_the_papers():
    # seeds/001: d_0 = 360 input neurons (5 radial functions); 7 radial functions give 910.
    assert n_gaussian_moment_features(5) == 360
    assert n_gaussian_moment_features(7) == 910
    assert GMNNHyperparameters(species=['H']).n_features == 910
    assert n_gaussian_moment_features(3, max_moment=0) == 3
    assert n_gaussian_moment_features(3, max_moment=1) == 3 + 6


def test_descriptor_is_rotation_invariant_for_every_moment_order():
    for max_moment in range(4):
        model = _model(max_moment=max_moment)
        atoms = _molecule()
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ Rotation.random(random_state=7).as_matrix().T
        g = model.descriptors(model.make_batch([atoms])).detach()
        g_rotated = model.descriptors(model.make_batch([rotated])).detach()
        assert g.shape[1] == model.hyperparameters.n_features
        assert g.abs().max() > 1e-3
        torch.testing.assert_close(g, g_rotated, rtol=1e-10, atol=1e-10)


def test_moments_and_contractions_against_a_direct_numpy_evaluation():
    """Eq. (2) and (12) by explicit loops for atom 0 of a molecule; every contraction of eq. (13) by np.einsum."""
    model = _model()
    atoms = _molecule()
    representation = model.representation
    hp = model.hyperparameters
    beta = representation.coefficients.detach().numpy()
    index = {symbol: k for k, symbol in enumerate(SPECIES)}
    centres = hp.r_min + (hp.cutoff - hp.r_min) / hp.n_basis * np.arange(hp.n_basis)
    gamma = hp.n_basis**2 / hp.cutoff**2
    psi = [np.zeros((hp.n_radial,) + (3,) * rank) for rank in range(4)]
    for j in range(1, len(atoms)):
        vector = atoms.positions[0] - atoms.positions[j]
        r = np.linalg.norm(vector)
        if r >= hp.cutoff:
            continue
        unit = vector / r
        gaussians = (2 * gamma / np.pi) ** 0.25 * np.exp(-gamma * (r - centres) ** 2)
        cut = 0.5 * (np.cos(np.pi * r / hp.cutoff) + 1)
        radial = beta[index[atoms.symbols[0]], index[atoms.symbols[j]]] @ gaussians / np.sqrt(hp.n_basis) * cut
        psi[0] += radial
        psi[1] += np.einsum('s,a->sa', radial, unit)
        psi[2] += np.einsum('s,a,b->sab', radial, unit, unit)
        psi[3] += np.einsum('s,a,b,c->sabc', radial, unit, unit, unit)
    batch = model.make_batch([atoms])
    vectors = batch.positions[batch.edge_i] - batch.positions[batch.edge_j]
    moments = representation.moments(vectors, batch.species, batch.edge_i, batch.edge_j)
    for rank in range(4):
        np.testing.assert_allclose(moments[rank][0].detach().numpy(), psi[rank], atol=1e-12)

    p0, p1, p2, p3 = psi
    full = {
        'L0': p0,
        'L1L1': np.einsum('sa,ta->st', p1, p1),
        'L2L2': np.einsum('sab,tab->st', p2, p2),
        'L3L3': np.einsum('sabc,tabc->st', p3, p3),
        'L2L2L2': np.einsum('sab,tbc,uca->stu', p2, p2, p2),
        'L1L1L2': np.einsum('sa,tb,uab->stu', p1, p1, p2),
        'L3L2L1': np.einsum('sabc,tab,uc->stu', p3, p2, p1),
        'L2L3L3': np.einsum('sab,tacd,ubcd->stu', p2, p3, p3),
    }
    # the permutational symmetries used to drop duplicate features hold
    for name in ('L1L1', 'L2L2', 'L3L3'):
        np.testing.assert_allclose(full[name], full[name].T, atol=1e-12)
    for axes in [(1, 0, 2), (0, 2, 1), (2, 1, 0)]:
        np.testing.assert_allclose(full['L2L2L2'], full['L2L2L2'].transpose(axes), atol=1e-12)
    np.testing.assert_allclose(full['L1L1L2'], full['L1L1L2'].transpose(1, 0, 2), atol=1e-12)
    np.testing.assert_allclose(full['L2L3L3'], full['L2L3L3'].transpose(0, 2, 1), atol=1e-12)
    r = hp.n_radial
    expected = np.concatenate(
        [
            p0,
            full['L1L1'][np.triu_indices(r)],
            full['L2L2'][np.triu_indices(r)],
            full['L3L3'][np.triu_indices(r)],
            [full['L2L2L2'][s, t, u] for s in range(r) for t in range(s, r) for u in range(t, r)],
            [full['L1L1L2'][s, t, u] for s in range(r) for t in range(s, r) for u in range(r)],
            full['L3L2L1'].reshape(-1),
            [full['L2L3L3'][s, t, u] for s in range(r) for t in range(r) for u in range(t, r)],
        ]
    )
    features = model.descriptors(batch)[0].detach().numpy()
    np.testing.assert_allclose(features, expected, atol=1e-12)


def test_activation_scale_normalises_silu():
    z = torch.linspace(-12.0, 12.0, 200001, dtype=torch.float64)
    density = torch.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    second_moment = torch.trapezoid((SILU_SCALE * torch.nn.functional.silu(z)) ** 2 * density, z)
    assert abs(second_moment.item() - 1.0) < 1e-8


def test_ntk_initialisation():
    model = GMNN(GMNNHyperparameters.small(['H'], hidden_widths=(64, 64)))
    for module in model.network:
        if hasattr(module, 'weight'):
            assert not module.bias.any()
            assert 0.6 < module.weight.std().item() < 1.4
    assert model.atomic_scale.tolist() == [1.0] and model.atomic_shift.tolist() == [0.0]
    groups = model.parameter_groups()
    assert set(groups) == set(PAPER_LEARNING_RATES)
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------- symmetries
def test_translation_rotation_permutation_invariance_of_a_molecule():
    model = _model()
    atoms = _molecule()
    reference = _evaluate(model, atoms)

    moved = atoms.copy()
    moved.positions += np.array([3.1, -2.0, 0.7])
    np.testing.assert_allclose(_evaluate(model, moved)['energy'], reference['energy'], rtol=1e-12)

    rotation = Rotation.random(random_state=11).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    out = _evaluate(model, rotated)
    np.testing.assert_allclose(out['energy'], reference['energy'], rtol=1e-12)
    np.testing.assert_allclose(out['forces'], reference['forces'] @ rotation.T, atol=1e-10)

    order = np.random.default_rng(3).permutation(len(atoms))
    permuted = atoms[order]
    out = _evaluate(model, permuted)
    np.testing.assert_allclose(out['energy'], reference['energy'], rtol=1e-12)
    np.testing.assert_allclose(out['forces'], reference['forces'][order], atol=1e-12)
    np.testing.assert_allclose(out['atomic_energies'], reference['atomic_energies'][order], atol=1e-12)


def test_rotation_and_translation_of_a_periodic_cell():
    model = _model()
    atoms = _periodic()
    reference = _evaluate(model, atoms, stress=True)
    rotation = Rotation.random(random_state=2).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=True)
    rotated.positions += 0.37  # translation, partly out of the cell
    out = _evaluate(model, rotated, stress=True)
    np.testing.assert_allclose(out['energy'], reference['energy'], rtol=1e-11)
    np.testing.assert_allclose(out['forces'], reference['forces'] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(out['stress'][0], rotation @ reference['stress'][0] @ rotation.T, atol=1e-10)
    wrapped = atoms.copy()
    wrapped.positions += atoms.cell[0] * 1.0 + atoms.cell[2] * -1.0  # whole lattice vectors: same crystal
    np.testing.assert_allclose(_evaluate(model, wrapped)['energy'], reference['energy'], rtol=1e-11)


# ---------------------------------------------------------------------- derivatives
@pytest.mark.parametrize('kind', ['molecule', 'periodic'])
def test_forces_are_minus_the_energy_gradient(kind):
    model = _model()
    atoms = _molecule() if kind == 'molecule' else _periodic()
    forces = _evaluate(model, atoms)['forces']
    assert np.abs(forces).max() > 1e-3
    step = 1e-5
    numerical = np.zeros_like(forces)
    for atom in range(len(atoms)):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += step
            minus.positions[atom, axis] -= step
            numerical[atom, axis] = -(_energy(model, plus) - _energy(model, minus)) / (2 * step)
    np.testing.assert_allclose(forces, numerical, atol=1e-7)


def test_stress_is_the_strain_derivative_of_the_energy():
    model = _model()
    atoms = _periodic()
    stress = _evaluate(model, atoms, stress=True)['stress'][0]
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    volume = atoms.get_volume()
    step = 1e-5
    numerical = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            strain = np.zeros((3, 3))
            strain[a, b] += 0.5
            strain[b, a] += 0.5
            energies = []
            for sign in (1.0, -1.0):
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell[:] @ (np.eye(3) + sign * step * strain), scale_atoms=True)
                energies.append(_energy(model, deformed))
            numerical[a, b] = (energies[0] - energies[1]) / (2 * step * volume)
    np.testing.assert_allclose(stress, numerical, atol=1e-9)


def test_training_mode_keeps_the_graph_of_forces_and_stress():
    model = _model()
    batch = model.make_batch([_periodic(), _molecule()])
    out = model(batch, compute_forces=True, compute_stress=True, training=True)
    loss = out['energy'].pow(2).sum() + out['forces'].pow(2).sum() + out['stress'].pow(2).sum()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert not out['stress'][1].any()  # molecule: no stress


def test_forces_also_under_no_grad():
    model = _model()
    atoms = _molecule()
    reference = _evaluate(model, atoms)['forces']
    with torch.no_grad():
        forces = model(model.make_batch([atoms]))['forces']
    np.testing.assert_allclose(forces.numpy(), reference, atol=1e-12)


# ---------------------------------------------------------------------- locality
def test_energy_is_smooth_at_the_cutoff_and_goes_to_isolated_atoms():
    model = _model()
    cutoff = model.cutoff
    isolated = sum(_energy(model, Atoms(symbol)) for symbol in ('C', 'O'))
    inside = Atoms('CO', positions=[[0, 0, 0], [0, 0, cutoff - 1e-4]])
    outside = Atoms('CO', positions=[[0, 0, 0], [0, 0, cutoff + 1e-4]])
    out_inside, out_outside = _evaluate(model, inside), _evaluate(model, outside)
    assert out_outside['energy'][0] == pytest.approx(isolated, abs=1e-12)
    assert out_inside['energy'][0] == pytest.approx(isolated, abs=1e-6)
    single = [_energy(model, Atoms(symbol)) for symbol in ('C', 'O')]
    np.testing.assert_allclose(out_inside['atomic_energies'], single, atol=1e-6)
    assert np.abs(out_inside['forces']).max() < 1e-5
    closer = Atoms('CO', positions=[[0, 0, 0], [0, 0, cutoff - 1.0]])
    assert abs(_energy(model, closer) - isolated) > 1e-4  # the pair does interact inside the cutoff


def test_energy_is_extensive():
    model = _model()
    atoms = _periodic()
    single = _evaluate(model, atoms, stress=True)
    double = _evaluate(model, atoms * (2, 1, 1), stress=True)
    assert double['energy'][0] == pytest.approx(2 * single['energy'][0], rel=1e-11)
    np.testing.assert_allclose(double['forces'], np.concatenate([single['forces']] * 2), atol=1e-10)
    np.testing.assert_allclose(double['stress'], single['stress'], atol=1e-11)


def test_batch_gives_the_same_results_as_single_structures():
    model = _model()
    slab = bulk('Si', 'diamond', a=5.43, cubic=True)
    slab.pbc = [True, True, False]
    slab.rattle(0.05, seed=8)
    structures = [_molecule(), _periodic(), slab, Atoms('H'), molecule('H2O')]
    batch = model.make_batch(structures)
    out = model(batch, compute_forces=True, compute_stress=True)
    start = 0
    for index, atoms in enumerate(structures):
        alone = _evaluate(model, atoms, stress=True)
        stop = start + len(atoms)
        assert out['energy'][index].item() == pytest.approx(alone['energy'][0], rel=1e-12)
        np.testing.assert_allclose(out['forces'][start:stop].detach().numpy(), alone['forces'], atol=1e-12)
        np.testing.assert_allclose(out['stress'][index].detach().numpy(), alone['stress'][0], atol=1e-12)
        start = stop
    assert out['stress'][1].abs().max() > 0 and not out['stress'][2].any()


def test_float32_default_matches_float64():
    model32, model64 = _model(dtype='float32'), _model(dtype='float64')
    assert model32.dtype == torch.float32 and GMNNHyperparameters(species=['H']).dtype == 'float32'
    atoms = _periodic()
    e32 = model32(model32.make_batch([atoms]))['energy'].item()
    e64 = model64(model64.make_batch([atoms]))['energy'].item()
    assert e32 == pytest.approx(e64, rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------------- shift/scale, calculator, persistence
def test_fit_shift_by_linear_regression():
    model = GMNN(GMNNHyperparameters.small(SPECIES, dtype='float64'))
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(40, 4)).astype(float)
    counts[:, 0] += 1
    per_element = np.array([-13.6, -1030.0, -2040.0, -7800.0])
    energies = counts @ per_element + rng.normal(0.0, 0.05, 40) * counts.sum(1)
    info = model.fit_shift(energies, counts)
    np.testing.assert_allclose(info['shift'], per_element, atol=0.5)
    weights = np.linalg.lstsq(counts, energies, rcond=None)[0]
    rmse = np.sqrt(np.mean(((energies - counts @ weights) / counts.sum(1)) ** 2))
    assert info['energy_scale'] == pytest.approx(rmse) and 0.01 < rmse < 0.1
    np.testing.assert_allclose((model.energy_scale * model.atomic_shift).detach().numpy(), weights)
    # degenerate fit (one structure): the scale falls back to 1 eV
    assert model.fit_shift([-5.0], [[1, 0, 0, 0]])['energy_scale'] == 1.0
    numbers, offsets = np.array([1, 1, 8, 14]), np.array([0, 3, 4])
    np.testing.assert_array_equal(count_species(numbers, offsets, SPECIES), [[2, 0, 1, 0], [0, 0, 0, 1]])


def test_calculator_matches_the_model():
    model = _model()
    atoms = _periodic()
    reference = _evaluate(model, atoms, stress=True)
    atoms.calc = GMNNCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(reference['energy'][0], rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(reference['energy'][0], rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), reference['forces'], atol=1e-12)
    s = reference['stress'][0]
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-12)
    mol = _molecule()
    mol.calc = GMNNCalculator(model)
    mol.get_forces()
    with pytest.raises(PropertyNotImplementedError):
        mol.get_stress()


def test_hyperparameters_round_trip_json():
    hp = GMNNHyperparameters(species=['H', 'O'], cutoff=6.0, hidden_widths=(16, 8), dtype='float64')
    data = json.loads(json.dumps(hp.to_dict()))
    assert data['model_kind'] == 'gmnn' and data['species'] == ['H', 'O'] and data['cutoff'] == 6.0
    assert (data['n_basis'], data['n_radial'], data['max_moment']) == (9, 7, 3)
    assert GMNNHyperparameters.from_dict(data) == hp
    with pytest.raises(ValueError, match='model kind'):
        GMNNHyperparameters.from_dict({**data, 'model_kind': 'mtp'})
    with pytest.raises(ValueError):
        GMNNHyperparameters(species=['H', 'H'])


def test_save_and_load_round_trip(tmp_path):
    model = _model(dtype='float32')
    model.fit_shift([-10.0, -21.0, -29.0], [[1, 0, 0, 1], [2, 1, 0, 1], [1, 1, 1, 1]])
    path = tmp_path / 'model.pt'
    model.save(path)
    loaded = GMNN.load(path)
    assert loaded.hyperparameters == model.hyperparameters
    batch = model.make_batch([_periodic(), _molecule()])
    torch.testing.assert_close(loaded(batch)['energy'], model(batch)['energy'], rtol=0, atol=0)
