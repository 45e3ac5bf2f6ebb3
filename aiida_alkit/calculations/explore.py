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
    'bias', 'stop', 'features', 'kpu', 'device', 'num_threads', 'barostat', 'monte_carlo', 'neighbor_skin_A',
}  # fmt: skip
BIAS_PARAMETERS = {
    'kind', 'tau', 'relative_tau', 'stress_tau', 'relative_stress_tau', 'burn_in_steps', 'species_strength', 'dim',
    'force_structures',
}  # fmt: skip
BAROSTAT_PARAMETERS = {'kind', 'tau_fs', 'compressibility_per_GPa', 'anisotropic'}
MONTE_CARLO_PARAMETERS = {'every', 'swap', 'volume', 'cell', 'max_log_volume_change', 'cell_strain'}
FEATURE_PARAMETERS = {'kind', 'dim', 'normalise_per_atom'}


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
    skin = parameters.get('neighbor_skin_A', 1.0)
    if not _is_number(skin) or not 0 <= skin < float('inf'):
        return f'neighbor_skin_A must be a number >= 0 (Verlet skin, Å; 0: rebuild every step), got {skin!r}'
    kind = (parameters.get('bias') or {}).get('kind', 'none')
    if kind not in ('none', 'committee', 'gradient', 'hal'):
        return f'bias.kind must be "none", "committee", "gradient" or "hal", got {kind!r}'
    problem = (
        _validate_bias(parameters.get('bias') or {})
        or _validate_barostat(parameters.get('barostat') or {})
        or _validate_monte_carlo(parameters.get('monte_carlo') or {})
        or _validate_features(parameters.get('features'))
    )
    return problem or _validate_stop(parameters.get('stop') or {}, kind)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_features(features) -> str | None:
    """Gradient features for selection: ``kind`` sketch | last_layer, ``dim`` (sketch projections),
    ``normalise_per_atom`` (structure features as per-atom means)."""
    if features is None:
        return None
    if not isinstance(features, dict):
        return f'features must be a dictionary or null, got {features!r}'
    unknown = sorted(set(features) - FEATURE_PARAMETERS)
    if unknown:
        return f'unknown features parameters {unknown}; allowed: {sorted(FEATURE_PARAMETERS)}'
    if features.get('kind', 'sketch') not in ('sketch', 'last_layer'):
        return f'features.kind must be "sketch" or "last_layer", got {features["kind"]!r}'
    dim = features.get('dim', 512)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        return f'features.dim must be a positive integer, got {dim!r}'
    if not isinstance(features.get('normalise_per_atom', True), bool):
        return f'features.normalise_per_atom must be true or false, got {features["normalise_per_atom"]!r}'
    return None


def _validate_bias(bias: dict) -> str | None:
    """Strengths τ, τ_s (dimensionless, >= 0) and the burn-in (MD steps) of the bias."""
    unknown = sorted(set(bias) - BIAS_PARAMETERS)
    if unknown:
        return f'unknown bias parameters {unknown}; allowed: {sorted(BIAS_PARAMETERS)}'
    for key in ('tau', 'relative_tau', 'stress_tau', 'relative_stress_tau'):
        value = bias.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            return f'bias.{key} must be a number >= 0, got {value!r}'
    burn_in = bias.get('burn_in_steps', 0)
    if not isinstance(burn_in, int) or isinstance(burn_in, bool) or burn_in < 0:
        return f'bias.burn_in_steps must be an integer >= 0 (MD steps), got {burn_in!r}'
    return None


def _validate_barostat(barostat: dict) -> str | None:
    """Kind, τ_P (fs), β_T (1/GPa or null: from the model) and anisotropy of the NPT barostat."""
    unknown = sorted(set(barostat) - BAROSTAT_PARAMETERS)
    if unknown:
        return f'unknown barostat parameters {unknown}; allowed: {sorted(BAROSTAT_PARAMETERS)}'
    kind = barostat.get('kind', 'stochastic')
    if kind not in ('stochastic', 'berendsen'):
        return f'barostat.kind must be "stochastic" (stochastic cell rescaling) or "berendsen", got {kind!r}'
    tau = barostat.get('tau_fs', 1000.0)
    if not _is_number(tau) or tau <= 0:
        return f'barostat.tau_fs must be a positive number (fs), got {tau!r}'
    beta = barostat.get('compressibility_per_GPa')
    if beta is not None and (not _is_number(beta) or not 0 < beta <= 10):
        return f'barostat.compressibility_per_GPa must be in (0, 10] 1/GPa (or null: from the model), got {beta!r}'
    if barostat.get('anisotropic') and kind != 'berendsen':
        return 'barostat.anisotropic needs barostat.kind "berendsen" (stochastic cell rescaling is isotropic here)'
    return None


def _validate_monte_carlo(monte_carlo: dict) -> str | None:
    """HAL's Monte-Carlo moves: interval (MD steps), attempts per walker and round, move sizes."""
    unknown = sorted(set(monte_carlo) - MONTE_CARLO_PARAMETERS)
    if unknown:
        return f'unknown monte_carlo parameters {unknown}; allowed: {sorted(MONTE_CARLO_PARAMETERS)}'
    for key, low in (('every', 1), ('swap', 0), ('volume', 0), ('cell', 0)):
        value = monte_carlo.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f'monte_carlo.{key} must be an integer >= {low}, got {value!r}'
    for key in ('max_log_volume_change', 'cell_strain'):
        value = monte_carlo.get(key, 0.01)
        if not _is_number(value) or not 0 < value <= 0.5:
            return f'monte_carlo.{key} must be in (0, 0.5], got {value!r}'
    return None


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
