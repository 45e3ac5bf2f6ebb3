"""The checks of a campaign's inputs, in plain Python (no AiiDA node is read or made here).

:class:`~aiida_alkit.workflows.active_learning.ActiveLearningWorkChain` calls :func:`campaign_problem` in its first
step, ``validate_inputs``, with the plain content of its inputs (dictionaries, numbers and the datasets'
:class:`~aiida_alkit.io.arrays.ConfigurationArrays`), and fails with the exit code a :class:`Problem` names. The checks
run in a step rather than in the port validators because a port validator can only raise: the campaign would never
exist, its inputs would not be stored and the user would get no exit code (see the module docstring of
``active_learning``). The campaign's schedule arithmetic (:func:`round_explore_parameters`, :func:`max_pool_size`) lives
here too, because the checks and the explore step must agree on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import MIN_INTERATOMIC_DISTANCE, ConfigurationArrays
from aiida_alkit.jobs.explore_parameters import ExploreParameters, explore_problem
from aiida_alkit.workflows.strategies import builtin_strategies, strategies

__all__ = [
    'EXPLORE_DEFAULTS',
    'MAX_PRESSURE_GPA',
    'SCHEDULED_SETTINGS',
    'SCHEDULE_KEYS',
    'SETTING_RULES',
    'STRATEGIES',
    'VOLUME_PER_ATOM_RANGE',
    'CampaignInputs',
    'DatasetContent',
    'Problem',
    'campaign_problem',
    'max_pool_size',
    'round_explore_parameters',
    'scheduled_value',
]

#: The built-in strategies (:mod:`aiida_alkit.workflows.strategies`; plugins may add more).
STRATEGIES = tuple(builtin_strategies())
#: Explore settings a schedule may set per round, and the schedule list of each (K, GPa, MD steps, walkers).
SCHEDULED_SETTINGS = {
    'temperature_K': 'temperatures',
    'pressure_GPa': 'pressures',
    'steps': 'steps',
    'walkers': 'walkers',
}
SCHEDULE_KEYS = tuple(SCHEDULED_SETTINGS.values())
#: A fully periodic cell with a volume per atom (Å³) outside this range has its coordinates in the wrong unit (nm or
#: Bohr read as Å, or the reverse): 2 Å³ per atom is a number density of 0.5 Å⁻³, several times that of any solid.
VOLUME_PER_ATOM_RANGE = (2.0, 200.0)
#: Largest pressure magnitude (GPa) an exploration may ask for; beyond it the value is in the wrong unit (Pa, bar).
MAX_PRESSURE_GPA = 1000.0
#: Defaults the explore job applies when a setting is absent (from ``ExploreParameters``).
EXPLORE_DEFAULTS = {
    key: getattr(ExploreParameters(), key)
    for key in ('temperature_K', 'pressure_GPa', 'steps', 'walkers', 'sample_every')
}
#: Valid values of the campaign's scalar inputs: key -> (test, what a valid value is).
SETTING_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    'max_rounds': (lambda v: v >= 1, 'at least one round is needed'),
    'accurate_fraction': (lambda v: 0 < v <= 1, 'a fraction in (0, 1] is needed'),
    'max_failed_fraction': (lambda v: 0 <= v <= 1, 'a fraction in [0, 1] is needed'),
    'validation_fraction': (lambda v: 0 <= v < 1, 'a fraction in [0, 1) is needed'),
    'label_budget': (lambda v: v >= 1, 'at least one label is needed'),
    'target_force_rmse': (lambda v: v > 0, 'a positive force RMSE (eV/Å) is needed'),
}
#: Batch size the select step uses when ``select.parameters`` has none.
DEFAULT_BATCH_SIZE = 8
#: Labels each input set must carry, and why (``test_dataset`` needs forces only with a ``target_force_rmse``).
_NEEDED_LABELS = {'initial_dataset': ('energy', 'forces'), 'test_dataset': ('energy',)}
_WHY_LABELS = {
    'initial_dataset': 'it is trained on and merged with force-labelled picks (pass unlabelled structures as '
    'initial_structures to label them in round 0)',
    'test_dataset': 'the test errors (and a target_force_rmse) are computed against them',
}


@dataclass(frozen=True)
class Problem:
    """The first problem found: the name of the campaign's exit code and the values its message is formatted with."""

    exit_code: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetContent:
    """What the checks read of a configuration set: its size, labels and species, and its arrays (loaded only for the
    geometry check, which runs after the set was found non-empty)."""

    size: int
    labels: tuple[str, ...]
    species: tuple[str, ...]
    load: Callable[[], ConfigurationArrays]

    @classmethod
    def of(cls, arrays: ConfigurationArrays) -> DatasetContent:
        """The content of configurations already in memory."""
        return cls(len(arrays), tuple(arrays.labels), tuple(arrays.species), lambda: arrays)


@dataclass
class CampaignInputs:
    """The plain content of a campaign's inputs.

    :param settings: the scalar inputs that are set (``max_rounds``, ``label_budget``, ``accurate_fraction``, ...).
    :param datasets: input name → content of the configurations, for ``initial_dataset`` / ``initial_structures``, ``seeds`` and
        ``test_dataset`` as far as given (the first is the set a fresh model takes its species from).
    :param potential: ``(label, hyper-parameters)`` of a loadable ``initial_potential``, or the :class:`Problem` of
        one that does not load (reported in its turn, after the problems of the settings and data).
    :param pseudo_elements: ``(family label, elements it covers)`` when pw.x labels, or the :class:`Problem` of a
        family that cannot serve (reported in its turn).
    """

    strategy: str
    settings: dict[str, float]
    schedule: dict[str, Any]
    train: dict[str, Any]
    explore: dict[str, Any]
    select: dict[str, Any]
    seed: int
    datasets: dict[str, DatasetContent]
    potential: tuple[str, dict[str, Any]] | Problem | None = None
    pseudo_elements: tuple[str, Sequence[str]] | Problem | None = None


def campaign_problem(inputs: CampaignInputs) -> Problem | None:
    """The first problem of a campaign's inputs, checked in the order a user would fix them, or None."""
    for check in (
        _settings_problem,
        _md_settings_problem,
        _datasets_problem,
        _potential_problem,
        _species_problem,
        _pseudo_problem,
        _geometry_problem,
    ):
        problem = check(inputs)
        if problem is not None:
            return problem
    return None


# ---------------------------------------------------------------------- schedule arithmetic
def scheduled_value(schedule: Mapping[str, Any], key: str, round_index: int, default: Any) -> Any:
    """Value of the schedule list ``key`` in round ``round_index`` (1-based; the last value repeats), else ``default``."""
    values = schedule.get(key)
    if not values:
        return default
    return values[min(round_index - 1, len(values) - 1)]


def round_explore_parameters(
    explore: Mapping[str, Any], schedule: Mapping[str, Any], round_index: int, seed: int
) -> dict[str, Any]:
    """The explore job's parameters of round ``round_index``: temperature (K), pressure (GPa), steps and walkers from
    the schedule when it has them, the seed derived from the campaign's ``seed``."""
    parameters = dict(explore)
    values = {
        key: scheduled_value(schedule, schedule_key, round_index, parameters.get(key, EXPLORE_DEFAULTS[key]))
        for key, schedule_key in SCHEDULED_SETTINGS.items()
    }
    parameters['temperature_K'] = float(values['temperature_K'])
    parameters['pressure_GPa'] = None if values['pressure_GPa'] is None else float(values['pressure_GPa'])
    parameters['steps'] = int(values['steps'])
    parameters['walkers'] = int(values['walkers'])
    parameters['seed'] = seed * 1000 + round_index
    return parameters


def max_pool_size(walkers: int, steps: int, sample_every: int) -> int:
    """Most candidates one exploration can yield: each walker records a frame every ``sample_every`` MD steps and its
    stopping frame (jobs/explore.py, exploration/pool.py)."""
    return walkers * (steps // sample_every + 1)


def schedule_length(schedule: Mapping[str, Any]) -> int:
    """Number of distinct exploration stages in the schedule (the longest list; 1 without a schedule)."""
    lengths = [len(values) for values in schedule.values() if isinstance(values, (list, tuple))]
    return max(lengths, default=1)


# ---------------------------------------------------------------------- the checks
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _md_setting_problem(key: str, value: Any) -> str | None:
    """Why an MD setting of one round (temperature_K, pressure_GPa, steps, walkers) is unusable, or None."""
    if key == 'pressure_GPa':
        if value is None:
            return None
        if not _is_number(value):
            return 'the pressure must be a number of GPa (or null for NVT)'
        if abs(value) > MAX_PRESSURE_GPA:
            return f'|p| above {MAX_PRESSURE_GPA:g} GPa is beyond any material; is it in Pa or bar instead of GPa?'
        return None
    if not _is_number(value):
        return 'not a finite number'
    if key == 'temperature_K':
        return None if value > 0 else 'the MD temperature must be positive (K)'
    if value < 1 or value != int(value):
        return 'must be a whole number >= 1'
    return None


def _settings_problem(inputs: CampaignInputs) -> Problem | None:
    """Strategy, selection method, campaign scalars and train parameters."""
    from aiida_alkit.calculations.train import validate_train_parameters
    from aiida_alkit.selection.api import selectors

    known = tuple(strategies())
    if inputs.strategy not in known:
        return Problem('ERROR_UNKNOWN_STRATEGY', {'strategy': inputs.strategy, 'choices': ', '.join(known)})
    for key, (valid, reason) in SETTING_RULES.items():
        if key in inputs.settings and not valid(inputs.settings[key]):  # NaN fails every rule
            return Problem(
                'ERROR_INVALID_CAMPAIGN_SETTING', {'key': key, 'value': inputs.settings[key], 'reason': reason}
            )
    method, methods = inputs.select.get('method'), tuple(selectors())
    if not isinstance(method, str) or method.lower() not in methods:
        return Problem('ERROR_UNKNOWN_SELECTION_METHOD', {'method': method, 'choices': ', '.join(methods)})
    message = validate_train_parameters(inputs.train)
    if message:
        return Problem('ERROR_INVALID_TRAIN_PARAMETERS', {'message': message})
    return None


def _schedule_shape_problem(schedule: Mapping[str, Any]) -> Problem | None:
    """Only known schedule keys, each a list of per-round values."""
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    if unknown:
        reason = f'unknown keys; use {", ".join(SCHEDULE_KEYS)}'
        return Problem(
            'ERROR_INVALID_MD_SETTING', {'key': 'schedule', 'value': unknown, 'where': 'schedule', 'reason': reason}
        )
    for key, values in schedule.items():
        if not isinstance(values, (list, tuple)):
            return Problem(
                'ERROR_INVALID_MD_SETTING',
                {'key': f'schedule.{key}', 'value': values, 'where': 'schedule', 'reason': 'must be a list, one value '
                 'per round'},
            )  # fmt: skip
    return None


def _md_settings_problem(inputs: CampaignInputs) -> Problem | None:
    """The schedule and the explore parameters of every distinct round, then the batch size against the pool."""
    schedule, explore = inputs.schedule, inputs.explore
    problem = _schedule_shape_problem(schedule)
    if problem is not None:
        return problem
    # rounds after the longest schedule list repeat its last values: checking the distinct ones is enough
    rounds = range(1, min(int(inputs.settings.get('max_rounds', 1)), schedule_length(schedule)) + 1)
    for round_index in rounds:
        for key, schedule_key in SCHEDULED_SETTINGS.items():
            value = scheduled_value(schedule, schedule_key, round_index, explore.get(key, EXPLORE_DEFAULTS[key]))
            reason = _md_setting_problem(key, value)
            if reason:
                where = (
                    f'round {round_index} of schedule.{schedule_key}'
                    if schedule.get(schedule_key)
                    else 'explore.parameters'
                )
                return Problem(
                    'ERROR_INVALID_MD_SETTING', {'key': key, 'value': value, 'where': where, 'reason': reason}
                )
    return _explore_problem(inputs, rounds)


def _explore_problem(inputs: CampaignInputs, rounds: range) -> Problem | None:
    """Each distinct round's explore parameters as the job would get them, then the batch size against the pool."""
    capacities = []
    committee = inputs.train.get('committee_size', 1) > 1
    for round_index in rounds:
        parameters = round_explore_parameters(inputs.explore, inputs.schedule, round_index, inputs.seed)
        message = explore_problem(parameters)
        if not message and (parameters.get('bias') or {}).get('kind') == 'committee' and not committee:
            message = 'bias.kind "committee" needs a committee potential (train.parameters.committee_size > 1)'
        if message:
            return Problem('ERROR_INVALID_EXPLORE_PARAMETERS', {'round': round_index, 'message': message})
        sample_every = parameters.get('sample_every', EXPLORE_DEFAULTS['sample_every'])
        capacities.append(max_pool_size(parameters['walkers'], parameters['steps'], sample_every))
    batch_size = inputs.select.get('batch_size', DEFAULT_BATCH_SIZE)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        return Problem(
            'ERROR_INVALID_BATCH_SIZE', {'batch_size': batch_size, 'reason': 'it must be a whole number >= 1'}
        )
    largest = max(capacities)
    if batch_size > largest:
        best = rounds[capacities.index(largest)]
        reason = (
            f'no round can explore that many candidates: at most {largest} (walkers x (steps // sample_every + 1), '
            f'round {best})'
        )
        return Problem('ERROR_INVALID_BATCH_SIZE', {'batch_size': batch_size, 'reason': reason})
    return None


def _datasets_problem(inputs: CampaignInputs) -> Problem | None:
    """No empty set; labels where the campaign needs them."""
    for name, content in inputs.datasets.items():
        if content.size == 0:
            return Problem('ERROR_EMPTY_DATASET', {'name': name})
    needed = dict(_NEEDED_LABELS)
    if 'target_force_rmse' in inputs.settings:
        needed['test_dataset'] = ('energy', 'forces')
    for name, content in inputs.datasets.items():
        missing = [label for label in needed.get(name, ()) if label not in content.labels]
        if missing:
            return Problem(
                'ERROR_MISSING_LABELS', {'name': name, 'missing': ' and '.join(missing), 'reason': _WHY_LABELS[name]}
            )
    return None


def _potential_problem(inputs: CampaignInputs) -> Problem | None:
    """A warm-start potential matches the model kind and the committee setting (a committee continues a committee,
    one model one)."""
    if inputs.potential is None or isinstance(inputs.potential, Problem):
        return inputs.potential
    from aiida_alkit.jobs.train_parameters import warm_start_problem

    label, hyperparameters = inputs.potential
    message = warm_start_problem(hyperparameters['model_kind'], inputs.train)
    if message:
        return Problem('ERROR_INVALID_POTENTIAL', {'pk': label, 'message': message})
    return None


def _species_problem(inputs: CampaignInputs) -> Problem | None:
    """Every set's species are known to the potential: ``train.parameters.model.species``, the initial potential,
    or else the species of the first set (what a fresh model is built with)."""
    sources = []
    model_species = (inputs.train.get('model') or {}).get('species')
    if model_species:
        sources.append(('train.parameters.model.species', list(model_species)))
    if isinstance(inputs.potential, tuple):
        label, hyperparameters = inputs.potential
        sources.append((f'initial_potential PotentialData<{label}>', list(hyperparameters['species'])))
    if not sources and inputs.datasets:
        name, content = next(iter(inputs.datasets.items()))
        sources.append((f'built from the species of {name}', list(content.species)))
    for source, known in sources:
        for name, content in inputs.datasets.items():
            missing = sorted(set(content.species) - set(known))
            if missing:
                return Problem(
                    'ERROR_SPECIES_NOT_COVERED',
                    {'species': sorted(known), 'source': source, 'name': name, 'missing': missing},
                )
    return None


def _pseudo_problem(inputs: CampaignInputs) -> Problem | None:
    """With pw.x labels: the pseudopotential family covers every element of every set."""
    if inputs.pseudo_elements is None or isinstance(inputs.pseudo_elements, Problem):
        return inputs.pseudo_elements
    family, elements = inputs.pseudo_elements
    for name, content in inputs.datasets.items():
        missing = sorted(set(content.species) - set(elements))
        if missing:
            return Problem('ERROR_PSEUDOS_NOT_COVERED', {'family': family, 'missing': missing, 'name': name})
    return None


def _geometry_problem(inputs: CampaignInputs) -> Problem | None:
    """Physical volume per atom in fully periodic cells (Å³), then no two atoms closer than the minimum (Å)."""
    from aiida_alkit.io.geometry import min_interatomic_distances

    low, high = VOLUME_PER_ATOM_RANGE
    for name, content in inputs.datasets.items():
        arrays = content.load()
        periodic = arrays.pbc.all(axis=1)
        volume = np.abs(np.linalg.det(arrays.cells)) / np.maximum(arrays.sizes, 1)
        bad = np.flatnonzero(periodic & ((volume < low) | (volume > high)))
        if bad.size:
            index = int(bad[0])
            density = 1.0 / volume[index] if volume[index] > 0 else math.inf
            return Problem(
                'ERROR_UNPHYSICAL_DENSITY',
                {'index': index, 'name': name, 'volume': volume[index], 'density': density, 'low': low, 'high': high},
            )
        distances = min_interatomic_distances(
            arrays.positions, arrays.cells, arrays.pbc, arrays.offsets, cutoff=MIN_INTERATOMIC_DISTANCE
        )
        close = np.flatnonzero(distances < MIN_INTERATOMIC_DISTANCE)
        if close.size:
            index = int(close[0])
            return Problem(
                'ERROR_OVERLAPPING_ATOMS',
                {'index': index, 'name': name, 'distance': distances[index], 'minimum': MIN_INTERATOMIC_DISTANCE},
            )
    return None
