"""Gradient features (seeds/001 eq. 11-19, seeds/003 eq. 2, 19-21) checked against exact autograd gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters, NTKLinear
from aiida_alkit.uncertainty.features import GradientFeatureMap, compute_features


def make_structures(count: int = 4):
    from ase.build import bulk

    structures = []
    for index in range(count):
        atoms = bulk('Cu', 'fcc', a=3.5 + 0.15 * index, cubic=True) * (2, 1, 1)
        atoms.rattle(0.15, seed=index)
        symbols = atoms.get_chemical_symbols()
        symbols[index % len(symbols)] = 'Au'
        atoms.set_chemical_symbols(symbols)
        structures.append(atoms)
    return structures


@pytest.fixture
def model():
    """Tiny float64 model with non-trivial output scale c and per-species σ_Z (eq. 4)."""
    model = GMNN(GMNNHyperparameters.small(['Cu', 'Au'], hidden_widths=(8, 6), dtype='float64', seed=3))
    with torch.no_grad():
        model.energy_scale.fill_(0.7)
        model.atomic_scale.copy_(torch.tensor([1.3, 0.6], dtype=torch.float64))
        for layer in model.network:
            if hasattr(layer, 'bias'):
                layer.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
    return model


@pytest.fixture
def structures():
    return make_structures()


def exact_gradients(model, batch, parameters, atomic: bool = False) -> torch.Tensor:
    """Rows: flattened exact gradients of E_S (or of every E_i) with respect to ``parameters`` (autograd)."""
    out = model(batch, compute_forces=False)
    targets = out['atomic_energies'] if atomic else out['energy']
    rows = []
    for value in targets:
        grads = torch.autograd.grad(value, parameters, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_last_layer_features_are_exact_gradients(model, structures):
    """FEAT(LL) (eq. 14): inner products equal those of the exact output-layer gradients, per structure and atom."""
    batch = model.make_batch(structures)
    last = model.network[-1]
    features = compute_features(model, batch, kind='last_layer')
    assert features.dim == last.d_in + 1 == 7
    exact = exact_gradients(model, batch, [last.weight, last.bias]).numpy()
    np.testing.assert_allclose(features.structure @ features.structure.T, exact @ exact.T, rtol=1e-10)
    np.testing.assert_allclose(features.structure, exact, rtol=1e-10, atol=1e-12)  # same coordinates even
    exact_atoms = exact_gradients(model, batch, [last.weight, last.bias], atomic=True).numpy()
    np.testing.assert_allclose(features.atomic @ features.atomic.T, exact_atoms @ exact_atoms.T, rtol=1e-10)


def test_layer_factors_have_the_product_structure(model, structures):
    """eq. (13): per layer, g_i ⊗ x̃_i equals the exact gradient of E_i with respect to (W, b)."""
    batch = model.make_batch(structures[:2])
    fmap = GradientFeatureMap(model, kind='sketch', dim=4)
    factors = fmap.layer_factors(batch)
    layers = [module for module in model.network if isinstance(module, NTKLinear)]
    assert len(factors) == len(layers) == len(fmap.layers) == 3
    parameters = [p for layer in layers for p in (layer.weight, layer.bias)]
    exact = exact_gradients(model, batch, parameters, atomic=True)
    blocks = []
    for g, x_tilde in factors:
        outer = g[:, :, None] * x_tilde[:, None, :]  # (N, d_out, d_in + 1)
        blocks.append(outer[:, :, :-1].reshape(len(g), -1))  # ∂E_i/∂W
        blocks.append(outer[:, :, -1])  # ∂E_i/∂b
    torch.testing.assert_close(torch.cat(blocks, dim=1), exact, rtol=1e-10, atol=1e-12)


def test_sketch_is_unbiased_for_the_full_gradient_kernel(model, structures):
    """FEAT(RP) (eq. 16-19): averaged over sketch seeds, φ^rp(S)·φ^rp(S') -> k_grad(S, S') of all network layers."""
    batch = model.make_batch(structures)
    exact = exact_gradients(model, batch, list(model.network.parameters()))
    kernel = (exact @ exact.T).numpy()
    estimates = []
    for seed in range(50):
        features = compute_features(model, batch, kind='sketch', dim=192, seed=seed, per_atom=False)
        estimates.append(features.structure @ features.structure.T)
    estimates = np.asarray(estimates)
    mean = estimates.mean(axis=0)
    standard_error = estimates.std(axis=0) / np.sqrt(len(estimates))
    assert np.all(np.abs(mean - kernel) < 5.0 * standard_error + 1e-12)
    np.testing.assert_allclose(mean, kernel, rtol=0.05)
    # one sketch of the default dimension is already a fair approximation
    single = compute_features(model, batch, kind='sketch', seed=7, per_atom=False).structure
    assert single.shape == (len(structures), 512)
    np.testing.assert_allclose(single @ single.T, kernel, rtol=0.3)


def test_sketched_atom_features_are_unbiased(model, structures):
    """The sketch of atomic features (seeds/003 eq. 20) estimates the atomic gradient kernel."""
    batch = model.make_batch(structures[:1])
    exact = exact_gradients(model, batch, list(model.network.parameters()), atomic=True)
    kernel = (exact @ exact.T).numpy()
    fmap_kernels = []
    for seed in range(40):
        atomic = GradientFeatureMap(model, 'sketch', dim=192, seed=seed).atomic_features(batch).numpy()
        fmap_kernels.append(atomic @ atomic.T)
    fmap_kernels = np.asarray(fmap_kernels)
    mean = fmap_kernels.mean(axis=0)
    standard_error = fmap_kernels.std(axis=0) / np.sqrt(len(fmap_kernels))
    assert np.all(np.abs(mean - kernel) < 5.0 * standard_error + 1e-12)
    assert np.abs(mean - kernel).max() < 0.1 * np.abs(kernel).max()


def test_structure_features_sums_means_and_batching(model, structures):
    """Structure features are sums (eq. 11/19) or means (seeds/003 eq. 2) of the atomic ones, batching-independent."""
    features = compute_features(model, structures, kind='sketch', dim=16, seed=1, batch_size=3)
    assert features.atomic.shape == (sum(len(a) for a in structures), 16)
    np.testing.assert_array_equal(features.n_atoms, [len(a) for a in structures])
    sums = np.zeros_like(features.structure)
    np.add.at(sums, features.structure_index, features.atomic)
    np.testing.assert_allclose(features.structure, sums, rtol=1e-12)
    means = compute_features(model, structures, dim=16, seed=1, per_atom=False, normalise_per_atom=True)
    assert means.atomic is None and means.normalised_per_atom
    np.testing.assert_allclose(means.structure, sums / features.n_atoms[:, None], rtol=1e-12)
    # one batch per structure, a ready Batch and a ConfigurationArrays give the same features
    from aiida_alkit.io.arrays import ConfigurationArrays

    single = compute_features(model, structures, dim=16, seed=1, batch_size=1)
    together = compute_features(model, model.make_batch(structures), dim=16, seed=1)
    arrays = compute_features(model, ConfigurationArrays.from_atoms(structures, validate=False), dim=16, seed=1)
    for other in (single, together, arrays):
        np.testing.assert_allclose(other.structure, features.structure, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(other.atomic, features.atomic, rtol=1e-10, atol=1e-12)


def test_sketch_depends_only_on_the_seed(model, structures):
    first = compute_features(model, structures, dim=8, seed=4).structure
    again = compute_features(model, structures, dim=8, seed=4).structure
    other = compute_features(model, structures, dim=8, seed=5).structure
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    tensors = compute_features(model, structures, dim=8, seed=4, as_numpy=False)
    assert isinstance(tensors.structure, torch.Tensor)


def test_float32_default_dtype_and_errors(structures):
    model = GMNN(GMNNHyperparameters.small(['Cu', 'Au']))
    features = compute_features(model, structures[:2], dim=64)
    assert features.structure.dtype == np.float32 and features.structure.shape == (2, 64)
    assert np.isfinite(features.atomic).all()
    with pytest.raises(ValueError, match='kind'):
        GradientFeatureMap(model, kind='full')
    with pytest.raises(ValueError, match='dim'):
        GradientFeatureMap(model, dim=0)
