"""`alkit.train`: train a potential (GM-NN or MACE, `model.kind`; Adam, RLEKF, or an Adam committee) on a DatasetData."""

from __future__ import annotations

import os

from aiida import orm

from aiida_alkit.calculations.base import AlkitJobCalculation
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.data.potential import PotentialData
from aiida_alkit.jobs.train import CHECKPOINT_FILE, DATASET_FILE, INITIAL_FILE, METRICS_FILE, POTENTIAL_FILE, TEST_FILE

__all__ = ['TrainCalculation', 'validate_train_parameters']

#: Share of ``metadata.options.max_wallclock_seconds`` given to the job as its time budget ``max_seconds`` (the rest
#: is for start-up, the last checkpoint and the final evaluation), as aiida-quantumespresso does for pw.x.
WALLTIME_FRACTION = 0.9


def validate_train_parameters(parameters: dict) -> str | None:
    """Message naming the first problem of the train job's parameters, or None
    (:class:`~aiida_alkit.jobs.train_parameters.TrainParameters`, the one definition of them)."""
    from aiida_alkit.jobs.train_parameters import train_problem  # imports torch: only when validating

    return train_problem(parameters)


def _validate_parameters(value: orm.Dict, _) -> str | None:
    return validate_train_parameters(value.get_dict())


def _validate_inputs(inputs: dict, _) -> str | None:
    if 'initial_potential' in inputs and 'parent_folder' in inputs:
        return 'give initial_potential or parent_folder (resume from its checkpoint), not both'
    dataset = inputs['dataset']
    if 'energy' not in dataset.labels:
        return f'dataset {dataset.pk} has no energy labels; label it before training'
    species = (inputs['parameters'].get_dict().get('model') or {}).get('species')
    if species:
        missing = sorted(set(dataset.species) - set(species))
        if missing:
            return f'dataset contains {missing}, which model.species {species} lacks'
    if 'initial_potential' in inputs:
        return _initial_potential_problem(inputs['initial_potential'], inputs['parameters'].get_dict(), dataset)
    return None


def _initial_potential_problem(potential: PotentialData, parameters: dict, dataset: DatasetData) -> str | None:
    """The warm-start potential suits the training the parameters ask for and knows the dataset's species."""
    from aiida_alkit.jobs.train_parameters import warm_start_problem  # imports torch: only when validating

    problem = warm_start_problem(potential.model_kind, parameters)
    if problem:
        return f'initial_potential {potential.pk}: {problem}'
    missing = sorted(set(dataset.species) - set(potential.species))
    if missing:
        return f'dataset contains {missing}, which initial_potential {potential.pk} does not know ({potential.species})'
    return None


class TrainCalculation(AlkitJobCalculation):
    """Train a potential with ``python -m aiida_alkit.jobs.train`` (GPU through ``parameters.device``)."""

    JOB = 'train'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, help='Labelled training set; info.split="valid" rows validate.')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            validator=_validate_parameters,
            help='model / optimizer / training / rlekf / committee_size / device settings (see jobs/train_parameters.py).',
        )
        spec.input(
            'initial_potential',
            valid_type=PotentialData,
            required=False,
            help='Continue training from this potential (warm start or restart).',
        )
        spec.input(
            'test_dataset', valid_type=DatasetData, required=False, help='Labelled test set, evaluated at the end.'
        )
        spec.input(
            'parent_folder',
            valid_type=orm.RemoteData,
            required=False,
            help='Work folder of an interrupted train job: training resumes from its checkpoint.pt.',
        )
        spec.inputs.validator = _validate_inputs

        spec.output('potential', valid_type=PotentialData, help='The trained potential (RLEKF P in its extras).')
        spec.output('metrics', valid_type=orm.Dict, help='Final train/validation errors and the training history.')
        spec.exit_code(302, 'ERROR_POTENTIAL_MISSING', message='The job finished but wrote no potential file.')
        spec.exit_code(410, 'ERROR_TRAINING_DIVERGED', message='Training diverged (NaN/inf loss): {error}')
        spec.exit_code(
            411,
            'ERROR_OUT_OF_WALLTIME',
            message='The job stopped before its walltime ({error}); its checkpoint.pt allows a restart.',
        )

    def job_parameters(self) -> dict:
        """The parameters, with ``max_seconds`` = 0.9 x the walltime unless given."""
        parameters = self.inputs.parameters.get_dict()
        walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
        if walltime and 'max_seconds' not in parameters:
            parameters['max_seconds'] = WALLTIME_FRACTION * walltime
        return parameters

    def job_files(self) -> list[tuple[str, str, str]]:
        files = [(self.inputs.dataset.uuid, DatasetData.FILENAME, DATASET_FILE)]
        if 'initial_potential' in self.inputs:
            files.append((self.inputs.initial_potential.uuid, PotentialData.FILENAME, INITIAL_FILE))
        if 'test_dataset' in self.inputs:
            files.append((self.inputs.test_dataset.uuid, DatasetData.FILENAME, TEST_FILE))
        return files

    def retrieved_files(self) -> tuple[list[str], list[str]]:
        return [METRICS_FILE], [POTENTIAL_FILE]

    def prepare_for_submission(self, folder):
        calcinfo = super().prepare_for_submission(folder)
        if 'parent_folder' in self.inputs:  # resume: the interrupted job's checkpoint becomes initial.pt
            parent = self.inputs.parent_folder
            source = os.path.join(parent.get_remote_path(), CHECKPOINT_FILE)
            calcinfo.remote_copy_list = [(parent.computer.uuid, source, INITIAL_FILE)]
        return calcinfo
