"""MACE (Batatia et al., NeurIPS 2022) as a model kind: mace-torch's own modules behind the potential interface.

The network is a ``mace.modules.ScaleShiftMACE`` built from :class:`MACEHyperparameters` with MACE's default blocks
(residual interaction blocks, SiLU gate, linear readouts after every interaction but the last, a one-hidden-layer
readout after the last). :class:`MACEPotential` runs its embedding, interactions and products on our
:class:`~aiida_alkit.models.batching.Batch` (same neighbour lists and strain handling as GM-NN) and uses

* descriptors: the node features of all interactions concatenated, ``h_i = (h_i^(1), ..., h_i^(T))`` (N, d_0),
  the ``node_feats`` MACE itself returns;
* atomic energies: ``E_i = c (Σ_t R_t(h_i^(t)) + μ_Z)`` with MACE's readouts ``R_t``, an energy scale ``c`` (eV,
  a buffer) and per-element shifts ``μ_Z`` (trainable, the ``shift`` group), initialised by :meth:`fit_shift`
  exactly as GM-NN's eq. (4) with ``σ_Z = 1``. Inside the MACE module E0 = 0, scale 1 and shift 0 while we train;
  :meth:`MACEPotential.export_mace` folds ``c μ_Z`` into MACE's E0s and ``c`` into its scale for MACE's tools;
* readout factors: every e3nn ``Linear`` of the readouts maps scalars to scalars, ``z = w x_s W`` with the path
  weight ``w = 1/sqrt(d_in)``; ``x̃ = w x_s`` (no bias) and ``g = ∂E_i/∂z`` by automatic differentiation (atoms do
  not interact inside the readout). The output layers are the linear readouts and the last readout's second
  layer, so the last-layer features are the gradient with respect to all weights that touch ``E_i`` directly.

Departures from MACE's own training (documented in docs/concepts.md): E0s are fitted by least squares on the
training energies and then trained as ``μ_Z`` (MACE keeps E0s fixed), and ``avg_num_neighbors`` is the mean
neighbour count of the training set computed by the train job (as MACE's ``--avg_num_neighbors`` default does).

``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process, which would turn every ``torch.load``
without an explicit ``weights_only`` into a full unpickle; ``_import_mace`` restores the variable and every load
of ours passes ``weights_only=True`` explicitly.

Units: Å, eV, eV/Å, eV/Å³. No AiiDA import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from aiida_alkit.models.batching import Batch
from aiida_alkit.models.potential import AtomicPotential, HyperparametersMixin, ReadoutLayer, fit_energy_shift

__all__ = ['MACEHyperparameters', 'MACEPotential', 'average_neighbors']

#: Adam learning rates per group. MACE's own default (0.01) is meant for thousands of steps; a campaign's round trains
#: tens to hundreds of epochs on a few dozen structures, where 0.01 barely moves a small MACE (train loss -14 % in 12
#: epochs on 12 Cu/Ni cells, against -87 % with these rates, which are GM-NN's layer-wise rates of the papers).
MACE_LEARNING_RATES = {'nn': 0.03, 'representation': 0.02, 'shift': 0.05, 'scale': 0.0}


def _import_mace() -> Any:
    """``mace.modules`` and ``e3nn.o3``, leaving ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` as it was before the import
    (mace sets it to 1 so that e3nn can read its constants; we allow the one global they need instead)."""
    before = os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
    try:
        # e3nn 0.4 reads its Wigner constants with a bare torch.load; they hold ``slice`` objects, harmless to allow
        with torch.serialization.safe_globals([slice]):
            from e3nn import o3
            from mace import modules
    finally:
        if before is None:
            os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
        else:
            os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = before
    return modules, o3


@dataclass
class MACEHyperparameters(HyperparametersMixin):
    """Hyper-parameters of a MACE model (defaults: a small model that trains in seconds on two cores).

    :param species: element symbols; their order is the species index (and MACE's ``atomic_numbers`` order).
    :param cutoff: r_max, Å (5.0).
    :param channels: number of channels k of the hidden features (MACE ``num_channels``; 16, MACE's "small" is 64+).
    :param max_L: largest L of the hidden features (0: invariant messages, MACE's fastest setting).
    :param max_ell: largest ℓ of the spherical harmonics of the edges (3).
    :param correlation: body order minus one of the product basis (2; MACE's default 3).
    :param num_interactions: message-passing layers T (2).
    :param num_bessel: radial Bessel functions (8). :param num_polynomial_cutoff: polynomial envelope order p (5).
    :param radial_mlp: hidden widths of the radial MLP ((32, 32); MACE's default (64, 64, 64)).
    :param mlp_width: hidden width of the last readout (16, MACE's ``MLP_irreps = 16x0e``).
    :param avg_num_neighbors: the neighbour-sum normalisation; None until the train job sets it from the data.
    :param dtype: ``'float32'`` or ``'float64'`` (default float64, as MACE recommends for MD).
    :param seed: seed of the parameter initialisation (members of a committee differ by it).
    """

    species: list[str]
    cutoff: float = 5.0
    channels: int = 16
    max_L: int = 0
    max_ell: int = 3
    correlation: int = 2
    num_interactions: int = 2
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    radial_mlp: tuple[int, ...] = (32, 32)
    mlp_width: int = 16
    avg_num_neighbors: float | None = None
    dtype: str = 'float64'
    seed: int = 0
    model_kind: str = field(default='mace', init=False)

    def __post_init__(self) -> None:
        self.species = [str(symbol) for symbol in self.species]
        self.cutoff = float(self.cutoff)
        self.radial_mlp = tuple(int(width) for width in self.radial_mlp)
        if not self.species or len(set(self.species)) != len(self.species):
            raise ValueError(f'species must be a non-empty list of distinct element symbols, got {self.species}')
        from ase.data import atomic_numbers

        unknown = [symbol for symbol in self.species if symbol not in atomic_numbers]
        if unknown:
            raise ValueError(f'unknown element symbols {unknown}')
        if not self.cutoff > 0:
            raise ValueError(f'cutoff must be positive, got {self.cutoff} Å')
        for name in ('channels', 'num_interactions', 'num_bessel', 'num_polynomial_cutoff', 'mlp_width'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if self.num_interactions < 2:
            raise ValueError('num_interactions must be at least 2 (MACE builds its last readout after the second)')
        for name, allowed in (('max_L', (0, 1, 2, 3)), ('max_ell', (1, 2, 3, 4)), ('correlation', (1, 2, 3, 4))):
            if getattr(self, name) not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}')
        if not self.radial_mlp or any(width < 1 for width in self.radial_mlp):
            raise ValueError(f'radial_mlp must be positive widths, got {self.radial_mlp}')
        if self.avg_num_neighbors is not None and not float(self.avg_num_neighbors) > 0:
            raise ValueError(f'avg_num_neighbors must be positive, got {self.avg_num_neighbors}')
        if self.dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @classmethod
    def small(cls, species: Sequence[str], **overrides: Any) -> MACEHyperparameters:
        """A tiny model for tests (cutoff 4 Å, 8 channels, max_ell 2, radial MLP 16)."""
        settings: dict[str, Any] = {'cutoff': 4.0, 'channels': 8, 'max_ell': 2, 'radial_mlp': (16,), 'mlp_width': 8}
        settings.update(overrides)
        return cls(species=list(species), **settings)

    KIND: ClassVar[str] = 'mace'
    STRICT: ClassVar[bool] = True  # a typo in a MACE setting is an error, not a silent default


class MACEPotential(AtomicPotential):
    """MACE behind the potential interface (see the module docstring).

    Parameter groups: ``representation`` (embedding, radial MLPs, interactions, products), ``nn`` (readouts),
    ``shift`` (μ_Z); ``scale`` is empty (σ_Z = 1). RLEKF is refused: its error covariance P has (number of
    parameters)² entries per block and the layer blocks of MACE's tensor products do not split as GM-NN's do.
    """

    kind = 'mace'
    hyperparameters_class = MACEHyperparameters
    default_learning_rates = MACE_LEARNING_RATES
    rlekf_refusal = (
        'RLEKF (and so KPU_trained) is implemented for GM-NN only: MACE weights are shared across tensor-product '
        'paths that the per-layer blocks of its covariance P do not follow; train MACE with Adam'
    )

    def __init__(self, hyperparameters: MACEHyperparameters, device: str | torch.device = 'cpu') -> None:
        super().__init__()
        modules, o3 = _import_mace()
        from ase.data import atomic_numbers

        self.hyperparameters = hyperparameters
        hp = hyperparameters
        n_species = len(hp.species)
        hidden = o3.Irreps(
            '+'.join(f'{hp.channels}x{ell}{"e" if ell % 2 == 0 else "o"}' for ell in range(hp.max_L + 1))
        )
        neighbours = 1.0 if hp.avg_num_neighbors is None else float(hp.avg_num_neighbors)
        import e3nn

        # e3nn turns the FX code it generates for every Linear and tensor product into TorchScript by default; the
        # FX modules compute the same numbers (bitwise, checked) and the model builds in 0.33 s instead of 0.75
        # (default hyper-parameters, 2-core CPU; evaluation equally fast). Pickling (export_mace) scripts them then.
        optimisation = e3nn.get_optimization_defaults()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(hp.seed))
            previous = torch.get_default_dtype()
            torch.set_default_dtype(hp.torch_dtype)
            e3nn.set_optimization_defaults(jit_script_fx=False)
            try:
                self.mace = modules.ScaleShiftMACE(
                    r_max=hp.cutoff,
                    num_bessel=hp.num_bessel,
                    num_polynomial_cutoff=hp.num_polynomial_cutoff,
                    max_ell=hp.max_ell,
                    interaction_cls=modules.interaction_classes['RealAgnosticResidualInteractionBlock'],
                    interaction_cls_first=modules.interaction_classes['RealAgnosticResidualInteractionBlock'],
                    num_interactions=hp.num_interactions,
                    num_elements=n_species,
                    hidden_irreps=hidden,
                    MLP_irreps=o3.Irreps(f'{hp.mlp_width}x0e'),
                    atomic_energies=np.zeros(n_species),
                    avg_num_neighbors=neighbours,
                    atomic_numbers=[atomic_numbers[symbol] for symbol in hp.species],
                    correlation=hp.correlation,
                    gate=nn.functional.silu,
                    radial_MLP=list(hp.radial_mlp),
                    atomic_inter_scale=1.0,
                    atomic_inter_shift=0.0,
                )
            finally:
                torch.set_default_dtype(previous)
                e3nn.set_optimization_defaults(**optimisation)
        self.atomic_shift = nn.Parameter(torch.zeros(n_species, dtype=torch.float64))  # μ_Z
        self.register_buffer('energy_scale', torch.tensor(1.0, dtype=torch.float64))  # c, eV
        self._readout_layers = self._readout_linears()
        self._feature_slices = self._interaction_slices()
        self.to(device=device, dtype=hp.torch_dtype)

    # ------------------------------------------------------------------ structure of the readout
    def _readout_linears(self) -> list[tuple[nn.Module, bool]]:
        """(e3nn Linear, output?) of the readouts in evaluation order; each maps scalars to scalars."""
        found = []
        for readout in self.mace.readouts:
            if hasattr(readout, 'linear'):
                found.append((readout.linear, True))
            else:
                found.append((readout.linear_1, False))
                found.append((readout.linear_2, True))
        for linear, _ in found:
            scalars_in = [mul for mul, irrep in linear.irreps_in if irrep.l == 0 and irrep.p == 1]
            if len(linear.instructions) != 1 or not scalars_in:
                raise ValueError('MACE readout layers must map one block of scalars to scalars')
        return found

    def _interaction_slices(self) -> list[slice]:
        """Where the node features of each interaction sit in the descriptors."""
        slices, start = [], 0
        for product in self.mace.products:
            width = product.linear.irreps_out.dim
            slices.append(slice(start, start + width))
            start += width
        return slices

    # ------------------------------------------------------------------ interface
    @classmethod
    def complete_hyperparameters(cls, hyperparameters: MACEHyperparameters, training_set: Any) -> MACEHyperparameters:
        """``avg_num_neighbors`` from the training set's neighbour lists when not given (MACE's own default)."""
        if hyperparameters.avg_num_neighbors is not None:
            return hyperparameters
        from dataclasses import replace

        from aiida_alkit.models.batching import batch_from_configurations

        batch = batch_from_configurations(training_set, hyperparameters.species, hyperparameters.cutoff)
        return replace(hyperparameters, avg_num_neighbors=average_neighbors(batch.edge_i.shape[0], batch.n_atoms_total))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        readout = {id(p) for p in self.mace.readouts.parameters()}
        return {
            'nn': list(self.mace.readouts.parameters()),
            'representation': [p for p in self.mace.parameters() if id(p) not in readout],
            'shift': [self.atomic_shift],
            'scale': [],
        }

    def fit_shift(
        self, energies: np.ndarray | torch.Tensor, species_counts: np.ndarray | torch.Tensor, min_scale: float = 1e-3
    ) -> dict[str, Any]:
        """μ_Z and c from a least-squares fit of the total energies on the element counts (GM-NN's eq. 4 with
        σ_Z = 1): c = per-atom RMSE of the fit (1 eV when below ``min_scale``), μ_Z = w_Z / c."""
        weights, scale, rmse = fit_energy_shift(energies, species_counts, min_scale)
        with torch.no_grad():
            self.energy_scale.fill_(scale)
            self.atomic_shift.copy_(torch.as_tensor(weights / scale, dtype=self.atomic_shift.dtype))
        return {'shift': weights.tolist(), 'energy_scale': scale, 'rmse_per_atom': rmse}

    def descriptors(
        self, batch: Batch, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MACE node features of all interactions, concatenated (N, d_0), on our neighbour list."""
        mace = self.mace
        positions = batch.positions.to(self.dtype) if positions is None else positions
        cells = batch.cells.to(self.dtype) if cells is None else cells
        # MACE's convention: sender = edge_index[0], receiver = edge_index[1], vector = r_r - r_s + shift
        vectors = (
            positions.index_select(0, batch.edge_j)
            - positions.index_select(0, batch.edge_i)
            + batch.image_offsets(cells)
        )
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        edge_index = torch.stack([batch.edge_i, batch.edge_j])
        node_attrs = nn.functional.one_hot(batch.species, len(self.species)).to(self.dtype)
        node_feats = mace.node_embedding(node_attrs)
        edge_attrs = mace.spherical_harmonics(vectors)
        edge_feats, cutoff = mace.radial_embedding(lengths, node_attrs, edge_index, mace.atomic_numbers)
        features = []
        for index, (interaction, product) in enumerate(zip(mace.interactions, mace.products, strict=True)):
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=index == 0,
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            features.append(node_feats)
        return torch.cat(features, dim=-1)

    def _readout_sum(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Σ_t R_t(h^(t)) (N,)."""
        total = torch.zeros(descriptors.shape[0], dtype=descriptors.dtype, device=descriptors.device)
        for readout, block in zip(self.mace.readouts, self._feature_slices, strict=True):
            total = total + readout(descriptors[:, block]).squeeze(-1)
        return total

    def atomic_energies(self, descriptors: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """E_i = c (Σ_t R_t(h_i^(t)) + μ_Z), eV."""
        return self._shifted(self._readout_sum(descriptors), species)

    def _shifted(self, readout_sum: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """E_i = c (Σ_t R_t + μ_Z) from the readouts' sum (N,)."""
        return self.energy_scale * (readout_sum + self.atomic_shift[species])

    def readout_layout(self) -> list[ReadoutLayer]:
        return [
            ReadoutLayer(linear.instructions[0].path_shape[0], linear.instructions[0].path_shape[1], output)
            for linear, output in self._readout_layers
        ]

    def readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(x̃ = w x_s, g = ∂E_i/∂z)`` of the readout's linear layers (see the module docstring)."""
        return self._readout_pass(descriptors, species, output_only)[1]

    def atomic_energies_and_readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """E_i and the readout factors from one pass through the readouts (the signals are derivatives of it)."""
        return self._readout_pass(descriptors, species, output_only)

    def _readout_pass(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        layers = [linear for linear, output in self._readout_layers if output or not output_only]
        captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

        def capture(module, args, result) -> None:
            captured[module] = (args[0], result)

        handles = [linear.register_forward_hook(capture) for linear in layers]
        try:
            with torch.enable_grad():  # the signals need a graph even when called under torch.no_grad()
                total = self._readout_sum(descriptors)
                atomic = self._shifted(total, species)
                outputs = [captured[linear][1] for linear in layers]
                signals = torch.autograd.grad(
                    (self.energy_scale * total).sum(),
                    outputs,
                    create_graph=descriptors.requires_grad,
                    allow_unused=True,
                )
        finally:
            for handle in handles:
                handle.remove()
        factors = []
        for linear, output, signal in zip(layers, outputs, signals, strict=True):
            instruction = linear.instructions[0]
            block = linear.irreps_in.slices()[instruction.i_in]
            x_tilde = instruction.path_weight * captured[linear][0][:, block]
            factors.append((x_tilde, torch.zeros_like(output) if signal is None else signal))
        if not torch.is_grad_enabled():  # the caller asked for no graph (the signals needed one here)
            atomic = atomic.detach()
        return atomic, factors

    # ------------------------------------------------------------------ MACE's own format
    def export_mace(self, path: str | os.PathLike) -> None:
        """Write the model as MACE's tools expect it: a pickled ``ScaleShiftMACE`` with E0 = c μ_Z and scale c.

        For users (``MACECalculator(model_paths=...)``, MACE's LAMMPS and deployment scripts); our jobs never
        load this format (a pickle runs code when loaded: load only files you made)."""
        import copy

        exported = copy.deepcopy(self.mace).to('cpu')
        c = float(self.energy_scale)
        with torch.no_grad():
            e0 = (c * self.atomic_shift.detach().cpu().double()).to(exported.atomic_energies_fn.atomic_energies.dtype)
            exported.atomic_energies_fn.atomic_energies.copy_(
                e0.reshape(exported.atomic_energies_fn.atomic_energies.shape)
            )
            exported.scale_shift.scale.fill_(c)
            exported.scale_shift.shift.fill_(0.0)
        torch.save(exported, os.fspath(path))

    def mace_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The data dictionary MACE's own ``forward`` takes, for a batch (used to check the export)."""
        cells = batch.cells.to(self.dtype)
        ptr = torch.zeros(batch.n_structures + 1, dtype=torch.int64, device=batch.positions.device)
        ptr[1:] = torch.cumsum(batch.n_atoms, 0)
        return {
            'positions': batch.positions.to(self.dtype),
            'node_attrs': nn.functional.one_hot(batch.species, len(self.species)).to(self.dtype),
            'edge_index': torch.stack([batch.edge_i, batch.edge_j]),
            'shifts': batch.image_offsets(cells),
            'unit_shifts': batch.edge_shifts.to(self.dtype),
            'cell': cells.reshape(-1, 3),
            'batch': batch.structure_index,
            'ptr': ptr,
            'head': torch.zeros(batch.n_structures, dtype=torch.int64, device=batch.positions.device),
        }


def average_neighbors(n_pairs: int, n_atoms: int) -> float:
    """Mean number of neighbours within the cutoff (MACE's ``avg_num_neighbors``): directed pairs per atom, >= 1."""
    return max(float(n_pairs) / max(int(n_atoms), 1), 1.0)
