"""Gradient features of a model's atomic energies with respect to its readout parameters (any model kind).

The gradient kernel of ``seeds/001`` (Sec. 3.1.1, eq. 8-13) uses the feature map ``φ_grad(S) = ∇_θ E(S, θ)``, a sum
over atoms of ``φ_grad(G_i) = ∇_θ E_i(G_i, θ)`` (eq. 11). For the fully connected layers in NTK parametrisation
(eq. 12), ``z^(l+1) = W̃^(l+1) x̃^(l)`` with ``x̃^(l) = (x^(l) / sqrt(d_l), 0.1)``, every layer's block of the atomic
gradient is an outer product (eq. 13)::

    ∂E_i / ∂W̃^(l) = g_i^(l) ⊗ x̃_i^(l-1),    g_i^(l) = ∂E_i / ∂z_i^(l)  (the back-propagated signal)

(``g_i^(L) = c σ_Z`` for the output layer, eq. 4). Only these factors are ever formed, never the full per-parameter
gradients. Two feature maps are provided:

* ``kind='last_layer'`` -- FEAT(LL) (``seeds/001`` Sec. 3.1.2, eq. 14): ``φ_ll(G_i) = g_i^(L) x̃_i^(L-1)``, exact,
  dimension ``d_{L-1} + 1`` (the gradient with respect to the output layer's weights and bias);
* ``kind='sketch'`` -- FEAT(RP) / sketched gradient features (``seeds/001`` eq. 15-19, ``seeds/003`` eq. 19-21):
  the tensor sketch ``φ^rp(G_i) = p^{-1/2} sum_l (U_out^(l) g_i^(l)) ⊙ (U_in^(l-1) x̃_i^(l-1))`` with standard normal
  matrices ``U`` drawn once from ``seed`` (the same for every structure), summed over all layers. Each sketched
  coordinate is an unbiased estimate of the gradient kernel, so with the factor ``p^{-1/2}`` (``p = dim``, default 512)
  ``E[φ^rp(S)·φ^rp(S')] = k_grad(S, S')`` (the papers omit this constant factor; it does not change any selection
  or the relative uncertainties). The output layer has a one-dimensional ``g``; projecting it would only multiply by a
  random ``N(0, 1)`` number per coordinate, so ``U_out`` is left out there (still unbiased, lower variance).

Structure features are sums of atomic features (eq. 11/19) or, with ``normalise_per_atom=True``, their mean, i.e. the
gradient of the energy per atom (``seeds/003`` eq. 2, 21). Only the parameters of the fully connected network are
included (``seeds/003``: "gradients ... with respect to the parameters of the fully connected layers").

Units: features are eV per unit of the network parameters (dimensionless weights), i.e. eV; per-atom-normalised
structure features are eV/atom. No AiiDA import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aiida_alkit.models.batching import Batch, batch_from_configurations
from aiida_alkit.models.potential import AtomicPotential

__all__ = ['FEATURE_KINDS', 'GradientFeatureMap', 'GradientFeatures', 'compute_features', 'iterate_batches']

#: Supported feature maps.
FEATURE_KINDS = ('sketch', 'last_layer')


@dataclass
class GradientFeatures:
    """Gradient features of a set of structures.

    :param structure: (B, d) structure features, sums (eq. 11/19) or per-atom means (``seeds/003`` eq. 2) of the
        atomic features, eV (eV/atom when normalised).
    :param n_atoms: (B,) int64 atoms per structure.
    :param atomic: (N, d) atomic features φ(G_i), eV, or ``None`` when not kept.
    :param kind: ``'sketch'`` or ``'last_layer'``.
    :param normalised_per_atom: whether ``structure`` holds means instead of sums.
    """

    structure: np.ndarray | torch.Tensor
    n_atoms: np.ndarray
    atomic: np.ndarray | torch.Tensor | None = None
    kind: str = 'sketch'
    normalised_per_atom: bool = False

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.structure.shape[1])

    @property
    def n_structures(self) -> int:
        return int(self.structure.shape[0])

    @property
    def structure_index(self) -> np.ndarray:
        """(N,) structure of every atom."""
        return np.repeat(np.arange(len(self.n_atoms)), self.n_atoms)


class GradientFeatureMap:
    """A fixed gradient feature map of one model: last-layer (exact) or tensor-sketched (seeded random matrices).

    Works for any model kind through its readout factors
    (:meth:`~aiida_alkit.models.potential.AtomicPotential.readout_factors`): per linear layer of the readout,
    ``∂E_i/∂W = g_i ⊗ x̃_i``.

    :param model: the model (its readout's linear layers are differentiated; its representation is held fixed).
    :param kind: ``'sketch'`` (FEAT(RP), eq. 19 of ``seeds/001``) or ``'last_layer'`` (FEAT(LL), eq. 14).
    :param dim: number of random projections p for the sketch (ignored for ``'last_layer'``, whose dimension is
        the number of weights of the output layers, ``d_{L-1} + 1`` for GM-NN).
    :param seed: seed of the random matrices; the same seed gives the same map for every call and structure.
    """

    def __init__(self, model: AtomicPotential, kind: str = 'sketch', dim: int = 512, seed: int = 0) -> None:
        if kind not in FEATURE_KINDS:
            raise ValueError(f'kind must be one of {FEATURE_KINDS}, got {kind!r}')
        self.model = model
        self.kind = kind
        self.seed = int(seed)
        self.layers = model.readout_layout()
        if kind == 'last_layer':
            self.dim = sum(layer.d_in * layer.d_out for layer in self.layers if layer.output)
            self._projections: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            return
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f'dim must be a positive integer, got {dim!r}')
        self.dim = int(dim)
        generator = torch.Generator().manual_seed(self.seed)
        scale = 1.0 / math.sqrt(self.dim)  # makes the sketched kernel an unbiased estimate of k_grad
        self._projections = []
        for layer in self.layers:
            u_in = torch.randn(layer.d_in, self.dim, generator=generator, dtype=torch.float64)
            u_out = (
                torch.randn(layer.d_out, self.dim, generator=generator, dtype=torch.float64)
                if layer.d_out > 1
                else None
            )
            self._projections.append((u_in * scale, u_out))  # the factor p^{-1/2} is folded into U_in
        self._cast(model.dtype, model.device)

    def _cast(self, dtype: torch.dtype, device: torch.device) -> None:
        self._projections = [
            (w.to(device=device, dtype=dtype), None if u is None else u.to(device, dtype)) for w, u in self._projections
        ]

    def layer_factors(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer factors ``(g_i^(l), x̃_i^(l-1))`` of eq. (13) for every atom: [(N, d_out), (N, d_in)].

        ``g`` is ∂E_i/∂z_i^(l) (eV), ``x̃`` the layer input as the layer normalises it (GM-NN: ``(x / sqrt(d), 0.1)``);
        ``g ⊗ x̃`` is the exact gradient of E_i with respect to the layer's weights. Used by tests.
        """
        with torch.no_grad():
            descriptors = self.model.descriptors(batch)
        factors = self.model.readout_factors(descriptors, batch.species)
        return [(g.detach(), x.detach()) for x, g in factors]

    @property
    def output_only(self) -> bool:
        """Whether the map reads the output layers' factors only (FEAT(LL)) or every readout layer's (sketch)."""
        return self.kind == 'last_layer'

    def atomic_features_of(
        self,
        descriptors: torch.Tensor,
        species: torch.Tensor,
        factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Atomic features φ(h_i) (N, d), eV, from descriptors (N, d_0); differentiable with respect to them:
        eq. (14) per atom (last layer) or eq. (19)/(20) before the atom sum (sketch).

        :param factors: the model's readout factors of these descriptors (``readout_factors(descriptors, species,
            output_only=self.output_only)``) when the caller has them already; computed here otherwise.
        """
        if factors is None:
            factors = self.model.readout_factors(descriptors, species, output_only=self.output_only)
        if self.kind == 'last_layer':
            return torch.cat([(g[:, :, None] * x[:, None, :]).reshape(len(x), -1) for x, g in factors], dim=1)
        reference = self._projections[0][0]
        if reference.dtype != descriptors.dtype or reference.device != descriptors.device:
            self._cast(descriptors.dtype, descriptors.device)
        result: torch.Tensor | None = None
        for (weight_in, u_out), (x, g) in zip(self._projections, factors, strict=True):
            term = (x @ weight_in) * (g if u_out is None else g @ u_out)  # (U_out g) ⊙ (U_in x̃), eq. (17)/(20)
            result = term if result is None else result + term
        assert result is not None
        return result

    def atomic_features(self, batch: Batch) -> torch.Tensor:
        """Atomic features φ(h_i) (N, d), eV, of a batch (the representation held fixed, nothing differentiable)."""
        with torch.no_grad():  # a kind that needs autograd for its signals enables it inside readout_factors
            descriptors = self.model.descriptors(batch)
            return self.atomic_features_of(descriptors, batch.species).detach()

    def __call__(self, batch: Batch, normalise_per_atom: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(atomic (N, d), structure (B, d))`` features of a batch; structure = sum (or mean) over its atoms."""
        atomic = self.atomic_features(batch)
        structure = torch.zeros((batch.n_structures, atomic.shape[1]), dtype=atomic.dtype, device=atomic.device)
        structure.index_add_(0, batch.structure_index.to(atomic.device), atomic)
        if normalise_per_atom:
            structure /= batch.n_atoms.to(device=atomic.device, dtype=atomic.dtype)[:, None]
        return atomic, structure


def iterate_batches(model: AtomicPotential, data: Any, batch_size: int = 32) -> Iterator[Batch]:
    """Batches of ``data`` for ``model``: a :class:`Batch`, an iterable of batches, a ``ConfigurationArrays``, a
    ``GraphDataset`` (``models.training``) or a sequence of ASE ``Atoms`` (``batch_size`` structures per batch)."""
    if isinstance(data, Batch):
        yield data
        return
    if hasattr(data, 'offsets') and hasattr(data, 'numbers'):  # ConfigurationArrays
        n_configs = len(data.offsets) - 1
        for start in range(0, n_configs, batch_size):
            indices = np.arange(start, min(start + batch_size, n_configs))
            yield batch_from_configurations(
                data, model.species, model.cutoff, indices=indices, device=model.device, dtype=model.dtype
            )
        return
    if hasattr(data, 'batches') and hasattr(data, 'atom_offsets'):  # GraphDataset
        yield from data.batches(batch_size)
        return
    items: Sequence[Any] | Iterable[Any] = data
    if isinstance(items, Sequence) and items and not isinstance(items[0], Batch):
        for start in range(0, len(items), batch_size):
            yield model.make_batch(list(items[start : start + batch_size]), labels=False)
        return
    for item in items:
        if not isinstance(item, Batch):
            raise TypeError(f'cannot build batches from {type(item).__name__}')
        yield item


def compute_features(
    model: AtomicPotential,
    data: Any,
    kind: str = 'sketch',
    dim: int = 512,
    seed: int = 0,
    per_atom: bool = True,
    normalise_per_atom: bool = False,
    batch_size: int = 32,
    as_numpy: bool = True,
    feature_map: GradientFeatureMap | None = None,
) -> GradientFeatures:
    """Gradient features of many structures, computed batch by batch (see the module docstring).

    :param model: the model (any kind).
    :param data: structures, see :func:`iterate_batches`.
    :param kind: ``'sketch'`` (FEAT(RP), ``seeds/001`` eq. 19 / ``seeds/003`` eq. 20-21) or ``'last_layer'``
        (FEAT(LL), ``seeds/001`` eq. 14).
    :param dim: number of random projections of the sketch (512 in the papers).
    :param seed: seed of the sketch matrices; use the same seed for training and pool features.
    :param per_atom: also return the atomic features (N, d) (needed for atom-based uncertainties, ``seeds/003`` eq. 3-4).
    :param normalise_per_atom: structure features as per-atom means (gradient of E/N_at, ``seeds/003`` eq. 2) instead
        of sums (gradient of E, ``seeds/001`` eq. 11).
    :param batch_size: structures per batch when ``data`` is not batched already.
    :param as_numpy: return numpy arrays (model dtype) instead of CPU torch tensors.
    :param feature_map: a prepared :class:`GradientFeatureMap` (overrides kind/dim/seed).
    """
    fmap = feature_map if feature_map is not None else GradientFeatureMap(model, kind=kind, dim=dim, seed=seed)
    structures: list[torch.Tensor] = []
    atomics: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    for batch in iterate_batches(model, data, batch_size):
        atomic, structure = fmap(batch, normalise_per_atom=normalise_per_atom)
        structures.append(structure.cpu())
        sizes.append(batch.n_atoms.cpu())
        if per_atom:
            atomics.append(atomic.cpu())
    if not structures:
        raise ValueError('no structures given')
    structure_all = torch.cat(structures)
    atomic_all = torch.cat(atomics) if per_atom else None
    n_atoms = torch.cat(sizes).numpy().astype(np.int64)
    if as_numpy:
        return GradientFeatures(
            structure=structure_all.numpy(),
            n_atoms=n_atoms,
            atomic=None if atomic_all is None else atomic_all.numpy(),
            kind=fmap.kind,
            normalised_per_atom=normalise_per_atom,
        )
    return GradientFeatures(structure_all, n_atoms, atomic_all, fmap.kind, normalise_per_atom)
