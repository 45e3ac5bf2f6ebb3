"""The explore job's bias kinds and stop criteria, each defined once in a registry (no AiiDA import).

A **bias kind** (``explore.parameters.bias.kind``) builds the uncertainty u of E_bias = E - τu from the
:class:`ExploreContext`; a **stop criterion** (a key of ``explore.parameters.stop``: ``uncertainty``, ``hal``,
``gamma_break``) turns its settings into walker stop criteria of :class:`~aiida_alkit.exploration.dynamics.BatchedMD`
and may supply or adjust the bias term it reads (the calibrated stop evaluates the calibration's term, HAL's stop
reads its term's relative forces). The built-ins implement the papers (:data:`BUILTIN_BIAS_KINDS`,
:data:`BUILTIN_STOP_CRITERIA`); a plugin package adds its own through the entry-point groups
:data:`BIAS_KIND_ENTRY_POINT_GROUP` and :data:`STOP_CRITERION_ENTRY_POINT_GROUP` (a built-in name cannot be
replaced). A plugin stop criterion takes its settings from ``stop.<its name>`` (any JSON value; absent or null: off),
a plugin bias kind its own from ``bias.options``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aiida_alkit.jobs.common import progress

if TYPE_CHECKING:
    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.jobs.explore_parameters import ExploreParameters

__all__ = [
    'BIAS_KIND_ENTRY_POINT_GROUP',
    'BUILTIN_BIAS_KINDS',
    'BUILTIN_STOP_CRITERIA',
    'STOP_CRITERION_ENTRY_POINT_GROUP',
    'AtomCalibration',
    'BiasKind',
    'ExploreContext',
    'StopCriterion',
    'bias_kinds',
    'bias_term_and_stop_criteria',
    'stop_criteria',
]

#: Entry-point group of plugin bias kinds (each entry point names a :class:`BiasKind`).
BIAS_KIND_ENTRY_POINT_GROUP = 'alkit.bias_kinds'
#: Entry-point group of plugin stop criteria (each entry point names a :class:`StopCriterion`).
STOP_CRITERION_ENTRY_POINT_GROUP = 'alkit.stop_criteria'


@dataclass
class AtomCalibration:
    """The explore job's one calibration: a gradient-feature posterior term whose atom values ``q̂ u_i`` are force
    -error bounds in eV/Å, and its record (rule, alpha, quantile level, q̂, validation size) for ``results.json``."""

    term: Any
    record: dict[str, Any]


@dataclass
class ExploreContext:
    """What a bias kind or a stop criterion is built from.

    :param members: the potential's models (one, or a committee's members; ``members[0]`` carries the features).
    :param train: the training set (with ``info['split']``), or None when the job was given none.
    :param settings: the job's typed parameters.
    :param calibration: the calibrated gradient-feature term of ``members[0]`` (seed 003), or None.
    """

    members: list
    train: ConfigurationArrays | None
    settings: ExploreParameters
    calibration: AtomCalibration | None

    @property
    def committee(self) -> bool:
        return len(self.members) > 1


@dataclass(frozen=True)
class BiasKind:
    """One bias kind: ``build(context)`` returns the term u (an object with ``evaluate`` as the built-in terms of
    :mod:`aiida_alkit.exploration.terms` / :mod:`aiida_alkit.exploration.bias`) or None for no bias.

    ``calibrated``: on a single model, ``stop.uncertainty`` compares this kind's calibrated gradient-feature atom
    uncertainty (eV/Å), i.e. the calibration's term is the one the MD evaluates (zero strength when the kind builds no
    term itself).
    """

    name: str
    build: Callable[[ExploreContext], Any]
    calibrated: bool = False
    description: str = ''


@dataclass(frozen=True)
class StopCriterion:
    """One stop criterion: ``build(context, settings, term)`` returns ``(criteria, term)``: the walker criteria
    (objects with the interface of :class:`~aiida_alkit.exploration.dynamics.UncertaintyThreshold`) and the bias term
    the MD then evaluates (the one given, adjusted, or one the criterion needs when the bias kind built none)."""

    name: str
    build: Callable[[ExploreContext, Any, Any], tuple[list, Any]]
    description: str = ''


# ------------------------------------------------------------------------------------------------------ bias kinds
def _no_bias(context: ExploreContext) -> None:
    return None


def _committee_bias(context: ExploreContext):
    """Committee σ of the energy (seed 002 eq. 5 on a model committee)."""
    from aiida_alkit.exploration.bias import CommitteeUncertainty

    if not context.committee:
        raise ValueError('bias kind "committee" needs a committee potential (committee_size > 1)')
    return CommitteeUncertainty()


def _gradient_bias(context: ExploreContext):
    """Gradient-feature posterior (seed 003): the calibration's term (fitted on the 'train' rows) when there is one,
    else a posterior fitted on the whole training set (no calibrated stop then)."""
    if context.calibration is not None:
        return context.calibration.term
    if context.train is None:
        raise ValueError('bias kind "gradient" needs the training set (input "training")')
    from aiida_alkit.exploration.terms import GradientFeatureUncertainty

    bias = context.settings.bias
    return GradientFeatureUncertainty.from_data(context.members[0], context.train, kind='posterior', dim=bias.dim)


def _hal_bias(context: ExploreContext):
    """HAL's Bayesian-ridge σ̃ on last-layer features (seed 002), fitted on the training energies and, for at most
    ``bias.force_structures`` (50) configurations, their forces (eq. 18-19)."""
    train = context.train
    if train is None:
        raise ValueError('bias kind "hal" needs the training set (input "training")')
    from aiida_alkit.exploration.terms import HALUncertainty, structure_force_features
    from aiida_alkit.uncertainty.features import compute_features
    from aiida_alkit.uncertainty.hal import BayesianRidge, build_design_matrix

    model = context.members[0]
    features = np.asarray(compute_features(model, train, kind='last_layer', per_atom=False).structure)
    if train.forces is None:
        design, targets = build_design_matrix(features, train.energy)
    else:  # the force rows of eq. 18-19, for at most `force_structures` configurations (d backward passes each)
        chosen = np.arange(min(len(train), context.settings.bias.force_structures))
        structures = [train.get_atoms(int(i)) for i in chosen]
        force_features = [structure_force_features(model, atoms)[1] for atoms in structures]
        design, targets = _hal_design(features, train, chosen, force_features, [a.get_forces() for a in structures])
    return HALUncertainty(model, BayesianRidge().fit(design, targets), atom_quantity=None)


def _hal_design(features, train, chosen, force_features, forces):
    """Energy rows of every training configuration plus force rows of the ``chosen`` ones."""
    from aiida_alkit.uncertainty.hal import build_design_matrix

    energy_design, energy_targets = build_design_matrix(features, train.energy)
    force_design, force_targets = build_design_matrix(
        features[chosen], train.energy[chosen], force_features=force_features, forces=forces
    )
    n_energy_rows = len(chosen)  # build_design_matrix puts the energy rows first
    return (
        np.concatenate([energy_design, force_design[n_energy_rows:]]),
        np.concatenate([energy_targets, force_targets[n_energy_rows:]]),
    )


#: name -> bias kind of the papers' biases (``bias.kind``).
BUILTIN_BIAS_KINDS: dict[str, BiasKind] = {
    kind.name: kind
    for kind in (
        BiasKind('none', _no_bias, calibrated=True, description='unbiased MD'),
        BiasKind('committee', _committee_bias, description='committee energy σ (seed 002 eq. 5)'),
        BiasKind('gradient', _gradient_bias, calibrated=True, description='gradient-feature posterior (seed 003)'),
        BiasKind('hal', _hal_bias, description="HAL's Bayesian-ridge σ̃ on last-layer features (seed 002)"),
    )
}


# --------------------------------------------------------------------------------------------------- stop criteria
def _uncertainty_stop(context: ExploreContext, threshold: float, term):
    """``stop.uncertainty`` (eV/Å): a committee stops on its max atom force deviation; a single model with a
    calibrated bias kind on its gradient-feature atom uncertainty, conformally calibrated to a force-error bound (the
    calibration the candidate scores use too), which the MD then evaluates (at zero strength without bias)."""
    from aiida_alkit.exploration.dynamics import UncertaintyThreshold
    from aiida_alkit.exploration.terms import atom_values

    kind = context.settings.bias.kind
    if context.committee:
        return [UncertaintyThreshold(float(threshold))], term
    if not bias_kinds()[kind].calibrated:
        raise ValueError(f'stop.uncertainty is for committees and the gradient bias; with bias {kind!r} use stop.hal')
    if context.calibration is None:
        progress('stop.uncertainty not applied: calibrating it needs a validation configuration with forces')
        return [], term
    return [UncertaintyThreshold(float(threshold), atom_uncertainty=atom_values)], context.calibration.term


def _hal_stop(context: ExploreContext, settings, term):
    """``stop.hal``: HAL's relative-force / softmax criterion (seed 002 eq. 6-8) on the HAL term's member forces."""
    from aiida_alkit.exploration.dynamics import HALStop
    from aiida_alkit.exploration.terms import atom_values

    kind = context.settings.bias.kind
    if kind != 'hal' or term is None:
        raise ValueError(f'stop.hal needs bias kind "hal", not {kind!r}')
    term.atom_quantity = 'relative_force'
    return [HALStop(f_tol=settings.f_tol, s_tol=settings.s_tol, relative_force=atom_values)], term


def _gamma_stop(context: ExploreContext, gamma_break: float, term):
    """``stop.gamma_break``: the D-optimality extrapolation grade of the first model (seed 004), checked every
    ``stop.check_every`` steps."""
    from aiida_alkit.exploration.terms import ExtrapolationGradeStop

    if context.train is None:
        raise ValueError('stop.gamma_break needs the training set (input "training")')
    check_every = context.settings.stop.check_every
    stop = ExtrapolationGradeStop.from_training(
        context.members[0], context.train, float(gamma_break), check_every=check_every
    )
    return [stop], term


#: name -> criterion, in the order the job applies them; the name is the key of ``stop`` holding its settings.
BUILTIN_STOP_CRITERIA: dict[str, StopCriterion] = {
    criterion.name: criterion
    for criterion in (
        StopCriterion('uncertainty', _uncertainty_stop, 'calibrated uncertainty or committee deviation, eV/Å'),
        StopCriterion('hal', _hal_stop, "HAL's softmax criterion (seed 002 eq. 6-8)"),
        StopCriterion('gamma_break', _gamma_stop, 'D-optimality extrapolation grade (seed 004)'),
    )
}


# -------------------------------------------------------------------------------------------------------- registry
def _plugins(group: str, builtin: dict[str, Any], kind: type) -> dict[str, Any]:
    """name -> ``kind`` object of the installed plugins' entry points in ``group`` (a built-in name is skipped)."""
    from importlib.metadata import entry_points

    found = {}
    for entry_point in entry_points(group=group):
        name = entry_point.name.lower()
        if name in builtin:
            continue
        value = entry_point.load()
        if not isinstance(value, kind):
            raise TypeError(f'entry point {name!r} of {group} is not a {kind.__name__}: {value!r}')
        found[name] = value
    return found


@functools.cache
def _plugin_bias_kinds() -> dict[str, BiasKind]:
    return _plugins(BIAS_KIND_ENTRY_POINT_GROUP, BUILTIN_BIAS_KINDS, BiasKind)


@functools.cache
def _plugin_stop_criteria() -> dict[str, StopCriterion]:
    return _plugins(STOP_CRITERION_ENTRY_POINT_GROUP, BUILTIN_STOP_CRITERIA, StopCriterion)


def bias_kinds() -> dict[str, BiasKind]:
    """Every bias kind: the built-in ones first, then those of installed plugins (looked up once per process)."""
    return {**BUILTIN_BIAS_KINDS, **_plugin_bias_kinds()}


def stop_criteria() -> dict[str, StopCriterion]:
    """Every stop criterion: the built-in ones first, then those of installed plugins (looked up once per process)."""
    return {**BUILTIN_STOP_CRITERIA, **_plugin_stop_criteria()}


def bias_term_and_stop_criteria(context: ExploreContext) -> tuple[list, Any]:
    """The walker stop criteria (besides the physical limits) and the bias term the MD evaluates: the bias kind's
    term, then each stop criterion whose settings are given, in registry order, may supply or adjust it."""
    term = bias_kinds()[context.settings.bias.kind].build(context)
    criteria: list = []
    stop = context.settings.stop
    for name, criterion in stop_criteria().items():
        settings = getattr(stop, name) if name in BUILTIN_STOP_CRITERIA else stop.plugins.get(name)
        if settings is None:
            continue
        new, term = criterion.build(context, settings, term)
        criteria.extend(new)
    return criteria, term
