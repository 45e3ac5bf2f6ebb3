"""The potential interface: what every model kind gives the trainer, the explore job and the uncertainty methods.

A model is an :class:`AtomicPotential`: a representation that turns a :class:`~aiida_alkit.models.batching.Batch`
into per-atom invariant features ``h_i`` (:meth:`~AtomicPotential.descriptors`, N x d_0), and a *readout* that maps
them to atomic energies ``E_i`` (:meth:`~AtomicPotential.atomic_energies`, eV); ``E = Σ_i E_i``. Forces
``F = -∂E/∂r`` (eV/Å) and the stress ``σ = (1/V) ∂E/∂ε`` (eV/Å³, ASE sign) come from automatic differentiation in
:meth:`~AtomicPotential.forward`, which every kind shares.

The readout is a set of linear layers ``z = W x̃`` (x̃ the layer input, normalised as the layer does, with a
constant column for a bias). The gradient of ``E_i`` with respect to a layer's weights is the outer product
``g_i ⊗ x̃_i`` with ``g_i = ∂E_i/∂z_i`` (seeds/001 eq. 13). :meth:`~AtomicPotential.readout_factors` returns these
factors for every layer, differentiable with respect to the descriptors, and :meth:`~AtomicPotential.readout_layout`
their sizes. This is all the gradient features (last layer, sketch), the gradient-feature bias and stop, HAL and
D-optimality need, so they work for any kind. Layers marked ``output`` are the ones whose weights touch the energy
directly; their factors concatenated are the last-layer features FEAT(LL).

Kinds are registered in :data:`MODEL_KINDS` (built in: ``gmnn``, ``mace``); a committee of members of kind ``k`` has
the kind ``k-committee``. Code outside ``models/`` names no kind: it loads potentials with :func:`load_potential`
and builds new ones from hyper-parameters with :func:`build_potential`.

No AiiDA import.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from aiida_alkit.models.batching import Batch, batch_from_atoms

__all__ = [
    'COMMITTEE_SUFFIX',
    'MODEL_KINDS',
    'AtomicPotential',
    'Hyperparameters',
    'HyperparametersMixin',
    'ModelKind',
    'ReadoutLayer',
    'build_potential',
    'committee_kind',
    'default_learning_rates',
    'fit_energy_shift',
    'hyperparameters_from_dict',
    'is_committee',
    'load_potential',
    'member_kind',
    'model_kind_of',
]

#: A committee of members of kind ``k`` has the kind ``k + COMMITTEE_SUFFIX``.
COMMITTEE_SUFFIX = '-committee'


@runtime_checkable
class Hyperparameters(Protocol):
    """What every hyper-parameter class has (a dataclass with JSON round trip)."""

    species: list[str]
    cutoff: float
    seed: int
    model_kind: str

    def to_dict(self) -> dict[str, Any]: ...

    @property
    def torch_dtype(self) -> torch.dtype: ...


class HyperparametersMixin:
    """The JSON round trip and the torch dtype every hyper-parameter dataclass shares (it sets :attr:`KIND`; with
    :attr:`STRICT` its ``from_dict`` refuses keys it does not know instead of ignoring them)."""

    KIND: ClassVar[str] = ''
    STRICT: ClassVar[bool] = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == 'float64' else torch.float32  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (tuples as lists; includes ``model_kind``, ``species`` and ``cutoff``)."""
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}  # type: ignore[call-overload]
        data['model_kind'] = self.KIND
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; a ValueError for another kind's hyper-parameters."""
        kind = data.get('model_kind', cls.KIND)
        if kind != cls.KIND:
            raise ValueError(f'hyper-parameters are for model kind {kind!r}, not {cls.KIND}')
        names = {item.name for item in fields(cls) if item.init}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names - {'model_kind'})
        if cls.STRICT and unknown:
            raise ValueError(f'unknown {cls.KIND} hyper-parameters {unknown}; known: {sorted(names)}')
        return cls(**{key: value for key, value in data.items() if key in names})


def fit_energy_shift(
    energies: np.ndarray | torch.Tensor, species_counts: np.ndarray | torch.Tensor, min_scale: float = 1e-3
) -> tuple[np.ndarray, float, float]:
    """Least squares ``E_k ≈ Σ_Z n_kZ w_Z`` over the structures k (seeds/001 eq. 4's shift): the per-element energies
    w (eV), the energy scale c = per-atom RMSE of the fit (eV; 1 eV when below ``min_scale``, i.e. when the data say
    nothing about the scale, e.g. fewer structures than elements) and that RMSE."""
    energy = np.asarray(torch.as_tensor(energies).detach().cpu(), dtype=np.float64).reshape(-1)
    counts = np.asarray(torch.as_tensor(species_counts).detach().cpu(), dtype=np.float64)
    if len(energy) == 0:
        raise ValueError('fit_shift needs at least one structure')
    counts = counts.reshape(len(energy), -1)
    weights, *_ = np.linalg.lstsq(counts, energy, rcond=None)
    residual = (energy - counts @ weights) / counts.sum(axis=1)
    rmse = float(np.sqrt(np.mean(residual**2)))
    return weights, (rmse if rmse >= min_scale else 1.0), rmse


@dataclass(frozen=True)
class ReadoutLayer:
    """A linear layer of the readout: ``z = W x̃`` with x̃ of size ``d_in`` (normalisation and a bias column
    included) and z of size ``d_out``; ``output``: its z enters the atomic energy directly (last-layer features)."""

    d_in: int
    d_out: int
    output: bool


class AtomicPotential(nn.Module):
    """Base of every model kind: shared forward pass (energy, forces, stress), batches, energy shift, persistence.

    A kind implements :meth:`descriptors`, :meth:`atomic_energies`, :meth:`readout_layout`,
    :meth:`readout_factors`, :meth:`parameter_groups` and :meth:`fit_shift`, and sets :attr:`kind`,
    :attr:`hyperparameters_class` and :attr:`default_learning_rates`.
    """

    kind: ClassVar[str] = ''
    hyperparameters_class: ClassVar[type]
    #: Adam learning rate per parameter group when the training settings give none.
    default_learning_rates: ClassVar[dict[str, float]] = {}
    #: Why this kind cannot be trained with RLEKF (None: it can).
    rlekf_refusal: ClassVar[str | None] = None
    #: Whether the whole Adam step of this kind compiles correctly (``TrainingConfig.compile_step``): its forward
    #: pass must reach the compiler as operations it can differentiate twice (no custom autograd function).
    supports_compiled_training: ClassVar[bool] = False
    hyperparameters: Any

    # ------------------------------------------------------------------ properties
    @property
    def species(self) -> list[str]:
        return list(self.hyperparameters.species)

    @property
    def cutoff(self) -> float:
        """Cutoff radius, Å."""
        return float(self.hyperparameters.cutoff)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ batches
    def make_batch(self, structures: Sequence[Any], labels: bool = False) -> Batch:
        """Batch of ASE ``Atoms`` with this model's species, cutoff, device and dtype."""
        return batch_from_atoms(structures, self.species, self.cutoff, self.device, self.dtype, labels=labels)

    def species_counts(self, batch: Batch) -> torch.Tensor:
        """(B, n_species) element counts per structure."""
        counts = torch.zeros(batch.n_structures, len(self.species), dtype=self.dtype, device=batch.species.device)
        one_hot = nn.functional.one_hot(batch.species, len(self.species)).to(self.dtype)
        return counts.index_add_(0, batch.structure_index, one_hot)

    def fit_shift_from_batch(self, batch: Batch, min_scale: float = 1e-3) -> dict[str, Any]:
        """:meth:`fit_shift` on the energy labels of a batch."""
        if batch.energy is None:
            raise ValueError('the batch has no energy labels')
        return self.fit_shift(batch.energy, self.species_counts(batch), min_scale=min_scale)

    # ------------------------------------------------------------------ what a kind implements
    @classmethod
    def complete_hyperparameters(cls, hyperparameters: Any, training_set: Any) -> Any:
        """Hyper-parameters with the values a kind takes from the training set (``ConfigurationArrays``) filled in;
        the default changes nothing."""
        return hyperparameters

    def fit_shift(
        self, energies: np.ndarray | torch.Tensor, species_counts: np.ndarray | torch.Tensor, min_scale: float = 1e-3
    ) -> dict[str, Any]:
        """Initialise the per-element energy shift and the energy scale from total energies (eV) and counts."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group ('nn', 'representation', 'shift', 'scale'), for per-group learning rates."""
        raise NotImplementedError

    def descriptors(
        self, batch: Batch, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-atom invariant features h_i (N, d_0) of a batch (optionally displaced positions/cells, Å)."""
        raise NotImplementedError

    def atomic_energies(self, descriptors: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Atomic energies E_i (N,), eV, from the descriptors (N, d_0) and the species indices (N,)."""
        raise NotImplementedError

    def readout_layout(self) -> list[ReadoutLayer]:
        """The readout's linear layers, in the order of :meth:`readout_factors`."""
        raise NotImplementedError

    def readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(x̃ (N, d_in), g (N, d_out))`` per readout layer (only the ``output`` layers when ``output_only``), with
        ``g_i ⊗ x̃_i = ∂E_i/∂W``, eV; differentiable with respect to ``descriptors``."""
        raise NotImplementedError

    def atomic_energies_and_readout_factors(
        self, descriptors: torch.Tensor, species: torch.Tensor, output_only: bool = False
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`atomic_energies` and :meth:`readout_factors` of the same descriptors, for callers that need both
        (the feature biases of the explore job). This default evaluates them separately; a kind whose factors come
        out of its readout's forward pass (GM-NN) overrides it to run that pass once."""
        return self.atomic_energies(descriptors, species), self.readout_factors(descriptors, species, output_only)

    # ------------------------------------------------------------------ shared evaluation
    def forward(
        self, batch: Batch, compute_forces: bool = True, compute_stress: bool = False, training: bool = False
    ) -> dict[str, torch.Tensor]:
        """Energies, forces and stress of a batch.

        :param compute_forces: forces F = -∂E/∂r (N, 3), eV/Å.
        :param compute_stress: stress (1/V) ∂E/∂ε (B, 3, 3), eV/Å³ (ASE sign), for structures periodic in all
            three directions; zero for the others.
        :param training: keep the graph of forces/stress so that a loss on them can be back-propagated.
        :return: dict with 'energy' (B,) eV, 'atomic_energies' (N,) eV and, when asked, 'forces', 'stress'.
        """
        if compute_forces or compute_stress:
            with torch.enable_grad():  # derivatives are needed even when called under torch.no_grad()
                return self._evaluate(batch, compute_forces, compute_stress, training)
        return self._evaluate(batch, False, False, training)

    def prepare_batch(self, batch: Batch) -> Batch:
        """The batch with whatever this kind precomputes from its pairs (e.g. GM-NN's padded neighbour table); the
        work that a compiled evaluation (``TrainingConfig.compile_step``) cannot trace.
        This default returns the batch unchanged."""
        return batch

    def derivative_inputs(
        self, batch: Batch, compute_forces: bool, compute_stress: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tensors that forces and stress differentiate by: the positions (N, 3), Å (requiring gradients when
        ``compute_forces``) and, when ``compute_stress``, a zero strain ε (B, 3, 3) that requires gradients."""
        positions = batch.positions.to(self.dtype)
        if compute_forces and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        strain = None
        if compute_stress:
            strain = torch.zeros((batch.n_structures, 3, 3), dtype=self.dtype, device=positions.device)
            strain.requires_grad_(True)
        return positions, strain

    def _evaluate(
        self, batch: Batch, compute_forces: bool, compute_stress: bool, training: bool
    ) -> dict[str, torch.Tensor]:
        positions, strain = self.derivative_inputs(batch, compute_forces, compute_stress)
        return self.evaluate_at(batch, positions, strain, compute_forces, training)

    def evaluate_at(
        self,
        batch: Batch,
        positions: torch.Tensor,
        strain: torch.Tensor | None,
        compute_forces: bool,
        training: bool,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` from the tensors of :meth:`derivative_inputs` (the stress when ``strain`` is given).

        Creates no tensor that requires gradients, so it can run inside ``torch.compile``."""
        cells = batch.cells.to(self.dtype)
        inputs: list[torch.Tensor] = []
        if compute_forces:
            inputs.append(positions)
        displaced_positions, displaced_cells = positions, cells
        if strain is not None:
            inputs.append(strain)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            # r -> r (1 + ε) for atoms and lattice vectors (row vectors)
            displaced_positions = positions + torch.einsum('ni,nij->nj', positions, symmetric[batch.structure_index])
            displaced_cells = cells + torch.bmm(cells, symmetric)
        descriptors = self.descriptors(batch, displaced_positions, displaced_cells)
        atomic = self.atomic_energies(descriptors, batch.species)
        energy = torch.zeros(batch.n_structures, dtype=self.dtype, device=atomic.device)
        energy = energy.index_add(0, batch.structure_index, atomic)
        results = {'energy': energy, 'atomic_energies': atomic}
        if inputs:
            gradients = torch.autograd.grad(
                energy.sum(), inputs, create_graph=training, retain_graph=training, allow_unused=True
            )
            gradients = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gradients, strict=True)]
            if compute_forces:
                results['forces'] = -gradients[0]
            if strain is not None:
                volume = torch.linalg.det(cells).abs()
                periodic = batch.pbc.to(positions.device).all(dim=-1) & (volume > 1e-12)
                safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
                stress = gradients[-1] / safe_volume[:, None, None]
                results['stress'] = torch.where(periodic[:, None, None], stress, torch.zeros_like(stress))
        return results

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, extras: dict[str, Any] | None = None) -> None:
        """Write a one-file potential (weights + JSON hyper-parameters), see ``serialization.py``."""
        from aiida_alkit.models.serialization import save_potential_file

        save_potential_file(path, self.state_dict(), self.hyperparameters.to_dict(), extras)

    @classmethod
    def load(cls, path: str | os.PathLike | Any, device: str | torch.device = 'cpu') -> AtomicPotential:
        """Read a potential of this kind written by :meth:`save` (never unpickles arbitrary objects)."""
        from aiida_alkit.models.serialization import load_potential_file

        content = load_potential_file(path)
        return cls._from_content(content, path, device)

    @classmethod
    def _from_content(cls, content: Any, path: Any, device: str | torch.device) -> AtomicPotential:
        from aiida_alkit.models.serialization import PotentialFileError

        kind = content.hyperparameters.get('model_kind')
        if kind != cls.kind:
            raise PotentialFileError(f'{path}: a potential of kind {kind!r}, not {cls.kind!r}')
        try:
            hyperparameters = cls.hyperparameters_class.from_dict(content.hyperparameters)
        except (TypeError, ValueError) as exc:
            raise PotentialFileError(f'{path}: not a valid {cls.kind} potential: {exc}') from exc
        model = cls(hyperparameters, device=device)
        try:
            model.load_state_dict(content.state_dict)
        except RuntimeError as exc:
            raise PotentialFileError(f'{path}: weights do not match the hyper-parameters: {exc}') from exc
        return model


# ---------------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelKind:
    """A registered model kind: where its class lives (imported on first use) and what it needs installed."""

    name: str
    module: str
    class_name: str
    requires: str | None = None

    def model_class(self) -> type[AtomicPotential]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            needs = f' (install {self.requires})' if self.requires else ''
            raise ValueError(f'model kind {self.name!r} cannot be used here{needs}: {exc}') from exc
        return getattr(module, self.class_name)


#: Model kinds by name (``model.kind`` of the train parameters, ``model_kind`` of a potential file).
MODEL_KINDS: dict[str, ModelKind] = {
    'gmnn': ModelKind('gmnn', 'aiida_alkit.models.gmnn', 'GMNN'),
    'mace': ModelKind('mace', 'aiida_alkit.models.mace', 'MACEPotential', requires='mace-torch'),
}


def is_committee(kind: str) -> bool:
    """Whether ``kind`` is the kind of a committee file."""
    return isinstance(kind, str) and kind.endswith(COMMITTEE_SUFFIX)


def member_kind(kind: str) -> str:
    """The member kind of a committee kind (``kind`` itself for a single model)."""
    return kind[: -len(COMMITTEE_SUFFIX)] if is_committee(kind) else kind


def committee_kind(kind: str) -> str:
    """The committee kind of members of ``kind``."""
    return kind + COMMITTEE_SUFFIX


def _kind(name: str) -> ModelKind:
    entry = MODEL_KINDS.get(name)
    if entry is None:
        raise ValueError(f'unknown model kind {name!r}; known: {sorted(MODEL_KINDS)}')
    return entry


def model_kind_of(data: Mapping[str, Any]) -> str:
    """The model kind a hyper-parameter dictionary names (``model_kind``, or ``kind`` as users write it; default
    ``gmnn``); a ValueError when the two disagree or the kind is unknown."""
    given = {data[key] for key in ('model_kind', 'kind') if data.get(key) is not None}
    if len(given) > 1:
        raise ValueError(f'"kind" and "model_kind" disagree: {sorted(given)}')
    name = given.pop() if given else 'gmnn'
    _kind(member_kind(name))
    return name


def hyperparameters_from_dict(data: Mapping[str, Any]) -> Any:
    """The hyper-parameter object of the kind ``data`` names (see :func:`model_kind_of`), checked."""
    name = model_kind_of(data)
    if is_committee(name):
        raise ValueError(f'{name!r} is the kind of a committee file, not of a model to build')
    values = {key: value for key, value in data.items() if key != 'kind'}
    values['model_kind'] = name
    return _kind(name).model_class().hyperparameters_class.from_dict(values)


def default_learning_rates(kind: str) -> dict[str, float]:
    """The Adam learning rates per parameter group that a model kind trains with by default."""
    return dict(_kind(member_kind(kind)).model_class().default_learning_rates)


def build_potential(hyperparameters: Any, device: str | torch.device = 'cpu') -> AtomicPotential:
    """A new, initialised model from hyper-parameters (an object or a dictionary)."""
    if isinstance(hyperparameters, Mapping):
        hyperparameters = hyperparameters_from_dict(hyperparameters)
    return _kind(hyperparameters.model_kind).model_class()(hyperparameters, device=device)


def load_potential(path: str | os.PathLike | Any, device: str | torch.device = 'cpu') -> Any:
    """A model or committee from a potential file, of whatever kind it holds."""
    from aiida_alkit.models.serialization import PotentialFileError, load_potential_file

    content = load_potential_file(path)
    name = content.hyperparameters['model_kind']
    if is_committee(name):
        from aiida_alkit.models.committee import Committee

        return Committee._from_content(content, path, device)
    try:
        entry = _kind(name)
    except ValueError as exc:
        raise PotentialFileError(f'{path}: {exc}') from exc
    return entry.model_class()._from_content(content, path, device)
