"""Uncertainty terms for biased exploration: gradient-feature GP/distance uncertainties (seeds/003), the HAL committee
σ̃ of a Bayesian ridge on last-layer features (seeds/002) and conformal calibration of their atom values.

Every term implements :class:`~aiida_alkit.exploration.bias.UncertaintyTerm` with ``energy_level = False``: u is
computed on the potential's forward graph from the Gaussian moments G_i(r, ε), so that
:class:`~aiida_alkit.exploration.bias.BiasedPotential` obtains the bias forces ``τ ∇u`` (seeds/003 eq. 6,
seeds/002 eq. 9-11) and the bias stress ``-(τ_s/V) ∂u/∂ε`` (seeds/003 eq. 7) by automatic differentiation.

**Differentiable gradient features.** :func:`differentiable_atomic_features` recomputes the product-structure
gradient features of :mod:`aiida_alkit.uncertainty.features` inside the autograd graph. The model's readout
factors (``x̃^(l-1)`` and the back-propagated signals ``g^(l) = ∂E_i/∂z^(l)`` of each linear layer; for GM-NN
formed analytically, seeds/003 eq. 17-18: ``g^(L) = c σ_Z``, ``g^(l) = φ'(z^(l)) ⊙ (W^(l+1)ᵀ g^(l+1)) / sqrt(d_l)``)
are differentiable functions of the descriptors. The atomic features are
then the last-layer product ``g^(L) x̃^(L-1)`` (FEAT(LL)) or the tensor sketch
``Σ_l (U_in x̃^(l-1)) ⊙ (U_out g^(l))`` (seeds/003 eq. 20) with the *same* random matrices as the
:class:`~aiida_alkit.uncertainty.features.GradientFeatureMap`, so the values equal :func:`compute_features`.

**Structure uncertainty of the gradient-feature term** (seeds/003 "Uncertainty-biased molecular dynamics"): the
paper biases by the *energy* uncertainty, i.e. the posterior- (eq. 4) or distance-based (eq. 3) uncertainty of the
total gradient features, which are the per-atom mean ``φ(S) = (1/N_at) Σ_i φ(G_i)`` (eq. 2, 21; the gradient of
the energy per atom). This is ``structure='total'`` with ``per_atom=True`` (default); ``per_atom=False`` uses the
sums (gradient of E, seeds/001 eq. 11), ``structure='max'``/``'mean'`` the max/mean of the atom uncertainties. The
atom uncertainties ``u_i`` (eq. 3/4 on atomic features) are reported per atom for the stop criterion (max over atoms,
calibrated to eV/Å by conformal prediction, seeds/003 Methods).

Units: u of the gradient-feature term is in feature units (eV per unit parameter; eV/atom with ``per_atom``), not
calibrated; HAL's σ̃ is in eV; calibrated atom values are in eV/Å. No AiiDA import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from aiida_alkit.exploration.bias import DEFAULT_EPSILON, UncertaintyValues
from aiida_alkit.models.batching import Batch
from aiida_alkit.models.potential import AtomicPotential
from aiida_alkit.uncertainty.conformal import ConformalCalibrator, atomic_force_rmse
from aiida_alkit.uncertainty.features import GradientFeatureMap, GradientFeatures, compute_features, iterate_batches
from aiida_alkit.uncertainty.gp import GradientUncertainty
from aiida_alkit.uncertainty.hal import DEFAULT_COMMITTEE_SIZE, BayesianRidge

__all__ = [
    'CalibratedTerm',
    'ExtrapolationGradeStop',
    'GradientFeatureUncertainty',
    'HALUncertainty',
    'atom_values',
    'calibrated',
    'differentiable_atomic_features',
    'fit_atom_calibrator',
    'structure_force_features',
]

#: Aggregations of the gradient-feature term into a structure uncertainty.
STRUCTURE_MODES = ('total', 'max', 'mean')
#: Atom values of the HAL term.
HAL_ATOM_VALUES = ('relative_force', 'force_deviation', None)


# ---------------------------------------------------------------------------------------------------------- features
def differentiable_atomic_features(
    feature_map: GradientFeatureMap,
    descriptors: torch.Tensor,
    species: torch.Tensor,
    factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Atomic gradient features φ(h_i) (N, d), eV, as a differentiable function of the descriptors (N, d_0).

    Same values as ``feature_map.atomic_features`` (FEAT(LL), seeds/001 eq. 14, or the tensor sketch, seeds/003
    eq. 20 with the map's random matrices), but inside the autograd graph, so that derivatives with respect to the
    positions and the strain flow through h_i. ``factors``: the readout factors of these descriptors, when the
    potential computed them with the energies (see ``readout_request`` of the feature terms).
    """
    return feature_map.atomic_features_of(descriptors, species, factors)


def _structure_sums(values: torch.Tensor, batch: Batch, mean: bool) -> torch.Tensor:
    """(B, ...) sums (or means) of per-atom ``values`` (N, ...) over the atoms of each structure."""
    out = torch.zeros((batch.n_structures, *values.shape[1:]), dtype=values.dtype, device=values.device)
    out = out.index_add(0, batch.structure_index.to(values.device), values)
    if mean:
        sizes = batch.n_atoms.to(device=values.device, dtype=values.dtype)
        out = out / sizes.reshape(-1, *([1] * (values.dim() - 1)))
    return out


def _segment_max(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) max over the atoms of each structure of (N,) ``values``, differentiable (gradient to the maximum)."""
    out = torch.zeros(batch.n_structures, dtype=values.dtype, device=values.device)
    index = batch.structure_index.to(values.device)
    return out.scatter_reduce(0, index, values, reduce='amax', include_self=False)


# ---------------------------------------------------------------------------------------------------------- base
class _FeatureTermBase:
    """Shared plumbing: the model's descriptors on the potential's graph, and a stand-alone evaluation."""

    name = 'feature_term'
    energy_level = False
    model: AtomicPotential
    feature_map: GradientFeatureMap

    def _descriptors(self, outputs: Mapping[str, Any], batch: Batch, positions: torch.Tensor | None) -> torch.Tensor:
        """G_i (N, d_0) of ``self.model`` on the graph of the potential (reused when the model is a member)."""
        for index, member in enumerate(outputs.get('models') or []):
            if member is self.model:
                return outputs['member_descriptors'][index]
        displaced = outputs.get('displaced_positions', positions)
        cells = outputs.get('displaced_cells')
        return self.model.descriptors(batch, displaced, cells)

    def _factors(self, outputs: Mapping[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The readout factors the potential computed with ``self.model``'s energies, if it did (else None)."""
        for index, member in enumerate(outputs.get('models') or []):
            if member is self.model:
                output_only, factors = (outputs.get('member_readout_factors') or {}).get(index, (None, None))
                return factors if output_only == self.feature_map.output_only else None
        return None

    def readout_request(self) -> tuple[AtomicPotential, bool]:
        """``(model, output_only)``: the readout factors this term reads. A potential that evaluates ``model`` as
        one of its members computes them with the member's energies in one pass through its readout
        (:meth:`~aiida_alkit.models.potential.AtomicPotential.atomic_energies_and_readout_factors`) and hands them
        over as ``outputs['member_readout_factors']`` instead of the term running that pass a second time."""
        return self.model, self.feature_map.output_only

    def _values(self, batch: Batch, atomic: torch.Tensor, positions: torch.Tensor | None) -> UncertaintyValues:
        """u and atom values from the differentiable atomic features φ(h_i) (N, d) of the batch."""
        raise NotImplementedError

    def __call__(
        self, outputs: Mapping[str, Any], batch: Batch, positions: torch.Tensor | None, strain: torch.Tensor | None
    ) -> UncertaintyValues:
        """u (B,) on the potential's graph (differentiable w.r.t. ``positions`` and ``strain``) and atom values (N,)."""
        descriptors = self._descriptors(outputs, batch, positions)
        atomic = differentiable_atomic_features(self.feature_map, descriptors, batch.species, self._factors(outputs))
        return self._values(batch, atomic, positions)

    def evaluate(self, data: Any, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
        """Stand-alone ``(u (B,), atom values (N,) or None)`` of structures (ASE ``Atoms``, a batch, ...), numpy."""
        structures, atoms = [], []
        for batch in iterate_batches(self.model, data, batch_size):
            with torch.enable_grad():
                positions = batch.positions.detach().to(self.model.dtype).requires_grad_(True)
                descriptors = self.model.descriptors(batch, positions)
                atomic = differentiable_atomic_features(self.feature_map, descriptors, batch.species)
                values = self._values(batch, atomic, positions)
            structures.append(values.structure.detach().cpu().double().numpy())
            if values.atoms is not None:
                atoms.append(values.atoms.detach().cpu().double().numpy())
        return np.concatenate(structures), (np.concatenate(atoms) if atoms else None)


# ---------------------------------------------------------------------------------------------------------- seeds/003
class GradientFeatureUncertainty(_FeatureTermBase):
    """Posterior- or distance-based uncertainty of (sketched) gradient features, differentiable (seeds/003).

    ``u`` per structure (see the module docstring): ``'total'`` (default, the paper's energy uncertainty)
    ``u(S) = sqrt(σ² φ(S)ᵀ (ΦᵀΦ + σ² I)^{-1} φ(S))`` (posterior, eq. 4 for total features) or
    ``u(S) = min_j ||φ(S) - φ(S_j^train)||`` (distance, eq. 3), with ``φ(S)`` the per-atom mean (``per_atom=True``,
    eq. 2/21) or the sum of the atomic features; ``'max'``/``'mean'``: max/mean over atoms of the atom uncertainties
    ``u_i`` (eq. 3/4 on atomic features). Atom values: ``u_i`` (N,) (``atoms=True``), for the stop criterion after
    conformal calibration (:func:`calibrated`).

    :param model: the model whose gradient features are used (a committee member of the potential, or its model).
    :param uncertainty: a fitted :class:`~aiida_alkit.uncertainty.gp.GradientUncertainty` (its method is the
        ``kind``), or training :class:`~aiida_alkit.uncertainty.features.GradientFeatures` (fitted here with
        ``kind``, ``sigma2``, ``n_representative``). Its training features must come from the same feature map
        and, for ``'total'``, the same per-atom normalisation.
    :param kind: ``'posterior'`` or ``'distance'`` (default: the fitted method, else ``'posterior'``).
    :param per_atom: total features are per-atom means (True, seeds/003 eq. 2) or sums (False).
    :param structure: ``'total'``, ``'max'`` or ``'mean'``.
    :param feature_map: the :class:`GradientFeatureMap` of the training features; else one is built from
        ``feature_kind``, ``dim``, ``seed`` (defaults of :func:`compute_features`).
    :param atoms: also report the atom uncertainties (needs atomic training features).
    :param min_variance: floor of u², feature units², keeping ∇u = ∇u²/(2u) finite at u = 0.
    """

    def __init__(
        self,
        model: AtomicPotential,
        uncertainty: GradientUncertainty | GradientFeatures,
        kind: str | None = None,
        per_atom: bool = True,
        structure: str = 'total',
        feature_map: GradientFeatureMap | None = None,
        feature_kind: str = 'sketch',
        dim: int = 512,
        seed: int = 0,
        atoms: bool = True,
        sigma2: float | None = None,
        n_representative: int | None = 2048,
        min_variance: float = 1e-30,
    ) -> None:
        if structure not in STRUCTURE_MODES:
            raise ValueError(f'structure must be one of {STRUCTURE_MODES}, got {structure!r}')
        if isinstance(uncertainty, GradientFeatures):
            if structure == 'total' and uncertainty.normalised_per_atom != bool(per_atom):
                raise ValueError('training structure features and per_atom disagree on the per-atom normalisation')
            if feature_map is None and uncertainty.kind != feature_kind:
                feature_kind = uncertainty.kind
            uncertainty = GradientUncertainty(kind or 'posterior', sigma2, n_representative).fit(uncertainty)
        if not isinstance(uncertainty, GradientUncertainty) or not uncertainty.fitted:
            raise TypeError('uncertainty must be a fitted GradientUncertainty or training GradientFeatures')
        if kind is not None and kind != uncertainty.method:
            raise ValueError(f'kind {kind!r} differs from the fitted method {uncertainty.method!r}')
        self.model = model
        self.uncertainty = uncertainty
        self.kind = uncertainty.method
        self.per_atom = bool(per_atom)
        self.structure = structure
        self.feature_map = feature_map or GradientFeatureMap(model, kind=feature_kind, dim=dim, seed=seed)
        if self.feature_map.model is not model:
            raise ValueError('the feature map belongs to another model')
        self.min_variance = float(min_variance)
        self.atoms = bool(atoms)
        self.name = f'gradient_{self.kind}'
        atomic_state, structure_state = uncertainty._atomic_state, uncertainty._structure_state
        if (structure != 'total' or self.atoms) and atomic_state is None:
            raise ValueError('atom uncertainties need a GradientUncertainty fitted on atomic features')
        if structure == 'total' and structure_state is None:
            raise ValueError("structure='total' needs a GradientUncertainty fitted on structure features")
        for state in (atomic_state, structure_state):
            if state is not None and state.shape[0 if self.kind == 'posterior' else 1] != self.feature_map.dim:
                raise ValueError('the feature dimension differs from the fitted training features')
        self._states = {'atomic': atomic_state, 'structure': structure_state}

    @classmethod
    def from_data(
        cls,
        model: AtomicPotential,
        data: Any,
        kind: str = 'posterior',
        per_atom: bool = True,
        feature_kind: str = 'sketch',
        dim: int = 512,
        seed: int = 0,
        sigma2: float | None = None,
        n_representative: int | None = 2048,
        **options: Any,
    ) -> GradientFeatureUncertainty:
        """Compute the training features of ``data`` (see :func:`compute_features`), fit and build the term."""
        feature_map = GradientFeatureMap(model, kind=feature_kind, dim=dim, seed=seed)
        features = compute_features(model, data, per_atom=True, normalise_per_atom=per_atom, feature_map=feature_map)
        fitted = GradientUncertainty(kind, sigma2, n_representative).fit(features)
        return cls(model, fitted, per_atom=per_atom, feature_map=feature_map, **options)

    def _state(self, name: str, like: torch.Tensor) -> torch.Tensor:
        state = self._states[name]
        if state.dtype != like.dtype or state.device != like.device:
            state = self._states[name] = state.to(device=like.device, dtype=like.dtype)
        return state

    def _uncertainty(self, features: torch.Tensor, name: str) -> torch.Tensor:
        """sqrt of eq. (4) (posterior, ``||φ T||²`` with the transform T of eq. 23) or eq. (3) (distance), (n,)."""
        state = self._state(name, features)
        if self.kind == 'posterior':
            squares = (features @ state).square().sum(dim=1)
        else:
            with torch.no_grad():  # the nearest representative; the distance is differentiated through φ only
                scores = torch.addmm(state.square().sum(1)[None, :], features.detach(), state.T, alpha=-2.0)
                nearest = torch.argmin(scores, dim=1)
            squares = (features - state[nearest]).square().sum(dim=1)
        return squares.clamp_min(self.min_variance).sqrt()

    def _values(self, batch: Batch, atomic: torch.Tensor, positions: torch.Tensor | None) -> UncertaintyValues:
        atom_u = None
        if self.structure != 'total' or self.atoms:
            atom_u = self._uncertainty(atomic if self.structure != 'total' else atomic.detach(), 'atomic')
        if self.structure == 'total':
            u = self._uncertainty(_structure_sums(atomic, batch, self.per_atom), 'structure')
        elif self.structure == 'max':
            u = _segment_max(atom_u, batch)
        else:
            u = _structure_sums(atom_u, batch, True)
        return UncertaintyValues(structure=u, atoms=atom_u.detach() if self.atoms else None)


# ---------------------------------------------------------------------------------------------------------- seeds/002
class HALUncertainty(_FeatureTermBase):
    """HAL committee σ̃ of a Bayesian ridge model on (last-layer) gradient features, differentiable (seeds/002).

    ``u = σ̃_E = sqrt(1/λ + (1/K) Σ_k (c^k·B - c̄·B)²)`` (eq. 5), eV, with the total features
    ``B = Σ_i φ(G_i)`` (eq. 2; FEAT(LL) by default, the features of the fitted ``ridge``), the posterior mean c̄ and
    the committee ``c^k ~ N(c̄, Σ)``; ∇u is eq. (9-10) and the bias force eq. (11).

    Atom values (for :class:`~aiida_alkit.exploration.dynamics.HALStop`, ``relative_force=atom_values``):
    ``'relative_force'`` f_i (eq. 6, dimensionless) with ``F^k = -∇(c^k·B)`` and ``F̄ = -∇(c̄·B)``; or
    ``'force_deviation'`` ``sqrt((1/K) Σ_k ||F_i^k - F̄_i||²)`` (eV/Å, for :class:`UncertaintyThreshold`); or None.
    They cost K + 1 extra backward passes through the model per evaluation (batched with ``is_grads_batched``
    where the autograd functions allow it, else a loop); use ``atom_quantity=None`` to skip them.

    :param model: the model whose features the ridge model was fitted on.
    :param ridge: a fitted :class:`~aiida_alkit.uncertainty.hal.BayesianRidge` (weights eV per feature unit).
    :param committee: (K, d) committee; default ``ridge.committee_``, else ``n_members`` samples drawn with ``seed``.
    :param feature_map: the feature map of the ridge's features (default FEAT(LL) of ``model``).
    :param include_noise: add 1/λ under the square root (eq. 5).
    :param epsilon: ε of eq. 6, eV/Å.
    """

    def __init__(
        self,
        model: AtomicPotential,
        ridge: BayesianRidge,
        committee: Any = None,
        n_members: int = DEFAULT_COMMITTEE_SIZE,
        seed: Any = 0,
        feature_map: GradientFeatureMap | None = None,
        atom_quantity: str | None = 'relative_force',
        include_noise: bool = True,
        epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        if atom_quantity not in HAL_ATOM_VALUES:
            raise ValueError(f'atom_quantity must be one of {HAL_ATOM_VALUES}, got {atom_quantity!r}')
        if epsilon <= 0:
            raise ValueError(f'epsilon must be positive, got {epsilon}')
        if not hasattr(ridge, 'coef_'):
            raise RuntimeError('the BayesianRidge is not fitted')
        if committee is None:
            committee = ridge.committee_ if ridge.committee_ is not None else ridge.sample_committee(n_members, seed)
        committee = np.asarray(committee, dtype=np.float64)
        self.model = model
        self.ridge = ridge
        self.feature_map = feature_map or GradientFeatureMap(model, kind='last_layer')
        if self.feature_map.model is not model:
            raise ValueError('the feature map belongs to another model')
        if ridge.coef_.shape[0] != self.feature_map.dim or committee.shape[1:] != ridge.coef_.shape:
            raise ValueError('ridge coefficients, committee and feature dimension disagree')
        self.atom_quantity = atom_quantity
        self.noise_variance = 1.0 / ridge.lambda_ if include_noise else 0.0
        self.epsilon = float(epsilon)
        self.name = 'hal_sigma'
        # rows: c̄, then c^1..c^K (eV per feature unit)
        self._weights = torch.from_numpy(np.concatenate([ridge.coef_[None, :], committee]))
        self._batched_ok = True

    @property
    def n_members(self) -> int:
        return int(self._weights.shape[0]) - 1

    def _values(self, batch: Batch, atomic: torch.Tensor, positions: torch.Tensor | None) -> UncertaintyValues:
        features = _structure_sums(atomic, batch, False)  # B = Σ_i φ(G_i), (B, d)
        weights = self._weights.to(device=features.device, dtype=features.dtype)
        energies = features @ weights.T  # (B, K + 1): c̄·B, c^k·B
        deviations = energies[:, 1:] - energies[:, :1]
        u = (deviations.square().mean(dim=1) + self.noise_variance).clamp_min(1e-300).sqrt()  # eq. (5)
        atoms = None
        if self.atom_quantity is not None and positions is not None and energies.requires_grad:
            atoms = self._atom_values(energies, positions)
        return UncertaintyValues(structure=u, atoms=atoms)

    def _member_forces(self, energies: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(K + 1, N, 3) forces ``-∇(w·B)`` of the posterior mean and the members, eV/Å (graph retained)."""
        n_rows = energies.shape[1]
        eye = torch.eye(n_rows, dtype=energies.dtype, device=energies.device)
        cotangents = eye[:, None, :].expand(n_rows, energies.shape[0], n_rows)
        if self._batched_ok:
            try:
                (grads,) = torch.autograd.grad(
                    energies, positions, grad_outputs=cotangents, retain_graph=True, is_grads_batched=True
                )
                return -grads.detach()
            except (RuntimeError, NotImplementedError):
                self._batched_ok = False  # custom autograd functions without a vmap rule
        rows = [
            torch.autograd.grad(energies, positions, grad_outputs=cotangents[k], retain_graph=True)[0]
            for k in range(n_rows)
        ]
        return -torch.stack(rows).detach()

    def _atom_values(self, energies: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        forces = self._member_forces(energies, positions)
        mean, members = forces[0], forces[1:]
        if self.atom_quantity == 'force_deviation':
            return (members - mean).square().sum(dim=-1).mean(dim=0).sqrt()
        spread = torch.linalg.vector_norm(members - mean, dim=-1).mean(dim=0)
        return spread / (torch.linalg.vector_norm(mean, dim=-1) + self.epsilon)  # f_i, eq. (6)


# ---------------------------------------------------------------------------------------------------------- calibration
class CalibratedTerm:
    """A term whose atom values are conformally calibrated, ``q̂ u_i`` (eV/Å, seeds/003 Methods).

    The structure value (the biased u) is left as it is unless ``scale_structure`` (the adaptive strength makes its
    scale irrelevant). With the calibrated atom values the potential's ``atom_uncertainty`` is in eV/Å, which the
    default :class:`~aiida_alkit.exploration.dynamics.UncertaintyThreshold` compares against its threshold
    (seeds/003: 1.0-1.5 eV/Å).
    """

    def __init__(self, term: Any, calibrator: ConformalCalibrator, scale_structure: bool = False) -> None:
        self.term = term
        self.model = getattr(term, 'model', None)
        self.calibrator = calibrator
        self.scale = float(calibrator.scale_)
        self.scale_structure = bool(scale_structure)
        self.name = f'{term.name}_calibrated'
        self.energy_level = bool(getattr(term, 'energy_level', False))
        if hasattr(term, 'readout_request'):
            self.readout_request = term.readout_request

    def __call__(
        self, outputs: Mapping[str, Any], batch: Batch, positions: torch.Tensor | None, strain: torch.Tensor | None
    ) -> UncertaintyValues:
        values = self.term(outputs, batch, positions, strain)
        structure = values.structure * self.scale if self.scale_structure else values.structure
        atoms = None if values.atoms is None else values.atoms * self.scale
        return UncertaintyValues(structure=structure, atoms=atoms)

    def evaluate(self, data: Any, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
        structure, atoms = self.term.evaluate(data, batch_size)
        structure = structure * self.scale if self.scale_structure else structure
        return structure, None if atoms is None else atoms * self.scale


def structure_force_features(model: AtomicPotential, atoms: Any) -> tuple[np.ndarray, np.ndarray]:
    """Last-layer atomic features φ_i (N, d) and force features ``-d(Σ_i φ_i)/dr`` (N, 3, d) of one structure.

    The force rows of HAL's Bayesian-ridge fit (seeds/002 eq. 18-19): the force of a linear model ``c·Σ_i φ_i`` is
    ``force_features @ c``. Computed by automatic differentiation, one backward pass per feature (d passes).
    """
    feature_map = GradientFeatureMap(model, kind='last_layer')
    batch = model.make_batch([atoms])

    def total(positions: torch.Tensor) -> torch.Tensor:
        return differentiable_atomic_features(feature_map, model.descriptors(batch, positions), batch.species).sum(0)

    jacobian = torch.autograd.functional.jacobian(total, batch.positions.detach().clone())  # (d, N, 3)
    atomic = differentiable_atomic_features(feature_map, model.descriptors(batch), batch.species).detach()
    return atomic.cpu().numpy(), -jacobian.permute(1, 2, 0).cpu().numpy()


def calibrated(term: Any, calibrator: ConformalCalibrator, scale_structure: bool = False) -> CalibratedTerm:
    """``term`` with atom values ``q̂ u_i`` in eV/Å (see :class:`CalibratedTerm`)."""
    return CalibratedTerm(term, calibrator, scale_structure)


def atom_values(system: Any, result: Any) -> np.ndarray:
    """(N,) the term's atom values of a potential result (``relative_force=`` of HALStop, ``atom_uncertainty=``)."""
    if result.atom_uncertainty is None:
        raise ValueError('the potential result carries no atom values')
    return result.atom_uncertainty


def fit_atom_calibrator(
    term: Any,
    structures: Sequence[Any],
    reference_forces: Sequence[Any] | None = None,
    predicted_forces: Sequence[Any] | None = None,
    alpha: float = 0.05,
    maxima: bool = False,
    clip: bool = True,
) -> ConformalCalibrator:
    """Conformal calibration of the term's atom values on held-out structures (seeds/003 Methods, eq. 28).

    Errors are the per-atom force RMSEs ``sqrt(mean_a (F_ia - F_ia^ref)²)`` (eV/Å) of ``term.model`` (or the given
    ``predicted_forces``, per structure (N_s, 3)) against ``reference_forces`` (default: the structures' calculator
    forces). The default rule pools the per-atom scores of all structures (rule 'atoms'); ``maxima`` calibrates the
    per-structure maxima of errors and uncertainties (Fig. 2, rule 'structure maxima') instead. ``clip``: a finite
    q̂ when there are too few scores for the confidence (the level clipped to 1; see
    :mod:`aiida_alkit.uncertainty.conformal`). ``calibrator.record(n_structures=...)`` says which rule was used.
    """
    structures = list(structures)
    if reference_forces is None:
        reference_forces = [atoms.get_forces() for atoms in structures]
    if predicted_forces is None:
        batch = term.model.make_batch(structures)
        predicted = term.model(batch, compute_forces=True)['forces'].detach().cpu().double().numpy()
        sizes = np.array([len(atoms) for atoms in structures])
        predicted_forces = np.split(predicted, np.cumsum(sizes)[:-1])
    _, atoms = term.evaluate(structures)
    if atoms is None:
        raise ValueError('the term reports no atom values')
    errors = [atomic_force_rmse(p, r) for p, r in zip(predicted_forces, reference_forces, strict=True)]
    if maxima:
        sizes = np.array([len(e) for e in errors])
        parts = np.split(atoms, np.cumsum(sizes)[:-1])
        maxima_u, maxima_e = [p.max() for p in parts], [e.max() for e in errors]
        return ConformalCalibrator().fit(maxima_u, maxima_e, alpha, clip=clip, rule='structure maxima')
    return ConformalCalibrator().fit(atoms, np.concatenate(errors), alpha, clip=clip, rule='atoms')


# ---------------------------------------------------------------------------------------------------------- seeds/004
class ExtrapolationGradeStop:
    """Stop a walker whose extrapolation grade exceeds ``gamma_break`` (seeds/004, D-optimality).

    ``γ = max_j |c_j|`` with ``c = b A^-1`` (:meth:`~aiida_alkit.uncertainty.doptimal.ActiveSet.extrapolation_grade`),
    ``b`` the walker's structure features (FEAT(LL) sums by default, as the ``dopt`` selection uses them) and ``A``
    the active set built by MaxVol from the training structures' features. Computing the features costs one backward
    pass per walker, so the grade is evaluated every ``check_every`` MD steps (recorded as ``gamma``, NaN between).

    :param model: the model. :param active_set: an :class:`~aiida_alkit.uncertainty.doptimal.ActiveSet` fitted on
        training features of the same ``feature_map``. :param check_every: steps between two evaluations.
    """

    unphysical = False

    def __init__(
        self, model: AtomicPotential, active_set: Any, feature_map: GradientFeatureMap, check_every: int = 1
    ) -> None:
        if check_every < 1:
            raise ValueError(f'check_every must be a positive number of steps, got {check_every}')
        self.model = model
        self.active_set = active_set
        self.feature_map = feature_map
        self.check_every = int(check_every)
        self._calls = 0

    @classmethod
    def from_training(
        cls, model: AtomicPotential, train: Any, gamma_break: float, kind: str = 'last_layer', check_every: int = 1
    ) -> ExtrapolationGradeStop:
        """Fit the active set on the training configurations' structure features."""
        from aiida_alkit.uncertainty.doptimal import ActiveSet

        feature_map = GradientFeatureMap(model, kind=kind)
        features = compute_features(model, train, per_atom=False, feature_map=feature_map).structure
        gamma_select = min(2.0, float(gamma_break))
        active_set = ActiveSet(gamma_select=gamma_select, gamma_break=float(gamma_break)).fit(np.asarray(features))
        return cls(model, active_set, feature_map, check_every)

    def check(self, system: Any, result: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from aiida_alkit.io.arrays import ConfigurationArrays

        self._calls += 1
        n = system.n_structures
        if (self._calls - 1) % self.check_every:
            return np.full(n, '', dtype=object).astype(str), {'gamma': np.full(n, np.nan)}
        frames = ConfigurationArrays(
            positions=system.positions,
            numbers=system.numbers,
            cells=system.cells,
            pbc=system.pbc,
            offsets=system.offsets,
        )
        features = compute_features(self.model, frames, per_atom=False, feature_map=self.feature_map).structure
        gamma = np.atleast_1d(np.asarray(self.active_set.extrapolation_grade(np.asarray(features)), dtype=np.float64))
        reasons = np.where(gamma > self.active_set.gamma_break, 'extrapolation', '')
        return reasons.astype(str), {'gamma': gamma}
