"""The padded/batched Gaussian-moment kernels (``models/_moments.py``) against a direct edge-by-edge reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_alkit.models._moments import NeighbourLayout, cached_layout
from aiida_alkit.models.gmnn import CONTRACTIONS, GMNN, GMNNHyperparameters

SPECIES = ['H', 'C', 'O', 'Si']
TOLERANCE = {'rtol': 1e-10, 'atol': 1e-10}


def _random_molecule(seed: int, n_atoms: int = 9, box: float = 4.0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = []
    while len(positions) < n_atoms:
        candidate = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(candidate - p) > 0.8 for p in positions):
            positions.append(candidate)
    return Atoms(rng.choice(SPECIES, n_atoms), positions=positions)


def _random_cell(seed: int, n_atoms: int = 6) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(3.2, 4.2, 3)) + rng.uniform(-0.4, 0.4, (3, 3))
    atoms = Atoms(rng.choice(SPECIES, n_atoms), cell=cell, pbc=True)
    atoms.set_scaled_positions(rng.uniform(0.0, 1.0, (n_atoms, 3)))
    return atoms


def _model(max_moment: int = 3, species: list[str] | None = None, seed: int = 0) -> GMNN:
    hp = GMNNHyperparameters.small(species or SPECIES, dtype='float64', max_moment=max_moment, seed=seed)
    return GMNN(hp)


def _vectors(batch, positions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """r_ij = r_i - r_j - S @ cell, edge by edge (Å)."""
    shifts = batch.edge_shifts.to(positions.dtype)
    offsets = torch.stack([shifts[e] @ cells[batch.structure_index[batch.edge_i[e]]] for e in range(len(shifts))])
    return positions[batch.edge_i] - positions[batch.edge_j] - offsets.reshape(-1, 3)


def _reference_moments(model: GMNN, vectors, species, edge_i, edge_j) -> list[torch.Tensor]:
    """Eq. (2)/(11)-(12) edge by edge: outer products R ⊗ r̂ ⊗ ... summed with index_add_."""
    hp = model.hyperparameters
    rep = model.representation
    r = torch.sqrt((vectors**2).sum(-1))
    unit = vectors / r[:, None]
    centres = hp.r_min + (hp.cutoff - hp.r_min) / hp.n_basis * torch.arange(hp.n_basis, dtype=torch.float64)
    gamma = hp.n_basis**2 / hp.cutoff**2
    gaussians = (2 * gamma / math.pi) ** 0.25 * torch.exp(-gamma * (r[:, None] - centres) ** 2)
    cut = torch.where(r < hp.cutoff, 0.5 * (torch.cos(math.pi * r / hp.cutoff) + 1), torch.zeros_like(r))
    beta = rep.coefficients[species[edge_i], species[edge_j]]  # (E, R, n_basis)
    radial = torch.einsum('esk,ek->es', beta, gaussians) / math.sqrt(hp.n_basis) * cut[:, None]
    per_edge = [
        radial,
        torch.einsum('es,ea->esa', radial, unit),
        torch.einsum('es,ea,eb->esab', radial, unit, unit),
        torch.einsum('es,ea,eb,ec->esabc', radial, unit, unit, unit),
    ][: hp.max_moment + 1]
    n_atoms = len(species)
    return [torch.zeros((n_atoms, *t.shape[1:]), dtype=t.dtype).index_add_(0, edge_i, t) for t in per_edge]


def _reference_invariants(model: GMNN, moments: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (13): each full contraction by einsum, one radial-channel tuple per symmetry orbit."""
    n_radial = model.hyperparameters.n_radial
    parts = []
    for _, ranks, equation, symmetry in CONTRACTIONS:
        if max(ranks) > model.hyperparameters.max_moment:
            continue
        full = torch.einsum(equation, *[moments[rank] for rank in ranks])
        keep = {
            'none': lambda c: True,
            'pair01': lambda c: c[0] <= c[1],
            'pair12': lambda c: c[1] <= c[2],
            'all': lambda c: c[0] <= c[1] <= c[2],
        }[symmetry]
        for channels in itertools.product(range(n_radial), repeat=len(ranks)):
            if keep(channels):
                parts.append(full[(slice(None), *channels)])
    return torch.stack(parts, dim=1)


def _structures(kind: str) -> list[Atoms]:
    if kind == 'molecule':
        return [_random_molecule(1)]
    if kind == 'periodic':
        return [_random_cell(2)]
    # several structures in one batch, including an isolated atom (no edges)
    return [_random_molecule(3, n_atoms=5), _random_cell(4, n_atoms=4), Atoms('O'), _random_cell(5, n_atoms=3)]


@pytest.mark.parametrize('kind', ['molecule', 'periodic', 'batch'])
@pytest.mark.parametrize('max_moment', [3, 2, 1, 0])
def test_descriptors_and_position_gradients_match_the_reference(kind, max_moment):
    model = _model(max_moment)
    batch = model.make_batch(_structures(kind))
    assert batch.edge_i.shape[0] > 0
    weights = torch.randn(batch.n_atoms_total, model.representation.n_features, dtype=torch.float64)

    positions = batch.positions.clone().requires_grad_(True)
    features = model.descriptors(batch, positions)
    (grad,) = torch.autograd.grad((features * weights).sum(), positions)

    reference_positions = batch.positions.clone().requires_grad_(True)
    vectors = _vectors(batch, reference_positions, batch.cells)
    moments = _reference_moments(model, vectors, batch.species, batch.edge_i, batch.edge_j)
    reference = _reference_invariants(model, moments)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), reference_positions)

    assert features.shape == reference.shape == (batch.n_atoms_total, model.hyperparameters.n_features)
    assert reference.abs().max() > 1e-3 and reference_grad.abs().max() > 1e-3
    torch.testing.assert_close(features, reference, **TOLERANCE)
    torch.testing.assert_close(grad, reference_grad, **TOLERANCE)


@pytest.mark.parametrize('species', [SPECIES, ['Si']])
def test_moments_for_any_edge_order_match_the_reference(species):
    model = _model(species=species)
    atoms = _random_cell(6, n_atoms=7)
    atoms.symbols = species[0] if len(species) == 1 else atoms.symbols
    batch = model.make_batch([atoms])
    order = torch.randperm(batch.edge_i.shape[0], generator=torch.Generator().manual_seed(0))
    edge_i, edge_j = batch.edge_i[order], batch.edge_j[order]
    assert not bool((edge_i[1:] >= edge_i[:-1]).all())
    positions = batch.positions.clone().requires_grad_(True)
    vectors = _vectors(batch, positions, batch.cells)[order]
    moments = model.representation.moments(vectors, batch.species, edge_i, edge_j)
    reference = _reference_moments(model, vectors, batch.species, edge_i, edge_j)
    for rank, (value, expected) in enumerate(zip(moments, reference, strict=True)):
        assert value.shape == expected.shape == (len(atoms), model.hyperparameters.n_radial) + (3,) * rank
        torch.testing.assert_close(value, expected, **TOLERANCE)
    invariants = model.representation.invariants(moments)
    torch.testing.assert_close(invariants, _reference_invariants(model, reference), **TOLERANCE)
    weights = [torch.randn(m.shape, dtype=torch.float64) for m in moments]
    value = sum((m * w).sum() for m, w in zip(moments, weights, strict=True))
    grad = torch.autograd.grad(value, positions, retain_graph=True)[0]
    expected = sum((m * w).sum() for m, w in zip(reference, weights, strict=True))
    torch.testing.assert_close(grad, torch.autograd.grad(expected, positions)[0], **TOLERANCE)


def test_second_derivatives_for_force_training_match_the_reference():
    """d/dβ and d/dr of a force loss (double backward through the custom autograd functions)."""
    model = _model()
    batch = model.make_batch(_structures('batch'))
    weights = torch.randn(batch.n_atoms_total, model.representation.n_features, dtype=torch.float64)
    beta = model.representation.coefficients

    def force_loss_gradients(features_of):
        positions = batch.positions.clone().requires_grad_(True)
        energy = (features_of(positions).tanh() * weights).sum()
        (forces,) = torch.autograd.grad(energy, positions, create_graph=True)
        return torch.autograd.grad(forces.pow(2).sum(), [beta, positions])

    def reference(positions):
        vectors = _vectors(batch, positions, batch.cells)
        return _reference_invariants(
            model, _reference_moments(model, vectors, batch.species, batch.edge_i, batch.edge_j)
        )

    fast = force_loss_gradients(lambda positions: model.descriptors(batch, positions))
    expected = force_loss_gradients(reference)
    for value, target in zip(fast, expected, strict=True):
        assert target.abs().max() > 1e-6
        torch.testing.assert_close(value, target, **TOLERANCE)


def test_neighbour_layout_and_its_cache():
    edge_i = torch.tensor([2, 0, 2, 1, 0, 2])
    layout = NeighbourLayout.from_edges(edge_i, n_atoms=4)
    assert layout.width == 3
    # slots row-major by atom, edges of one atom in their original order, empty slots marked with E = 6
    assert layout.index.tolist() == [1, 4, 6, 3, 6, 6, 0, 2, 5, 6, 6, 6]
    assert torch.equal(layout.index[layout.inverse], torch.arange(6))
    assert cached_layout(edge_i, 4) is cached_layout(edge_i, 4)
    first = cached_layout(edge_i, 4)
    edge_i[0] = 3  # modified in place: the layout is rebuilt
    assert cached_layout(edge_i, 4) is not first
    assert cached_layout(edge_i, 4).index.tolist() == [1, 4, 3, 6, 2, 5, 0, 6]
    empty = NeighbourLayout.from_edges(torch.zeros(0, dtype=torch.int64), n_atoms=2)
    assert empty.width == 1 and empty.index.tolist() == [0, 0]


def test_float32_model_matches_float64():
    structures = [_random_cell(7, n_atoms=8)]
    model64 = _model()
    model32 = GMNN(GMNNHyperparameters.small(SPECIES, dtype='float32'))
    out32 = model32(model32.make_batch(structures))
    out64 = model64(model64.make_batch(structures))
    assert out32['forces'].dtype == torch.float32
    np.testing.assert_allclose(out32['energy'].detach(), out64['energy'].detach(), rtol=1e-5)
    np.testing.assert_allclose(out32['forces'].detach(), out64['forces'].detach(), atol=1e-4)
