"""`alkit.explore`: (biased) molecular dynamics with a trained potential → candidate pool + selection scores."""

from __future__ import annotations

from aiida import orm

from aiida_alkit.calculations.base import AlkitJobCalculation
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.data.potential import PotentialData
from aiida_alkit.jobs.explore import POOL_FILE, POTENTIAL_FILE, SCORES_FILE, SEEDS_FILE, STOPS_FILE, TRAINING_FILE

__all__ = ['EXPLORE_PARAMETERS', 'ExploreCalculation', 'validate_explore_parameters']

EXPLORE_PARAMETERS = {
    'walkers', 'steps', 'timestep_fs', 'temperature_K', 'friction_per_fs', 'pressure_GPa', 'sample_every', 'seed',
    'bias', 'stop', 'features', 'kpu', 'device', 'num_threads',
}  # fmt: skip


def validate_explore_parameters(parameters: dict) -> str | None:
    """Message naming the first problem of the explore job's parameters, or None."""
    unknown = sorted(set(parameters) - EXPLORE_PARAMETERS)
    if unknown:
        return f'unknown explore parameters {unknown}; allowed: {sorted(EXPLORE_PARAMETERS)}'
    for key, low in (('walkers', 1), ('steps', 1), ('sample_every', 1)):
        value = parameters.get(key, low)
        if not isinstance(value, int) or value < low:
            return f'{key} must be an integer >= {low}, got {value!r}'
    for key in ('timestep_fs', 'temperature_K', 'friction_per_fs'):
        value = parameters.get(key, 1.0)
        if not isinstance(value, (int, float)) or value <= 0:
            return f'{key} must be a positive number, got {value!r}'
    if (parameters.get('timestep_fs') or 0) > 10:
        return f'timestep_fs={parameters["timestep_fs"]} is far too large for atomistic MD (use <= 10 fs)'
    kind = (parameters.get('bias') or {}).get('kind', 'none')
    if kind not in ('none', 'committee', 'gradient', 'hal'):
        return f'bias.kind must be "none", "committee", "gradient" or "hal", got {kind!r}'
    return _validate_stop(parameters.get('stop') or {}, kind)


STOP_PARAMETERS = {
    'max_force', 'min_distance_fraction', 'uncertainty', 'calibration_alpha', 'hal', 'gamma_break', 'check_every'
}  # fmt: skip


def _validate_stop(stop: dict, kind: str) -> str | None:
    unknown = sorted(set(stop) - STOP_PARAMETERS)
    if unknown:
        return f'unknown stop parameters {unknown}; allowed: {sorted(STOP_PARAMETERS)}'
    for key in ('max_force', 'min_distance_fraction', 'uncertainty', 'gamma_break'):
        value = stop.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            return f'stop.{key} must be a positive number, got {value!r}'
    if stop.get('gamma_break') is not None and stop['gamma_break'] < 1:
        return f'stop.gamma_break must be >= 1 (gamma <= 1 interpolates), got {stop["gamma_break"]!r}'
    alpha = stop.get('calibration_alpha', 0.1)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        return f'stop.calibration_alpha must be in (0, 1), got {alpha!r}'
    if stop.get('hal'):
        if kind != 'hal':
            return f'stop.hal needs bias.kind "hal", got {kind!r}'
        unknown = sorted(set(stop['hal']) - {'s_tol', 'f_tol'})
        if unknown:
            return f'unknown stop.hal parameters {unknown}; allowed: f_tol, s_tol'
    if stop.get('uncertainty') is not None and kind == 'hal':
        return 'stop.uncertainty does not apply to the hal bias: use stop.hal (s_tol, f_tol)'
    return None


def _validate_parameters(value: orm.Dict, _) -> str | None:
    return validate_explore_parameters(value.get_dict())


def _validate_inputs(inputs: dict, _) -> str | None:
    potential = inputs['potential']
    unknown = sorted(set(inputs['seeds'].species) - set(potential.species))
    if unknown:
        return f'seed structures contain {unknown}, which potential {potential.pk} does not know ({potential.species})'
    bias = (inputs['parameters'].get_dict().get('bias') or {}).get('kind', 'none')
    if bias == 'committee' and potential.model_kind != 'gmnn-committee':
        return 'bias.kind "committee" needs a committee potential'
    if bias in ('gradient', 'hal') and 'training' not in inputs:
        return f'bias.kind "{bias}" needs the training set (input "training")'
    return None


class ExploreCalculation(AlkitJobCalculation):
    """Run ``python -m aiida_alkit.jobs.explore``: walkers of (biased) MD, a candidate pool and its scores."""

    JOB = 'explore'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('potential', valid_type=PotentialData, help='The potential (GM-NN or committee) driving the MD.')
        spec.input('seeds', valid_type=DatasetData, help='Starting structures of the walkers (cycled, shuffled).')
        spec.input(
            'training', valid_type=DatasetData, required=False, help='Training set: features and minimum distance.'
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            validator=_validate_parameters,
            help='walkers, steps, timestep_fs, temperature_K, pressure_GPa, bias, stop, features (jobs/explore.py).',
        )
        spec.inputs.validator = _validate_inputs

        spec.output('pool', valid_type=DatasetData, help='The candidate configurations with their MD metadata.')
        spec.output('scores', valid_type=orm.ArrayData, help='Per-candidate features / deviations / KPU.')
        spec.output('stops', valid_type=orm.Dict, help='Why and at which step each walker stopped.')
        spec.exit_code(302, 'ERROR_POOL_MISSING', message='The job finished but wrote no candidate pool.')
        spec.exit_code(410, 'ERROR_EMPTY_POOL', message='No candidate was recorded: every walker stopped at once.')

    def job_parameters(self) -> dict:
        return self.inputs.parameters.get_dict()

    def job_files(self) -> list[tuple[str, str, str]]:
        files = [
            (self.inputs.potential.uuid, PotentialData.FILENAME, POTENTIAL_FILE),
            (self.inputs.seeds.uuid, DatasetData.FILENAME, SEEDS_FILE),
        ]
        if 'training' in self.inputs:
            files.append((self.inputs.training.uuid, DatasetData.FILENAME, TRAINING_FILE))
        return files

    def retrieved_files(self) -> tuple[list[str], list[str]]:
        return [STOPS_FILE], [POOL_FILE, SCORES_FILE]
