"""MACE behind the potential interface: physics (invariance, forces and stress by finite differences), the readout
factors the uncertainty methods use, persistence (weights_only, also after ``import mace``), MACE's own format,
committees and training. Tiny models (8 channels, 2 interactions) on Cu/Ni cells: seconds on one core."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_alkit.exploration.terms import differentiable_atomic_features
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import ParameterError
from aiida_alkit.jobs.train_parameters import TrainParameters
from aiida_alkit.models.committee import Committee
from aiida_alkit.models.mace import MACEHyperparameters, MACEPotential
from aiida_alkit.models.potential import build_potential, load_potential
from aiida_alkit.models.serialization import PotentialFileError, load_potential_file
from aiida_alkit.models.training import TrainingConfig, evaluate_errors, train
from aiida_alkit.uncertainty.features import GradientFeatureMap, compute_features

pytestmark = pytest.mark.usefixtures('one_thread')


def _model(seed: int = 0, **overrides) -> MACEPotential:
    model = MACEPotential(MACEHyperparameters.small(['Cu', 'Ni'], avg_num_neighbors=12.0, seed=seed, **overrides))
    with torch.no_grad():  # a non-trivial energy shift and scale, as after fit_shift
        model.atomic_shift.copy_(torch.tensor([-0.3, 0.2], dtype=torch.float64))
        model.energy_scale.fill_(0.7)
    return model


def test_model_is_built_from_fx_modules_and_leaves_e3nn_settings_alone():
    """The e3nn modules are built as FX graph modules (not TorchScript: faster to build, the same numbers), and
    e3nn's process-wide setting is what it was before, also when it was changed by the user."""
    import e3nn
    from torch import fx

    before = e3nn.get_optimization_defaults()
    model = _model()
    assert e3nn.get_optimization_defaults() == before and before['jit_script_fx']
    generated = [m for m in model.modules() if hasattr(m, '__codegen__')]
    assert generated
    for module in generated:
        for name in module.__codegen__:
            assert isinstance(getattr(module, name), fx.GraphModule), (type(module).__name__, name)
            assert not isinstance(getattr(module, name), torch.jit.ScriptModule)
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        _model()
        assert e3nn.get_optimization_defaults()['jit_script_fx'] is False
    finally:
        e3nn.set_optimization_defaults(**before)


def _alloy(seed: int = 0, rattle: float = 0.08):
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True) * (2, 1, 1)
    atoms.numbers[[1, 4, 6]] = 28
    atoms.rattle(rattle, seed=seed)
    return atoms


def _labelled(n: int, seed: int = 0) -> ConfigurationArrays:
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n):
        atoms = _alloy(seed=int(rng.integers(1 << 30)))
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        structures.append(atoms)
        del k
    return ConfigurationArrays.from_atoms(structures)


def _energy(model, atoms) -> float:
    return float(model(model.make_batch([atoms]), compute_forces=False)['energy'][0])


def test_energy_is_invariant_under_rotation_translation_and_permutation():
    model = _model()
    atoms = _alloy()
    reference = _energy(model, atoms)
    moved = atoms.copy()
    moved.rotate(37, (1, 2, 3), rotate_cell=True)
    moved.translate((0.3, -1.1, 2.0))
    assert _energy(model, moved) == pytest.approx(reference, rel=1e-10)
    order = np.random.default_rng(0).permutation(len(atoms))
    assert _energy(model, atoms[order]) == pytest.approx(reference, rel=1e-10)


def test_forces_and_stress_are_derivatives_of_the_energy():
    model = _model()
    atoms = _alloy()
    out = model(model.make_batch([atoms]), compute_forces=True, compute_stress=True)
    step = 1e-5
    for atom, axis in ((0, 0), (3, 2), (6, 1)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        numeric = -(_energy(model, plus) - _energy(model, minus)) / (2 * step)
        assert float(out['forces'][atom, axis]) == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    volume = atoms.get_volume()
    for i, j in ((0, 0), (1, 2)):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = step
        plus, minus = atoms.copy(), atoms.copy()
        plus.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
        minus.set_cell(atoms.cell @ (np.eye(3) - strain), scale_atoms=True)
        numeric = (_energy(model, plus) - _energy(model, minus)) / (2 * step * (2 if i != j else 1)) / volume
        assert float(out['stress'][0, i, j]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_readout_factors_are_the_exact_readout_gradients():
    """g_i ⊗ x̃_i per readout layer equals autograd's gradient of Σ_i E_i with respect to that layer's weights."""
    model = _model()
    batch = model.make_batch([_alloy(), _alloy(seed=1)])
    descriptors = model.descriptors(batch).detach()
    factors = model.readout_factors(descriptors, batch.species)
    layout = model.readout_layout()
    assert [layer.output for layer in layout] == [True, False, True]  # linear readout, MLP readout's two layers
    linears = [linear for linear, _ in model._readout_layers]
    exact = torch.autograd.grad(model.atomic_energies(descriptors, batch.species).sum(), [x.weight for x in linears])
    for (x_tilde, g), gradient, layer in zip(factors, exact, layout, strict=True):
        assert x_tilde.shape[1] == layer.d_in and g.shape[1] == layer.d_out
        torch.testing.assert_close(torch.einsum('ni,no->io', x_tilde, g).reshape(-1), gradient, rtol=1e-10, atol=1e-12)


def test_gradient_features_of_mace():
    """Last-layer features: the gradient w.r.t. every output-layer weight; the in-graph features (bias, stop) equal
    the batch features, and the sketch is reproducible by its seed."""
    model = _model()
    structures = [_alloy(seed=k) for k in range(3)]
    last = compute_features(model, structures, kind='last_layer')
    assert last.dim == sum(layer.d_in for layer in model.readout_layout() if layer.output)
    batch = model.make_batch(structures)
    descriptors = model.descriptors(batch).detach()
    linears = [linear for linear, output in model._readout_layers if output]
    exact = torch.autograd.grad(model.atomic_energies(descriptors, batch.species).sum(), [x.weight for x in linears])
    np.testing.assert_allclose(last.structure.sum(axis=0), torch.cat(exact).numpy(), rtol=1e-10, atol=1e-12)
    sketch = compute_features(model, structures, kind='sketch', dim=64, seed=3)
    again = compute_features(model, structures, kind='sketch', dim=64, seed=3)
    np.testing.assert_array_equal(sketch.structure, again.structure)
    fmap = GradientFeatureMap(model, kind='sketch', dim=64, seed=3)
    with torch.enable_grad():
        positions = batch.positions.detach().clone().requires_grad_(True)
        atomic = differentiable_atomic_features(fmap, model.descriptors(batch, positions), batch.species)
        (gradient,) = torch.autograd.grad(atomic.square().sum(), positions)
    np.testing.assert_allclose(atomic.detach().numpy(), sketch.atomic, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(gradient).all() and gradient.abs().max() > 0  # a bias force exists


def test_energies_and_readout_factors_in_one_pass():
    """The one-pass method gives the separate methods' energies and factors, and a gradient-feature bias on a MACE
    model runs its readouts once per evaluation."""
    from aiida_alkit.exploration.bias import BiasedPotential
    from aiida_alkit.exploration.dynamics import WalkerSystem
    from aiida_alkit.exploration.terms import GradientFeatureUncertainty

    model = _model()
    structures = [_alloy(seed=k) for k in range(3)]
    batch = model.make_batch(structures)
    with torch.enable_grad():
        positions = batch.positions.detach().clone().requires_grad_(True)
        descriptors = model.descriptors(batch, positions)
        atomic, factors = model.atomic_energies_and_readout_factors(descriptors, batch.species)
        torch.testing.assert_close(atomic, model.atomic_energies(descriptors, batch.species), rtol=0, atol=0)
        for (x, g), (x_ref, g_ref) in zip(factors, model.readout_factors(descriptors, batch.species), strict=True):
            torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
            torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
        assert atomic.requires_grad and all(x.requires_grad for x, _ in factors)
    term = GradientFeatureUncertainty.from_data(model, structures, dim=32)
    potential = BiasedPotential(model, term, strength=0.3)
    passes = []
    handle = model.mace.readouts[0].register_forward_hook(lambda *args: passes.append(1))
    try:
        result = potential.evaluate(WalkerSystem.from_atoms(structures))
    finally:
        handle.remove()
    assert len(passes) == 1
    np.testing.assert_allclose(result.uncertainty, term.evaluate(structures)[0], rtol=1e-10)
    assert np.abs(result.bias_forces).max() > 0


def test_save_load_round_trip_with_weights_only(tmp_path):
    model = _model(seed=2)
    path = tmp_path / 'mace.pt'
    model.save(path, extras={'epochs_done': 3})
    loaded = load_potential(path)
    assert isinstance(loaded, MACEPotential) and loaded.hyperparameters == model.hyperparameters
    atoms = _alloy()
    assert _energy(loaded, atoms) == _energy(model, atoms)
    assert load_potential_file(path).hyperparameters['model_kind'] == 'mace'
    with pytest.raises(PotentialFileError, match="kind 'mace', not 'gmnn'"):
        from aiida_alkit.models.gmnn import GMNN

        GMNN.load(path)


class _Payload:
    def __reduce__(self):
        return (print, ('pickle code ran',))


def test_a_pickle_bomb_is_refused_after_import_mace(tmp_path, capsys, monkeypatch, mace_calculator_process):
    """mace's calculators set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process; our loads pass weights_only=True
    explicitly, so a pickle still cannot run code. Building a model leaves the variable as it was."""
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    _model()
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    import mace.calculators  # noqa: F401

    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # what that import does the first time in a process
    path = tmp_path / 'evil.pt'
    torch.save({'format': 'aiida-alkit-potential', 'evil': _Payload()}, path)
    with pytest.raises(PotentialFileError):
        load_potential(path)
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(PotentialFileError):
        load_potential(path)
    assert 'pickle code ran' not in capsys.readouterr().out


@pytest.fixture
def mace_calculator_process(monkeypatch):
    """What importing mace.calculators does to a process (the variable set, the default dtype changed by the
    calculator), undone after the test."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def test_export_is_loaded_by_mace_s_own_calculator(tmp_path, mace_calculator_process):
    """The MACE-format export (E0 = c μ_Z, scale c folded in) gives MACE's MACECalculator our energies, forces and
    stress."""
    from mace.calculators import MACECalculator

    model = _model(seed=4)
    path = tmp_path / 'exported.model'
    model.export_mace(path)
    atoms = _alloy(seed=5)
    ours = model(model.make_batch([atoms]), compute_forces=True, compute_stress=True)
    atoms.calc = MACECalculator(model_paths=str(path), device='cpu', default_dtype='float64')
    assert atoms.get_potential_energy() == pytest.approx(float(ours['energy'][0]), rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ours['forces'].detach().numpy(), rtol=1e-8, atol=1e-10)
    from ase.stress import full_3x3_to_voigt_6_stress

    expected = full_3x3_to_voigt_6_stress(ours['stress'][0].detach().numpy())
    np.testing.assert_allclose(atoms.get_stress(), expected, rtol=1e-7, atol=1e-10)


def test_mace_committee_round_trip(tmp_path):
    hyperparameters = MACEHyperparameters.small(['Cu', 'Ni'], avg_num_neighbors=12.0)
    committee = Committee(hyperparameters, n_members=2)
    assert committee.kind == 'mace-committee'
    path = tmp_path / 'committee.pt'
    committee.save(path)
    loaded = load_potential(path)
    assert isinstance(loaded, Committee) and loaded.kind == 'mace-committee'
    batch = committee.make_batch([_alloy()])
    before, after = committee.predict(batch), loaded.predict(batch)
    torch.testing.assert_close(before['energy'], after['energy'])
    assert float(before['max_force_deviation'][0]) > 0  # members differ by their seed


def test_training_a_mace_model_lowers_its_errors():
    data = _labelled(12)
    hyperparameters = MACEPotential.complete_hyperparameters(MACEHyperparameters.small(['Cu', 'Ni']), data)
    assert 8 < hyperparameters.avg_num_neighbors < 30  # fcc within 4 Å: 12 first + 6 second neighbours
    model = build_potential(hyperparameters)
    config = TrainingConfig(epochs=12, batch_size=4, valid_fraction=0.0, lr_final_fraction=0.1)
    result = train(model, data, None, config)
    losses = [entry['train_loss'] for entry in result.history[1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert evaluate_errors(model, data)['forces_rmse'] < result.history[1]['train_forces_rmse']
    assert result.history[1]['lr'] <= MACEPotential.default_learning_rates['nn']


@pytest.mark.parametrize(
    ('parameters', 'message'),
    [
        ({'model': {'kind': 'schnet'}}, "unknown model kind 'schnet'"),
        ({'model': {'kind': 'mace', 'channels': 0}}, 'channels must be a positive integer'),
        ({'model': {'kind': 'mace', 'hidden_widths': [8]}}, "unknown model parameters \\['hidden_widths'\\]"),
        ({'model': {'kind': 'mace', 'max_L': 7}}, 'max_L must be one of'),
        ({'model': {'kind': 'mace'}, 'optimizer': 'rlekf'}, 'RLEKF .* GM-NN only'),
        ({'model': {'kind': 'mace-committee'}}, 'committee_size'),
    ],
)
def test_bad_mace_parameters_are_refused_naming_the_problem(parameters, message):
    with pytest.raises(ParameterError, match=message):
        TrainParameters.from_dict(parameters)


def test_mace_parameters_are_accepted():
    settings = TrainParameters.from_dict({'model': {'kind': 'mace', 'channels': 8}, 'committee_size': 2})
    assert settings.model_kind == 'mace'
    assert settings.hyperparameters(['Cu']).channels == 8


def test_our_ase_calculator_takes_a_mace_model():
    from aiida_alkit.models.calculator import PotentialCalculator

    model = _model()
    atoms = _alloy()
    atoms.calc = PotentialCalculator(model)
    out = model(model.make_batch([atoms]), compute_forces=True)
    assert atoms.get_potential_energy() == pytest.approx(float(out['energy'][0]), rel=1e-12)
    assert atoms.get_stress().shape == (6,)
    np.testing.assert_allclose(atoms.get_forces(), out['forces'].detach().numpy(), rtol=1e-10)
