"""Uncertainty-biased potential energy for exploration (HAL, seeds/002; uncertainty-biased MD, seeds/003).

The biased energy of a structure is (seeds/002 eq. 1, seeds/003 eq. 5)

    E_bias = E - τ u                                                                          [eV]

with E the (committee-mean) model energy, u an uncertainty (eV) and τ the biasing strength (dimensionless). The bias
force on atom i is ``F^bias_i = -∇_i(-τ u) = τ ∇_i u`` (seeds/002 eq. 9-11, seeds/003 eq. 6), the bias stress
``σ^bias = -(τ_s / V) ∂u/∂ε`` under the symmetric strain ``r -> r (1 + ε)`` (seeds/003 eq. 7, ASE sign, eV/Å³),
so that ``σ + σ^bias = (1/V) ∂E_bias/∂ε``. Both come from automatic differentiation.

**One model call, one backward pass.** All walkers are one :class:`~aiida_alkit.models.batching.Batch`. Every
committee member gets its own copy of the positions (and strain) as leaves, so a single backward pass of
``Σ_k E^k`` returns the gradient ``∇E^k`` (and ``∂E^k/∂ε``) of *every* member: the mean force, the member forces
(for the force-deviation and HAL stop criteria, seeds/002 eq. 6) and, by the chain rule through the small (K, B)
tensor of member energies, the bias force ``∇u = Σ_k (∂u/∂E^k) ∇E^k`` — for the committee σ this is exactly
seeds/002 eq. 9-10. Terms that depend on the positions otherwise (gradient features, GP posteriors) set
``energy_level = False``; they are evaluated on the same forward graph and differentiated with a second backward.

**Species-dependent strength (seeds/003, "species-dependent biasing strengths for bias forces").** A weight
``w_Z`` per element multiplies the bias force on the atoms of that element,
``F^bias_i = τ w_{Z_i} ∇_i u``: with ``w_H = 0`` hydrogen atoms feel no bias force while the heavy atoms are driven
towards high uncertainty (the paper's "27 degrees of freedom (heavy C, N and O atoms) were effectively biased").
``E_bias = E - τ u`` (used for Monte-Carlo moves and reported) is not weighted; with non-uniform weights the bias
forces are therefore not the exact gradient of ``E_bias`` (as in the paper). The weights do not enter the bias stress.

**Adaptive strength** (seeds/002 eq. 12, seeds/003 eq. 8): ``τ = τ_r Σ_m ||F(t_m)|| / Σ_m ||F^u(t_m)||`` over the
last 100 steps of each walker, with ``F^u = w ∇u`` the bias force per unit strength. The bias stress is rescaled the
same way with its own relative strength (seeds/003: "an equivalent expression is applied for bias stresses"):
``τ_s = τ_rs Σ_m ||σ(t_m)|| / Σ_m ||σ^u(t_m)||`` with ``σ^u = -(1/V) ∂u/∂ε`` and Frobenius norms, by a second
:class:`AdaptiveStrength`. Both can wait a burn-in (HAL: "performing a burn-in period to record the magnitudes ...
typically ... the latest 100 timesteps"; its reference code delays τ by 100 steps, ``DEFAULT_BURN_IN``) with τ = 0
while the norms of the unbiased dynamics are recorded. (seeds/002 prints eq. 12 with the ratio inverted; τ_r is
described there as "the relative average strength of the biasing force in comparison to the average force", which is
what this implements: ``τ ||F^u|| ≈ τ_r ||F||``.)

Units: Å, eV, eV/Å, eV/Å³. No AiiDA import.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from aiida_alkit.models.batching import Batch, VerletBatcher
from aiida_alkit.models.potential import AtomicPotential

__all__ = [
    'AdaptiveStrength',
    'BiasedPotential',
    'CommitteeUncertainty',
    'ConstantStrength',
    'PotentialResult',
    'UncertaintyTerm',
    'UncertaintyValues',
    'committee_force_deviation',
    'relative_force_uncertainty',
    'segment_max',
    'softmax_max',
]

#: Window of the adaptive biasing strength, MD steps (seeds/002: "the latest 100 timesteps").
DEFAULT_WINDOW = 100
#: Burn-in of the adaptive strength in the explore job, MD steps (seeds/002; the HAL reference code's delay).
DEFAULT_BURN_IN = 100
#: Regulariser ε of the relative force uncertainty, eV/Å (seeds/002 eq. 6: "often set to around 0.2 eV/Å").
DEFAULT_EPSILON = 0.2


# ---------------------------------------------------------------------------------------------------------- protocol
@dataclass
class UncertaintyValues:
    """What an uncertainty term returns.

    :param structure: (B,) per-structure uncertainty u, differentiable (eV for energy uncertainties).
    :param atoms: optional (N,) per-atom uncertainties (e.g. eV/Å), used for stop criteria and the pool only.
    """

    structure: torch.Tensor
    atoms: torch.Tensor | None = None


@runtime_checkable
class UncertaintyTerm(Protocol):
    """An uncertainty u(R) for the biased energy ``E - τ u``.

    ``__call__(outputs, batch, positions, strain)`` returns :class:`UncertaintyValues` with a per-structure u (B,)
    that is differentiable with respect to ``positions`` (N, 3) Å and ``strain`` (B, 3, 3) (or ``None`` when no
    stress is needed). ``outputs`` holds the model evaluation on that graph:

    * ``'energy'`` (B,) eV, mean over members; ``'member_energies'`` (K, B) eV;
    * ``'member_atomic_energies'`` (K, N) eV; ``'member_descriptors'``: list of K (N, d_0) descriptors;
    * ``'models'``: the K members (:class:`~aiida_alkit.models.potential.AtomicPotential`);
      ``'displaced_positions'`` (N, 3), ``'displaced_cells'`` (B, 3, 3) Å;
    * ``'member_readout_factors'``: {member index: (output_only, readout factors)} for the member a term asked for
      with an optional ``readout_request()`` method returning ``(model, output_only)``: computed in the same pass
      through the readout as that member's energies (see ``exploration.terms``), so the term does not run the
      readout again.

    ``energy_level`` (class attribute, default False): True when u depends on the positions only through
    ``outputs['member_energies']``; the potential then calls the term with only ``'energy'`` and ``'member_energies'``
    (detached leaves) and obtains ∇u by the chain rule in the same backward pass as the forces.
    ``name``: a short name for logs and pool metadata.
    """

    name: str

    def __call__(
        self, outputs: Mapping[str, Any], batch: Batch, positions: torch.Tensor | None, strain: torch.Tensor | None
    ) -> UncertaintyValues: ...


class CommitteeUncertainty:
    """Committee spread of the energy, ``u = σ = sqrt(1/λ + (1/K) Σ_k (E^k - Ē)²)`` (seeds/002 eq. 5), eV.

    Differentiable through all members; its gradient is seeds/002 eq. 9-10. The per-atom variant for stopping is the
    force deviation ``ε_i = sqrt((1/K) Σ_k ||F_i^k - F̄_i||²)`` (eV/Å, :func:`committee_force_deviation`), which the
    potential reports as ``atom_uncertainty`` whenever member forces are available.

    :param noise_variance: 1/λ of eq. 5, eV² (0 for a plain committee spread).
    :param min_variance: floor of σ², eV², keeping ∇σ = ∇σ²/(2σ) finite when all members agree.
    """

    name = 'committee_sigma'
    energy_level = True

    def __init__(self, noise_variance: float = 0.0, min_variance: float = 1e-20) -> None:
        if noise_variance < 0:
            raise ValueError(f'noise_variance must be >= 0 eV², got {noise_variance}')
        self.noise_variance = float(noise_variance)
        self.min_variance = float(min_variance)

    def __call__(
        self, outputs: Mapping[str, Any], batch: Batch, positions: torch.Tensor | None, strain: torch.Tensor | None
    ) -> UncertaintyValues:
        energies = outputs['member_energies']  # (K, B)
        variance = (energies - energies.mean(dim=0)).square().mean(dim=0) + self.noise_variance
        return UncertaintyValues(structure=variance.clamp_min(self.min_variance).sqrt())


# ---------------------------------------------------------------------------------------------------------- helpers
def segment_max(values: np.ndarray, structure_index: np.ndarray, n_structures: int) -> np.ndarray:
    """(B,) maximum of per-atom ``values`` (N,) over the atoms of each structure (-inf for an empty one)."""
    out = np.full(n_structures, -np.inf)
    np.maximum.at(out, structure_index, values)
    return out


def committee_force_deviation(member_forces: np.ndarray) -> np.ndarray:
    """(N,) ε_i = sqrt((1/K) Σ_k ||F_i^k - F̄_i||²), eV/Å, from member forces (K, N, 3) eV/Å."""
    deviation = member_forces - member_forces.mean(axis=0)
    return np.sqrt(np.square(deviation).sum(axis=-1).mean(axis=0))


def relative_force_uncertainty(member_forces: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> np.ndarray:
    """(N,) f_i = (1/K) Σ_k ||F_i^k - F̄_i|| / (||F̄_i|| + ε) (seeds/002 eq. 6), dimensionless; ε in eV/Å."""
    mean = member_forces.mean(axis=0)
    spread = np.linalg.norm(member_forces - mean, axis=-1).mean(axis=0)
    return spread / (np.linalg.norm(mean, axis=-1) + epsilon)


def softmax_max(values: np.ndarray, structure_index: np.ndarray, n_structures: int) -> np.ndarray:
    """(B,) max_i exp(f_i) / Σ_j exp(f_j) over the atoms of each structure (seeds/002 eq. 8)."""
    peak = segment_max(values, structure_index, n_structures)
    shifted = np.exp(values - peak[structure_index])
    total = np.zeros(n_structures)
    np.add.at(total, structure_index, shifted)
    return 1.0 / total  # the largest term is exp(0) = 1


# ---------------------------------------------------------------------------------------------------------- strength
class ConstantStrength:
    """A fixed biasing strength τ (dimensionless) for every walker."""

    adaptive = False

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(
        self, walker_ids: np.ndarray, physical_norms: np.ndarray, bias_norms: np.ndarray, update: bool = True
    ) -> np.ndarray:
        return np.full(len(walker_ids), self.value)

    def current(self, walker_ids: np.ndarray) -> np.ndarray:
        return np.full(len(walker_ids), self.value)


class AdaptiveStrength:
    """Re-scaled biasing strength, per walker (seeds/002 eq. 12, seeds/003 eq. 8).

    ``τ(t) = τ_r Σ_m ||F(t_m)|| / Σ_m ||F^u(t_m)||`` over the ``window`` most recent steps ``t_m`` of the walker,
    the current one included (so τ is defined from the first step), with ``||·||`` the norm of the (n_atoms, 3)
    force (or 3x3 stress) of the structure and ``F^u`` the bias force per unit strength. All past steps in the window
    have equal weight (the AdaGrad-like choice of seeds/003). Use one object for the forces and another for the
    stress (their histories differ).

    :param relative: τ_r (seeds/002: 0.05-0.25).
    :param window: number of steps averaged (100).
    :param burn_in: steps with τ = 0 while the first norms are recorded (0: bias from the first step; the explore job
        uses ``DEFAULT_BURN_IN``).
    :param max_value: optional upper bound on τ.
    """

    adaptive = True

    def __init__(
        self, relative: float, window: int = DEFAULT_WINDOW, burn_in: int = 0, max_value: float | None = None
    ) -> None:
        if relative < 0 or window < 1 or burn_in < 0:
            raise ValueError('need relative >= 0, window >= 1 and burn_in >= 0')
        self.relative = float(relative)
        self.window = int(window)
        self.burn_in = int(burn_in)
        self.max_value = max_value
        self._history: dict[int, deque] = {}
        self._steps: dict[int, int] = {}
        self._current: dict[int, float] = {}

    def __call__(
        self, walker_ids: np.ndarray, physical_norms: np.ndarray, bias_norms: np.ndarray, update: bool = True
    ) -> np.ndarray:
        """Record this step's norms (when ``update``) and return τ (B,) for the walkers ``walker_ids``."""
        if not update:
            return self.current(walker_ids)
        out = np.zeros(len(walker_ids))
        for row, walker in enumerate(np.asarray(walker_ids).tolist()):
            history = self._history.setdefault(walker, deque(maxlen=self.window))
            physical, bias = float(physical_norms[row]), float(bias_norms[row])
            if np.isfinite(physical) and np.isfinite(bias):
                history.append((physical, bias))
            self._steps[walker] = self._steps.get(walker, 0) + 1
            tau = 0.0
            if self._steps[walker] > self.burn_in and history:
                sums = np.sum(np.asarray(history), axis=0)
                tau = self.relative * sums[0] / sums[1] if sums[1] > 0 else 0.0
            if self.max_value is not None:
                tau = min(tau, float(self.max_value))
            self._current[walker] = tau
            out[row] = tau
        return out

    def current(self, walker_ids: np.ndarray) -> np.ndarray:
        """τ (B,) of the last update of each walker (0 before the first)."""
        return np.array([self._current.get(int(w), 0.0) for w in np.asarray(walker_ids).tolist()])


def _as_strength(value: float | ConstantStrength | AdaptiveStrength | None) -> ConstantStrength | AdaptiveStrength:
    if value is None:
        return ConstantStrength(0.0)
    if isinstance(value, (int, float)):
        return ConstantStrength(float(value))
    return value


# ---------------------------------------------------------------------------------------------------------- results
@dataclass
class PotentialResult:
    """One evaluation of the (biased) potential for the active walkers (numpy float64; units in brackets).

    ``energy`` (B,) [eV] member mean; ``energy_bias`` (B,) E - τ u [eV]; ``forces`` (N, 3) [eV/Å] physical
    (member-mean) forces; ``bias_forces`` (N, 3) [eV/Å] τ w_Z ∇u (zeros without a bias); ``stress`` and
    ``bias_stress`` (B, 3, 3) [eV/Å³, ASE sign] or None; ``uncertainty`` (B,) u [eV] (NaN without a term);
    ``atom_uncertainty`` (N,) [eV/Å] per-atom values of the term, else the committee force deviation, else None;
    ``member_forces`` (K, N, 3) [eV/Å] or None; ``tau``/``tau_stress`` (B,) strengths; ``min_distance`` (B,) [Å]
    shortest pair within the cutoff (inf if none); ``bias_force_norms``/``force_norms`` (B,) [eV/Å] per structure.
    """

    walker_ids: np.ndarray
    structure_index: np.ndarray
    energy: np.ndarray
    energy_bias: np.ndarray
    forces: np.ndarray | None = None
    bias_forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    bias_stress: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    member_forces: np.ndarray | None = None
    member_energies: np.ndarray | None = None
    tau: np.ndarray | None = None
    tau_stress: np.ndarray | None = None
    min_distance: np.ndarray | None = None
    force_norms: np.ndarray | None = None
    bias_force_norms: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_structures(self) -> int:
        return len(self.energy)

    def total_forces(self) -> np.ndarray:
        """(N, 3) forces driving the dynamics, F + F^bias, eV/Å."""
        if self.bias_forces is None:
            return self.forces
        return self.forces + self.bias_forces

    def total_stress(self) -> np.ndarray | None:
        """(B, 3, 3) σ + σ^bias, eV/Å³ (ASE sign), or None."""
        if self.stress is None:
            return None
        return self.stress if self.bias_stress is None else self.stress + self.bias_stress

    def subset(self, rows: np.ndarray) -> PotentialResult:
        """Result restricted to the structures ``rows`` (re-indexed)."""
        rows = np.asarray(rows, dtype=np.int64)
        atom_mask = np.isin(self.structure_index, rows)
        remap = np.full(self.n_structures, -1, dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        values: dict[str, Any] = {}
        for name in (
            'energy',
            'energy_bias',
            'stress',
            'bias_stress',
            'uncertainty',
            'tau',
            'tau_stress',
            'min_distance',
            'force_norms',
            'bias_force_norms',
            'walker_ids',
        ):
            value = getattr(self, name)
            values[name] = None if value is None else value[rows]
        for name in ('forces', 'bias_forces', 'atom_uncertainty'):
            value = getattr(self, name)
            values[name] = None if value is None else value[atom_mask]
        values['member_forces'] = None if self.member_forces is None else self.member_forces[:, atom_mask]
        values['member_energies'] = None if self.member_energies is None else self.member_energies[:, rows]
        values['structure_index'] = remap[self.structure_index[atom_mask]]
        return PotentialResult(extras=dict(self.extras), **values)


# ---------------------------------------------------------------------------------------------------------- potential
def _displace(batch: Batch, positions: torch.Tensor, strain: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and cells under the symmetric strain r -> r (1 + ε) (rows are vectors), Å."""
    cells = batch.cells.to(positions.dtype)
    if strain is None:
        return positions, cells
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    displaced = positions + torch.einsum('ni,nij->nj', positions, symmetric[batch.structure_index])
    return displaced, cells + torch.bmm(cells, symmetric)


def _member_energy(
    model: AtomicPotential,
    batch: Batch,
    positions: torch.Tensor,
    strain: torch.Tensor | None,
    readout_factors: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Energy (B,), atomic energies (N,), descriptors (N, d_0), displaced positions/cells of one member (eV, Å) and,
    when ``readout_factors`` is not None, its readout factors (``output_only`` = ``readout_factors``) from the same
    pass through the readout; else None."""
    displaced_positions, displaced_cells = _displace(batch, positions, strain)
    descriptors = model.descriptors(batch, displaced_positions, displaced_cells)
    factors = None
    if readout_factors is None:
        atomic = model.atomic_energies(descriptors, batch.species)
    else:
        atomic, factors = model.atomic_energies_and_readout_factors(descriptors, batch.species, readout_factors)
    energy = torch.zeros(batch.n_structures, dtype=atomic.dtype, device=atomic.device)
    energy = energy.index_add(0, batch.structure_index, atomic)
    return energy, atomic, descriptors, displaced_positions, displaced_cells, factors


def _members(model: Any) -> list[AtomicPotential]:
    if isinstance(model, AtomicPotential):
        return [model]
    members = getattr(model, 'members', model)
    members = list(members)
    if not members or not all(isinstance(member, AtomicPotential) for member in members):
        raise TypeError('model must be a model (AtomicPotential), a Committee or a sequence of models')
    return members


def _min_distances(batch: Batch) -> np.ndarray:
    """(B,) shortest pair distance within the cutoff per structure, Å (inf when a structure has no pair)."""
    n = batch.n_structures
    out = np.full(n, np.inf)
    if batch.edge_i.numel() == 0:
        return out
    positions = batch.positions.detach().double()
    cells = batch.cells.detach().double()
    shifts = batch.edge_shifts.double()
    edge_cells = cells[batch.structure_index[batch.edge_i]]
    vectors = positions[batch.edge_j] - positions[batch.edge_i] + torch.einsum('ek,ekl->el', shifts, edge_cells)
    lengths = torch.linalg.norm(vectors, dim=-1).cpu().numpy()
    np.minimum.at(out, batch.structure_index[batch.edge_i].cpu().numpy(), lengths)
    return out


def _structure_norms(vectors: torch.Tensor, structure_index: torch.Tensor, n_structures: int) -> torch.Tensor:
    """(B,) Frobenius norm of the per-atom (N, 3) vectors of each structure."""
    squares = torch.zeros(n_structures, dtype=vectors.dtype, device=vectors.device)
    return squares.index_add(0, structure_index, vectors.square().sum(dim=-1)).sqrt()


class BiasedPotential:
    """Biased energy, forces and stress of many walkers in one batched evaluation (see the module docstring).

    :param model: a model (:class:`~aiida_alkit.models.potential.AtomicPotential`), a ``Committee`` or a sequence of members; the
        physical energy and forces are the member means.
    :param term: the uncertainty u (e.g. :class:`CommitteeUncertainty`); None for unbiased dynamics.
    :param strength: τ for the bias forces: a number or a :class:`ConstantStrength`/:class:`AdaptiveStrength`.
    :param stress_strength: τ_s for the bias stress (seeds/003 eq. 7), likewise (default 0: no bias stress).
    :param species_strength: weight w_Z per element symbol (default 1), e.g. ``{'H': 0.0}`` (seeds/003).
    :param compute_stress: evaluate the stress (and bias stress) of walkers periodic in all directions (NPT).
    :param neighbor_skin: Verlet skin of the neighbour lists, Å (:class:`~aiida_alkit.models.batching.VerletBatcher`):
        each walker's list is built with ``cutoff + skin`` and reused while no atom can have come closer than the
        cutoff unnoticed (about: no atom moved more than skin/2, cell changes included); 0 rebuilds every evaluation.
        Results do not depend on it (beyond rounding). ``neighbor_rebuilds``/``neighbor_requests`` count the walker
        lists built/needed.
    """

    def __init__(
        self,
        model: Any,
        term: UncertaintyTerm | None = None,
        strength: float | ConstantStrength | AdaptiveStrength | None = 0.0,
        stress_strength: float | ConstantStrength | AdaptiveStrength | None = 0.0,
        species_strength: Mapping[str, float] | None = None,
        compute_stress: bool = False,
        neighbor_skin: float = 1.0,
    ) -> None:
        self.members = _members(model)
        first = self.members[0]
        for member in self.members[1:]:
            if member.species != first.species or member.cutoff != first.cutoff or member.dtype != first.dtype:
                raise ValueError('members must share species, cutoff and dtype')
        self.species = list(first.species)
        self.cutoff = float(first.cutoff)
        self.dtype = first.dtype
        self.device = first.device
        self.term = term
        self.strength = _as_strength(strength)
        self.stress_strength = _as_strength(stress_strength)
        if self.strength is self.stress_strength and getattr(self.strength, 'adaptive', False):
            raise ValueError('use separate AdaptiveStrength objects for the bias forces and the bias stress')
        unknown = set(species_strength or {}) - set(self.species)
        if unknown:
            raise ValueError(f'species_strength names elements {sorted(unknown)} the model does not know')
        self.species_weights = torch.tensor(
            [float((species_strength or {}).get(symbol, 1.0)) for symbol in self.species], dtype=torch.float64
        )
        self.compute_stress = bool(compute_stress)
        self.neighbor_skin = neighbor_skin

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def neighbor_skin(self) -> float:
        """Verlet skin of the neighbour lists, Å (setting it forgets the stored lists, not the counters)."""
        return self._neighbors.skin

    @neighbor_skin.setter
    def neighbor_skin(self, value: float) -> None:
        old = getattr(self, '_neighbors', None)
        self._neighbors = VerletBatcher(self.species, self.cutoff, value, device=self.device, dtype=self.dtype)
        if old is not None:
            self._neighbors.rebuilds, self._neighbors.requests = old.rebuilds, old.requests

    @property
    def neighbor_rebuilds(self) -> int:
        """Walker neighbour lists built so far (one per walker and build)."""
        return self._neighbors.rebuilds

    @property
    def neighbor_requests(self) -> int:
        """Walker neighbour lists needed so far (one per walker and evaluation)."""
        return self._neighbors.requests

    def make_batch(self, system: Any, store: bool = True) -> Batch:
        """Batch (neighbour lists) of a :class:`~aiida_alkit.exploration.dynamics.WalkerSystem`.

        :param store: keep lists rebuilt now for the next evaluations of these walkers (False for trial
            configurations: Monte-Carlo moves and other energy-only probes use the stored lists but leave them).
        """
        return self._neighbors(
            system.positions,
            system.numbers,
            system.cells,
            system.pbc,
            system.offsets,
            keys=getattr(system, 'walker_ids', None),
            store=store,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, system: Any, forces: bool = True, update_strength: bool = True) -> PotentialResult:
        """Energies, biased energies and (with ``forces``) forces, bias forces, stresses of all active walkers.

        :param system: a ``WalkerSystem`` (positions Å, numbers, cells Å, pbc, offsets, walker_ids).
        :param forces: compute forces and stresses (False: energies and u only, e.g. Monte-Carlo trials).
        :param update_strength: record this step's norms in an adaptive strength (False for re-evaluations).
        """
        batch = self.make_batch(system, store=forces)
        walker_ids = np.asarray(system.walker_ids)
        energy_level = self.term is None or bool(getattr(self.term, 'energy_level', False))
        if energy_level:
            raw = self._evaluate_energy_level(batch, forces)
        else:
            raw = self._evaluate_generic(batch, forces)
        return self._finish(batch, walker_ids, raw, forces, update_strength)

    def _stress_mask(self, batch: Batch) -> tuple[bool, torch.Tensor, torch.Tensor]:
        volume = torch.linalg.det(batch.cells.double()).abs()
        periodic = batch.pbc.all(dim=-1) & (volume > 1e-12)
        need = self.compute_stress and bool(periodic.any())
        return need, periodic, torch.where(periodic, volume, torch.ones_like(volume))

    def _evaluate_energy_level(self, batch: Batch, forces: bool) -> dict[str, Any]:
        """Fast path: per-member position/strain leaves, one backward of Σ_k E^k; ∇u by the chain rule."""
        n_members, n_structures = self.n_members, batch.n_structures
        need_stress, _, _ = self._stress_mask(batch)
        out: dict[str, Any] = {'need_stress': need_stress and forces}
        with torch.enable_grad() if forces else torch.no_grad():
            positions = batch.positions.detach().to(self.dtype).unsqueeze(0).repeat(n_members, 1, 1)
            strain = None
            if forces:
                positions.requires_grad_(True)
            if need_stress and forces:
                strain = torch.zeros((n_members, n_structures, 3, 3), dtype=self.dtype, device=positions.device)
                strain.requires_grad_(True)
            energies = torch.stack(
                [
                    _member_energy(member, batch, positions[k], None if strain is None else strain[k])[0]
                    for k, member in enumerate(self.members)
                ]
            )  # (K, B)
            if forces:
                inputs = [positions] if strain is None else [positions, strain]
                gradients = torch.autograd.grad(energies.sum(), inputs)
                out['member_gradients'] = gradients[0].detach().double()  # (K, N, 3) ∇E^k
                if strain is not None:
                    out['member_virials'] = gradients[1].detach().double()  # (K, B, 3, 3) ∂E^k/∂ε
        energies = energies.detach().double()
        out['member_energies'] = energies
        out['energy'] = energies.mean(dim=0)
        if forces:
            out['forces'] = -out['member_gradients'].mean(dim=0)
            if 'member_virials' in out:
                out['virial'] = out['member_virials'].mean(dim=0)
        if self.term is None:
            return out
        with torch.enable_grad():
            leaves = energies.clone().requires_grad_(forces)
            values = self.term({'energy': leaves.mean(dim=0), 'member_energies': leaves}, batch, None, None)
            u = values.structure
            if forces:
                (du_de,) = torch.autograd.grad(u.sum(), leaves, allow_unused=True)
                du_de = torch.zeros_like(leaves) if du_de is None else du_de  # (K, B)
                out['grad_u'] = torch.einsum('kn,knc->nc', du_de[:, batch.structure_index], out['member_gradients'])
                if 'member_virials' in out:
                    out['virial_u'] = torch.einsum('kb,kbij->bij', du_de, out['member_virials'])
        out['u'] = u.detach().double()
        out['u_atoms'] = None if values.atoms is None else values.atoms.detach().double()
        return out

    def _evaluate_generic(self, batch: Batch, forces: bool) -> dict[str, Any]:
        """General path: shared position/strain leaves; u on the model graph; two backward passes."""
        need_stress, _, _ = self._stress_mask(batch)
        out: dict[str, Any] = {'need_stress': need_stress and forces}
        with torch.enable_grad():
            positions = batch.positions.detach().to(self.dtype).requires_grad_(True)
            strain = None
            if need_stress:
                strain = torch.zeros((batch.n_structures, 3, 3), dtype=self.dtype, device=positions.device)
                strain.requires_grad_(True)
            request = self.term.readout_request() if hasattr(self.term, 'readout_request') else None
            evaluated = [
                _member_energy(
                    member, batch, positions, strain, request[1] if request and member is request[0] else None
                )
                for member in self.members
            ]
            member_energies = torch.stack([item[0] for item in evaluated])
            energy = member_energies.mean(dim=0)
            outputs = {
                'energy': energy,
                'member_energies': member_energies,
                'member_atomic_energies': torch.stack([item[1] for item in evaluated]),
                'member_descriptors': [item[2] for item in evaluated],
                'member_readout_factors': {
                    k: (request[1], item[5]) for k, item in enumerate(evaluated) if request and item[5] is not None
                },
                'models': self.members,
                'displaced_positions': evaluated[0][3],
                'displaced_cells': evaluated[0][4],
            }
            values = self.term(outputs, batch, positions, strain)
            u = values.structure
            if forces:
                inputs = [positions] if strain is None else [positions, strain]
                grad_e = torch.autograd.grad(energy.sum(), inputs, retain_graph=True)
                grad_u = torch.autograd.grad(u.sum(), inputs, allow_unused=True)
                grad_u = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grad_u, strict=True)]
                out['forces'] = -grad_e[0].detach().double()
                out['grad_u'] = grad_u[0].detach().double()
                if strain is not None:
                    out['virial'] = grad_e[1].detach().double()
                    out['virial_u'] = grad_u[1].detach().double()
        out['member_energies'] = member_energies.detach().double()
        out['energy'] = energy.detach().double()
        out['u'] = u.detach().double()
        out['u_atoms'] = None if values.atoms is None else values.atoms.detach().double()
        return out

    def _finish(
        self, batch: Batch, walker_ids: np.ndarray, raw: dict[str, Any], forces: bool, update_strength: bool
    ) -> PotentialResult:
        structure_index = batch.structure_index.cpu()
        n_structures = batch.n_structures
        energy = raw['energy'].cpu()
        u = raw.get('u')
        result = PotentialResult(
            walker_ids=walker_ids,
            structure_index=structure_index.numpy(),
            energy=energy.numpy(),
            energy_bias=energy.numpy().copy(),
            member_energies=raw['member_energies'].cpu().numpy(),
            min_distance=_min_distances(batch),
        )
        result.uncertainty = np.full(n_structures, np.nan) if u is None else u.cpu().numpy()
        if raw.get('u_atoms') is not None:
            result.atom_uncertainty = raw['u_atoms'].cpu().numpy()
        tau = np.zeros(n_structures)
        tau_stress = np.zeros(n_structures)
        if forces:
            physical = raw['forces'].cpu()
            result.forces = physical.numpy()
            force_norms = _structure_norms(physical, structure_index, n_structures)
            result.force_norms = force_norms.numpy()
            if 'member_gradients' in raw:
                result.member_forces = (-raw['member_gradients']).cpu().numpy()
                if result.atom_uncertainty is None and self.n_members > 1:
                    result.atom_uncertainty = committee_force_deviation(result.member_forces)
            bias_forces = torch.zeros_like(physical)
            if u is not None:
                weights = self.species_weights[batch.species.cpu()]
                unit_bias = raw['grad_u'].cpu() * weights[:, None]  # w_Z ∇u (bias force per unit τ), eV/Å
                bias_norms = _structure_norms(unit_bias, structure_index, n_structures)
                result.bias_force_norms = bias_norms.numpy()
                tau = self.strength(walker_ids, force_norms.numpy(), bias_norms.numpy(), update_strength)
                tau_atoms = torch.as_tensor(tau, dtype=torch.float64)[structure_index]
                nonzero = (tau_atoms != 0)[:, None]
                bias_forces = torch.where(nonzero, tau_atoms[:, None] * unit_bias, torch.zeros_like(unit_bias))
            result.bias_forces = bias_forces.numpy()
            if raw.get('need_stress'):
                _, periodic, volume = self._stress_mask(batch)
                periodic, volume = periodic.cpu(), volume.cpu()
                zero = torch.zeros((n_structures, 3, 3), dtype=torch.float64)
                stress = torch.where(periodic[:, None, None], raw['virial'].cpu() / volume[:, None, None], zero)
                result.stress = stress.numpy()
                bias_stress = zero
                if u is not None:
                    unit = torch.where(periodic[:, None, None], raw['virial_u'].cpu() / volume[:, None, None], zero)
                    stress_norms = torch.linalg.norm(stress.reshape(n_structures, -1), dim=-1).numpy()
                    unit_norms = torch.linalg.norm(unit.reshape(n_structures, -1), dim=-1).numpy()
                    tau_stress = self.stress_strength(walker_ids, stress_norms, unit_norms, update_strength)
                    tau_s = torch.as_tensor(tau_stress, dtype=torch.float64)[:, None, None]
                    bias_stress = torch.where(tau_s != 0, -tau_s * unit, zero)  # σ^bias = -(τ_s/V) ∂u/∂ε
                result.bias_stress = bias_stress.numpy()
        elif u is not None:
            tau = self.strength.current(walker_ids)
        if u is not None:
            result.energy_bias = result.energy - np.where(tau != 0, tau * result.uncertainty, 0.0)
        result.tau = np.asarray(tau, dtype=np.float64)
        result.tau_stress = np.asarray(tau_stress, dtype=np.float64)
        return result
