"""`alkit.explore`: (biased) molecular dynamics with a trained potential → candidate pool + selection scores."""

from __future__ import annotations

from aiida import orm

from aiida_alkit.calculations.base import AlkitJobCalculation
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.data.potential import PotentialData
from aiida_alkit.jobs.explore import POOL_FILE, POTENTIAL_FILE, SCORES_FILE, SEEDS_FILE, STOPS_FILE, TRAINING_FILE
from aiida_alkit.jobs.explore_parameters import explore_problem
from aiida_alkit.models.potential import is_committee

__all__ = ['ExploreCalculation', 'validate_explore_parameters']


def validate_explore_parameters(parameters: dict) -> str | None:
    """Message naming the first problem of the explore job's parameters, or None
    (:class:`~aiida_alkit.jobs.explore_parameters.ExploreParameters`, the one definition of them)."""
    return explore_problem(parameters)


def _validate_parameters(value: orm.Dict, _) -> str | None:
    return validate_explore_parameters(value.get_dict())


def _validate_inputs(inputs: dict, _) -> str | None:
    potential = inputs['potential']
    unknown = sorted(set(inputs['seeds'].species) - set(potential.species))
    if unknown:
        return f'seed structures contain {unknown}, which potential {potential.pk} does not know ({potential.species})'
    bias = (inputs['parameters'].get_dict().get('bias') or {}).get('kind', 'none')
    if bias == 'committee' and not is_committee(potential.model_kind):
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
        spec.input(
            'potential',
            valid_type=PotentialData,
            help='The potential (a model of any kind, or a committee) driving the MD.',
        )
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
