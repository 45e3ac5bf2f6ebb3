"""Gaussian moment neural network (GM-NN) interatomic potential in PyTorch.

Implements the model of Zaverkin et al. as described in the specification papers (``seeds/001``: Digital Discovery
2022, Sec. 2.1, eq. 1-6; ``seeds/003``: npj Comput. Mater. 2024, "Gaussian moment neural network", eq. 9-16):

* eq. (1): total energy as a sum of atomic energies, ``E = sum_i E_i(G_i)``;
* eq. (2)/(11): equivariant moments ``Ψ_{i,L,s} = sum_j R_{Z_i Z_j, s}(r_ij) r̂_ij^{⊗L}`` for ``L = 0..3`` with
  ``r_ij = r_i - r_j``;
* eq. (12): radial functions ``R_{Z_i Z_j, s}(r) = N_basis^{-1/2} sum_k β_{Z_i Z_j, s k} Φ_k(r) f_cut(r)`` with
  normalised Gaussians ``Φ_k(r) = (2γ/π)^{1/4} exp(-γ (r - r_k)²)`` on the equidistant grid
  ``r_k = r_min + k (r_cut - r_min) / N_basis`` (r_min = 0.5 Å), width ``γ = N_basis² / r_cut²`` and the cosine
  cutoff ``f_cut(r) = (cos(π r / r_cut) + 1) / 2``;
* eq. (13): rotation invariants as full contractions of the moments, the eight generating-graph contractions of the
  GM representation (reduced by the permutational symmetry of each graph), see :data:`CONTRACTIONS`;
* eq. (3)/(9): two-hidden-layer feed-forward network in NTK parametrisation,
  ``x_{l} = φ(W^{(l)} x_{l-1} / sqrt(d_{l-1}) + 0.1 b^{(l)})`` with ``W ~ N(0, 1)``, ``b = 0`` at initialisation and
  ``φ(x) = α SiLU(x)``, ``α = 1.6765`` (``1/sqrt(E[SiLU(z)²])`` for ``z ~ N(0, 1)``);
* eq. (4)/(10): ``E_i = c (σ_{Z_i} y_i + μ_{Z_i})``; ``μ`` from a linear regression of the total energies on the
  element counts, ``σ = 1``, ``c`` the per-atom RMSE of that regression (:meth:`GMNN.fit_shift`);
* eq. (6)/(15): forces ``F_i = -∂E/∂r_i`` and eq. (16): stress ``σ = (1/V) ∂E/∂ε`` under the symmetric strain
  ``r -> r (1 + ε)``, both by automatic differentiation.

Units: Å, eV, eV/Å, eV/Å³ (ASE's stress sign). No AiiDA import.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from aiida_alkit.models._moments import InvariantPlan, NeighbourLayout, cached_layout, padded_moments
from aiida_alkit.models.batching import Batch
from aiida_alkit.models.potential import AtomicPotential, HyperparametersMixin, ReadoutLayer, fit_energy_shift

__all__ = [
    'CONTRACTIONS',
    'GMNN',
    'PAPER_LEARNING_RATES',
    'SILU_SCALE',
    'GMNNHyperparameters',
    'GaussianMoments',
    'NTKLinear',
    'count_species',
    'n_gaussian_moment_features',
]

#: α of the scaled SiLU activation φ(x) = α x / (1 + exp(-x)) (seeds/001 below eq. 3): 1/sqrt(E[SiLU(z)²]), z~N(0,1).
SILU_SCALE = 1.6765324703310907
#: Factor of the biases in the NTK parametrisation (eq. 3).
BIAS_FACTOR = 0.1
#: Layer-wise Adam learning rates of the papers (seeds/001 Sec. 2.2, seeds/003 "training"), per parameter group.
PAPER_LEARNING_RATES = {'nn': 0.03, 'representation': 0.02, 'shift': 0.05, 'scale': 0.001}

#: The full contractions of eq. (13) (generating graphs of the GM representation). Each entry: name, the rank L of
#: each moment, the einsum over Cartesian indices (n: atom, s/t/u: radial channel) and the permutational symmetry of
#: the radial channels used to drop duplicates: 'none', 'pair01' (s <-> t), 'pair12' (t <-> u) or 'all' (s, t, u).
CONTRACTIONS: tuple[tuple[str, tuple[int, ...], str, str], ...] = (
    ('L0', (0,), 'ns->ns', 'none'),
    ('L1L1', (1, 1), 'nsa,nta->nst', 'pair01'),
    ('L2L2', (2, 2), 'nsab,ntab->nst', 'pair01'),
    ('L3L3', (3, 3), 'nsabc,ntabc->nst', 'pair01'),
    ('L2L2L2', (2, 2, 2), 'nsab,ntbc,nuca->nstu', 'all'),
    ('L1L1L2', (1, 1, 2), 'nsa,ntb,nuab->nstu', 'pair01'),
    ('L3L2L1', (3, 2, 1), 'nsabc,ntab,nuc->nstu', 'none'),
    ('L2L3L3', (2, 3, 3), 'nsab,ntacd,nubcd->nstu', 'pair12'),
)


def _kept_channels(n_radial: int, order: int, symmetry: str) -> list[tuple[int, ...]]:
    """Radial-channel index tuples kept for one contraction (one representative per symmetry orbit)."""
    channels = list(itertools.product(range(n_radial), repeat=order))
    if symmetry == 'pair01':
        return [c for c in channels if c[0] <= c[1]]
    if symmetry == 'pair12':
        return [c for c in channels if c[1] <= c[2]]
    if symmetry == 'all':
        return [c for c in channels if c[0] <= c[1] <= c[2]]
    return channels


def _active_contractions(max_moment: int) -> list[tuple[str, tuple[int, ...], str, str]]:
    return [item for item in CONTRACTIONS if max(item[1]) <= max_moment]


def n_gaussian_moment_features(n_radial: int, max_moment: int = 3) -> int:
    """Dimension d_0 of the invariant GM vector G_i (910 for 7 radial functions, 360 for 5, with L_max = 3)."""
    return sum(len(_kept_channels(n_radial, len(ranks), sym)) for _, ranks, _, sym in _active_contractions(max_moment))


@dataclass
class GMNNHyperparameters(HyperparametersMixin):
    """Hyper-parameters of a GM-NN model (defaults: the papers' settings).

    :param species: element symbols the model knows; their order is the species index.
    :param cutoff: cutoff radius r_cut, Å (5.0 Å in the papers; 6.0 Å for MIL-53(Al) in seeds/003).
    :param n_basis: number of Gaussians Φ_k on the equidistant grid (9 in seeds/003).
    :param n_radial: number of radial functions R_s (7 in seeds/003; 5 gives the d_0 = 360 of seeds/001).
    :param r_min: first Gaussian centre, Å (0.5 Å).
    :param max_moment: largest moment rank L (3); contractions using higher ranks are dropped.
    :param hidden_widths: hidden-layer widths d_1, d_2 (512, 512).
    :param dtype: ``'float32'`` or ``'float64'``.
    :param seed: seed of the parameter initialisation (members of a committee differ by it).
    """

    species: list[str]
    cutoff: float = 5.0
    n_basis: int = 9
    n_radial: int = 7
    r_min: float = 0.5
    max_moment: int = 3
    hidden_widths: tuple[int, ...] = (512, 512)
    dtype: str = 'float32'
    seed: int = 0
    model_kind: str = field(default='gmnn', init=False)

    def __post_init__(self) -> None:
        self.species = [str(symbol) for symbol in self.species]
        self.hidden_widths = tuple(int(width) for width in self.hidden_widths)
        self.cutoff = float(self.cutoff)
        self.r_min = float(self.r_min)
        if not self.species or len(set(self.species)) != len(self.species):
            raise ValueError(f'species must be a non-empty list of distinct element symbols, got {self.species}')
        if not 0 <= self.r_min < self.cutoff:
            raise ValueError(f'need 0 <= r_min < cutoff, got r_min={self.r_min} Å, cutoff={self.cutoff} Å')
        if self.n_basis < 1 or self.n_radial < 1:
            raise ValueError('n_basis and n_radial must be positive')
        if self.max_moment not in (0, 1, 2, 3):
            raise ValueError(f'max_moment must be 0, 1, 2 or 3, got {self.max_moment}')
        if any(width < 1 for width in self.hidden_widths):
            raise ValueError(f'hidden widths must be positive, got {self.hidden_widths}')
        if self.dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @classmethod
    def small(cls, species: Sequence[str], **overrides: Any) -> GMNNHyperparameters:
        """A tiny model for tests and demonstrations (cutoff 4 Å, 5 Gaussians, 3 radial functions, 32x32)."""
        settings: dict[str, Any] = {'cutoff': 4.0, 'n_basis': 5, 'n_radial': 3, 'hidden_widths': (32, 32)}
        settings.update(overrides)
        return cls(species=list(species), **settings)

    KIND: ClassVar[str] = 'gmnn'

    @property
    def n_features(self) -> int:
        """Number of invariant input features d_0."""
        return n_gaussian_moment_features(self.n_radial, self.max_moment)


def count_species(numbers: np.ndarray, offsets: np.ndarray, species: Sequence[str]) -> np.ndarray:
    """(B, n_species) element counts per structure from the flat layout (atomic numbers and offsets)."""
    from aiida_alkit.models.batching import species_index_table

    index = species_index_table(species)[np.asarray(numbers, dtype=np.int64)]
    if (index < 0).any():
        raise ValueError(f'structures contain elements outside the model species {list(species)}')
    structure = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    counts = np.zeros((len(offsets) - 1, len(species)))
    np.add.at(counts, (structure, index), 1.0)
    return counts


class GaussianMoments(nn.Module):
    """Gaussian moment representation G_i (eq. 2/11-13 of the papers).

    Trainable parameters: the species-pair coefficients β of shape (n_species, n_species, n_radial, n_basis), indexed
    by (centre species Z_i, neighbour species Z_j). The papers do not state their initialisation; we draw them from
    U(-1, 1) as the authors' reference implementation does, and scale them by N_basis^{-1/2} in the forward pass
    (the NTK-like factor of eq. 12). The moments and invariants are evaluated by the padded, batched kernels of
    ``aiida_alkit.models._moments`` (same values as the edge-by-edge definition up to rounding).
    """

    def __init__(self, hyperparameters: GMNNHyperparameters, generator: torch.Generator | None = None) -> None:
        super().__init__()
        hp = hyperparameters
        self.cutoff = hp.cutoff
        self.n_radial = hp.n_radial
        self.n_basis = hp.n_basis
        self.max_moment = hp.max_moment
        n_species = len(hp.species)
        # Equidistant Gaussian centres r_k = r_min + k (r_cut - r_min) / N_basis (Å) and width γ = N_basis² / r_cut².
        centres = hp.r_min + (hp.cutoff - hp.r_min) / hp.n_basis * torch.arange(hp.n_basis, dtype=torch.float64)
        self.register_buffer('centres', centres)
        self.gamma = hp.n_basis**2 / hp.cutoff**2
        self.norm = (2.0 * self.gamma / math.pi) ** 0.25
        coefficients = 2.0 * torch.rand(n_species, n_species, hp.n_radial, hp.n_basis, generator=generator) - 1.0
        self.coefficients = nn.Parameter(coefficients.to(torch.float64))
        self.contractions = _active_contractions(hp.max_moment)
        kept_channels = {}
        for name, ranks, _, symmetry in self.contractions:
            kept = kept_channels[name] = _kept_channels(hp.n_radial, len(ranks), symmetry)
            flat = [sum(c * hp.n_radial ** (len(ranks) - 1 - p) for p, c in enumerate(ch)) for ch in kept]
            self.register_buffer(f'keep_{name}', torch.tensor(flat, dtype=torch.int64), persistent=False)
        self.n_features = n_gaussian_moment_features(hp.n_radial, hp.max_moment)
        self._plan = InvariantPlan(self.contractions, kept_channels)
        self.register_buffer('feature_select', self._plan.select, persistent=False)

    def cutoff_function(self, r: torch.Tensor) -> torch.Tensor:
        """Cosine cutoff f_cut(r) = (cos(π r / r_cut) + 1) / 2 for r < r_cut, else 0 (dimensionless)."""
        inside = r < self.cutoff
        return torch.where(inside, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), torch.zeros_like(r))

    def basis(self, r: torch.Tensor) -> torch.Tensor:
        """Normalised Gaussians Φ_k(r) (E, n_basis) on the equidistant grid (eq. 12), r in Å."""
        return self.norm * torch.exp(-self.gamma * (r[:, None] - self.centres.to(r.dtype)) ** 2)

    def radial_functions(self, r: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """R_{Z_i Z_j, s}(r) (E, n_radial) = N_basis^{-1/2} sum_k β_{Z_i Z_j s k} Φ_k(r) f_cut(r) (eq. 12)."""
        beta = self.coefficients[species_i, species_j]  # (E, n_radial, n_basis)
        values = torch.einsum('esk,ek->es', beta, self.basis(r)) / math.sqrt(self.n_basis)
        return values * self.cutoff_function(r)[:, None]

    def moments(
        self,
        vectors: torch.Tensor,
        species: torch.Tensor,
        edge_i: torch.Tensor,
        edge_j: torch.Tensor,
        layout: NeighbourLayout | None = None,
    ) -> list[torch.Tensor]:
        """Moments Ψ_{i,L,s} for L = 0..max_moment (eq. 2/11): [(N, R), (N, R, 3), (N, R, 3, 3), (N, R, 3, 3, 3)].

        Evaluated on a padded neighbour table (``_moments.padded_moments``) as one batched product per atom.

        :param vectors: (E, 3) pair vectors r_ij = r_i - r_j (Å) of the edges (edge_i, edge_j).
        :param layout: padded table of ``edge_i`` (built and cached per ``edge_i`` tensor when not given).
        """
        if layout is None:
            layout = cached_layout(edge_i, int(species.shape[0]))
        return padded_moments(
            vectors,
            species,
            edge_j,
            layout,
            self.coefficients,
            self.centres,
            self.gamma,
            self.norm / math.sqrt(self.n_basis),
            self.cutoff,
            self.max_moment,
        )

    def invariants(self, moments: list[torch.Tensor]) -> torch.Tensor:
        """Rotation-invariant full contractions (eq. 13) concatenated to G_i, (N, d_0), order of :data:`CONTRACTIONS`."""
        return self._plan(moments, self.feature_select)

    def forward(
        self,
        vectors: torch.Tensor,
        species: torch.Tensor,
        edge_i: torch.Tensor,
        edge_j: torch.Tensor,
        layout: NeighbourLayout | None = None,
    ) -> torch.Tensor:
        """G_i (N, d_0) from pair vectors r_ij = r_i - r_j (E, 3), Å."""
        return self.invariants(self.moments(vectors, species, edge_i, edge_j, layout))


class NTKLinear(nn.Module):
    """Linear layer in NTK parametrisation (eq. 3): y = W x / sqrt(d_in) + 0.1 b, W ~ N(0, 1), b = 0 initially."""

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.d_in = d_in
        self.weight = nn.Parameter(torch.randn(d_out, d_in, generator=generator, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(d_out, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight) / math.sqrt(self.d_in) + BIAS_FACTOR * self.bias


class ScaledSiLU(nn.Module):
    """φ(x) = α x / (1 + exp(-x)) with α = 1.6765 (below eq. 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SILU_SCALE * nn.functional.silu(x)


class GMNN(AtomicPotential):
    """GM-NN potential: Gaussian moments → two-hidden-layer NTK network → scaled/shifted atomic energies (eq. 1-6).

    Parameter groups (for the layer-wise learning rates of the papers, see :meth:`parameter_groups`):
    ``representation`` (β), ``nn`` (W, b), ``scale`` (σ_Z), ``shift`` (μ_Z). The constant c is a buffer.
    Energies, forces, stress and persistence come from :class:`~aiida_alkit.models.potential.AtomicPotential`.
    """

    kind = 'gmnn'
    hyperparameters_class = GMNNHyperparameters
    supports_compiled_training = True  # the whole Adam step compiles (TrainingConfig.compile_step)
    default_learning_rates = PAPER_LEARNING_RATES

    def __init__(self, hyperparameters: GMNNHyperparameters, device: str | torch.device = 'cpu') -> None:
        super().__init__()
        self.hyperparameters = hyperparameters
        generator = torch.Generator().manual_seed(int(hyperparameters.seed))
        self.representation = GaussianMoments(hyperparameters, generator=generator)
        widths = [self.representation.n_features, *hyperparameters.hidden_widths, 1]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(widths):
            layers.append(NTKLinear(d_in, d_out, generator=generator))
            layers.append(ScaledSiLU())
        self.network = nn.Sequential(*layers[:-1])  # no activation after the output layer
        n_species = len(hyperparameters.species)
        self.atomic_scale = nn.Parameter(torch.ones(n_species, dtype=torch.float64))  # σ_Z (eq. 4)
        self.atomic_shift = nn.Parameter(torch.zeros(n_species, dtype=torch.float64))  # μ_Z (eq. 4)
        self.register_buffer('energy_scale', torch.tensor(1.0, dtype=torch.float64))  # c, eV (eq. 4)
        self.to(device=device, dtype=hyperparameters.torch_dtype)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group: 'nn', 'representation', 'shift', 'scale' (keys of :data:`PAPER_LEARNING_RATES`)."""
        return {
            'nn': list(self.network.parameters()),
            'representation': list(self.representation.parameters()),
            'shift': [self.atomic_shift],
            'scale': [self.atomic_scale],
        }

    # ------------------------------------------------------------------ energy shift initialisation
    def fit_shift(
        self, energies: np.ndarray | torch.Tensor, species_counts: np.ndarray | torch.Tensor, min_scale: float = 1e-3
    ) -> dict[str, Any]:
        """Initialise the output transformation of eq. (4): E_i = c (σ_Z y_i + μ_Z).

        Solves the least-squares problem E_k ≈ sum_Z n_{kZ} w_Z (eV) over the structures k, sets
        c = sqrt(mean_k((E_k - sum_Z n_{kZ} w_Z) / N_k)²) (per-atom RMSE of the regression, eV), μ_Z = w_Z / c
        and σ_Z = 1. When the regression is exact or nearly so (RMSE below ``min_scale`` eV/atom, e.g. fewer
        structures than elements) the data say nothing about the energy scale and c = 1 eV is used instead.

        :param energies: (K,) total energies, eV.
        :param species_counts: (K, n_species) element counts (order of :attr:`species`).
        :return: ``{'shift': w (eV per atom, list), 'energy_scale': c, 'rmse_per_atom': RMSE}``.
        """
        weights, scale, rmse = fit_energy_shift(energies, species_counts, min_scale)
        with torch.no_grad():
            self.energy_scale.fill_(scale)
            self.atomic_shift.copy_(torch.as_tensor(weights / scale, dtype=self.dtype))
            self.atomic_scale.fill_(1.0)
        return {'shift': weights.tolist(), 'energy_scale': scale, 'rmse_per_atom': rmse}

    # ------------------------------------------------------------------ model
    def descriptors(
        self, batch: Batch, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gaussian moments G_i (N, d_0) of a batch (optionally with displaced positions/cells, Å)."""
        positions = batch.positions.to(self.dtype) if positions is None else positions
        cells = batch.cells.to(self.dtype) if cells is None else cells
        # Paper convention r_ij = r_i - r_j (eq. 2); the neighbour image sits at r_j + S @ cell.
        vectors = (
            positions.index_select(0, batch.edge_i)
            - positions.index_select(0, batch.edge_j)
            - batch.image_offsets(cells)
        )
        return self.representation(vectors, batch.species, batch.edge_i, batch.edge_j, batch.neighbour_layout)

    def prepare_batch(self, batch: Batch) -> Batch:
        """The batch with its padded neighbour table (``_moments.NeighbourLayout``), which a compiled evaluation
        cannot build itself (its width is the largest neighbour count, a data-dependent size)."""
        if batch.neighbour_layout is not None:
            return batch
        return dataclasses.replace(batch, neighbour_layout=cached_layout(batch.edge_i, batch.n_atoms_total))

    def atomic_energies(self, descriptors: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """E_i = c (σ_Z y_i + μ_Z) (eq. 3-4), eV, from descriptors (N, d_0) and species indices (N,)."""
        return self._scaled(self.network(descriptors).squeeze(-1), species)

    def _scaled(self, y: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """E_i = c (σ_Z y_i + μ_Z) from the network outputs y (N,), eq. 4."""
        return self.energy_scale * (self.atomic_scale[species] * y + self.atomic_shift[species])

    def readout_layout(self) -> list[ReadoutLayer]:
        """The NTK layers of the network (eq. 3): x̃ = (x / sqrt(d), 0.1); the last one is the output layer."""
        layers = [module for module in self.network if isinstance(module, NTKLinear)]
        return [
            ReadoutLayer(layer.d_in + 1, layer.weight.shape[0], index == len(layers) - 1)
            for index, layer in enumerate(layers)
        ]

    def readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(x̃^(l-1), g^(l))`` of the NTK layers (seeds/001 eq. 13, seeds/003 eq. 17-18), analytic and
        differentiable with respect to the descriptors: ``x̃ = (x / sqrt(d), 0.1)``, ``g^(L) = c σ_Z`` (eq. 4) and
        ``g^(l-1) = (g^(l) W^(l) / sqrt(d)) ⊙ φ'(z^(l-1))``."""
        return self._readout_pass(descriptors, species, output_only, energies=False)[1]

    def atomic_energies_and_readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """E_i (eq. 3-4) and the readout factors from one forward pass through the network (the factors need the
        hidden layers' inputs and pre-activations, which the energy computes anyway)."""
        atomic, factors = self._readout_pass(descriptors, species, output_only, energies=True)
        assert atomic is not None
        return atomic, factors

    def _readout_pass(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool, energies: bool
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        modules = list(self.network)
        linear = [k for k, module in enumerate(modules) if isinstance(module, NTKLinear)]
        inputs: list[torch.Tensor] = []
        pre: list[torch.Tensor] = []
        x = descriptors
        atomic = None
        for k, module in enumerate(modules):
            if isinstance(module, NTKLinear):
                inputs.append(x)
                if k == len(modules) - 1:
                    if energies:  # the output layer, as atomic_energies applies it
                        atomic = self._scaled(module(x).squeeze(-1), species)
                    break
                x = module(x)
                pre.append(x)
            else:
                x = module(x)
        n_layers = len(inputs)
        first = n_layers - 1 if output_only else 0
        signals = [(self.energy_scale * self.atomic_scale[species])[:, None].to(descriptors.dtype)]
        for index in range(n_layers - 1, first, -1):  # g^(l-1) from g^(l)
            layer = modules[linear[index]]
            back = signals[0] @ layer.weight / math.sqrt(layer.d_in)
            signals.insert(0, back * _silu_derivative(pre[index - 1]))
        factors = []
        for x, g in zip(inputs[first:], signals, strict=True):
            ones = torch.full((x.shape[0], 1), BIAS_FACTOR, dtype=x.dtype, device=x.device)
            factors.append((torch.cat([x / math.sqrt(x.shape[1]), ones], dim=1), g))
        return atomic, factors


def _silu_derivative(z: torch.Tensor) -> torch.Tensor:
    """φ'(z) of the scaled SiLU φ(z) = α z sigmoid(z), elementwise and differentiable."""
    s = torch.sigmoid(z)
    return SILU_SCALE * s * (1.0 + z * (1.0 - s))
