"""`alkit.label.ase`: label a configuration set with an (allowed) ASE calculator on any AiiDA computer."""

from __future__ import annotations

import json

from aiida import orm

from aiida_alkit.calculations.base import AlkitJobCalculation
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.jobs.label import ALLOWED_CALCULATORS, DEFAULT_MAX_FORCE, INPUT_FILE, OUTPUT_FILE

__all__ = ['AseLabelCalculation']

_PROPERTIES = ('energy', 'forces', 'stress')


def _validate_calculator(value: orm.Str, _) -> str | None:
    if value.value not in ALLOWED_CALCULATORS:
        return f'calculator {value.value!r} is not allowed; choose one of {sorted(ALLOWED_CALCULATORS)}'
    return None


def _validate_properties(value: orm.List, _) -> str | None:
    properties = value.get_list()
    unknown = sorted(set(properties) - set(_PROPERTIES))
    if unknown or 'energy' not in properties:
        return f'properties must include "energy" and be among {list(_PROPERTIES)}, got {properties}'
    return None


def _validate_max_force(value: orm.Float, _) -> str | None:
    if not value.value > 0:
        return f'max_force must be a positive number of eV/Å, got {value.value}'
    return None


def _validate_kwargs(value: orm.Dict, _) -> str | None:
    try:
        json.dumps(value.get_dict())
    except TypeError as exc:
        return f'calculator_kwargs must be JSON-serialisable: {exc}'
    return None


class AseLabelCalculation(AlkitJobCalculation):
    """Energy, forces and stress of every configuration of a set with an ASE calculator.

    Runs ``python -m aiida_alkit.jobs.label`` with the ``alkit-python`` code. A configuration whose calculator call
    fails, or whose largest force exceeds ``max_force`` (eV/Å), is recorded in the ``failures`` output and left out
    of ``labelled``; the job fails only when no configuration could be labelled.
    """

    JOB = 'label.ase'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('configurations', valid_type=DatasetData, help='The configurations to label.')
        spec.input(
            'calculator',
            valid_type=orm.Str,
            validator=_validate_calculator,
            help=f'Import path of the ASE calculator class; one of {sorted(ALLOWED_CALCULATORS)}.',
        )
        spec.input(
            'calculator_kwargs',
            valid_type=orm.Dict,
            required=False,
            validator=_validate_kwargs,
            help='Keyword arguments for the calculator constructor.',
        )
        spec.input(
            'properties',
            valid_type=orm.List,
            default=lambda: orm.List(list(_PROPERTIES)),
            validator=_validate_properties,
            help='Labels to compute: energy (eV), forces (eV/Å), stress (eV/Å³, periodic cells only).',
        )
        spec.input(
            'max_force',
            valid_type=orm.Float,
            default=lambda: orm.Float(DEFAULT_MAX_FORCE),
            validator=_validate_max_force,
            help='Configurations with a larger force (eV/Å) are recorded as failed labels (unphysical).',
        )

        spec.output('labelled', valid_type=DatasetData, required=False, help='The configurations that were labelled.')
        spec.output(
            'failures',
            valid_type=orm.Dict,
            help='Counts and one record (input index, reason) per configuration that could not be labelled.',
        )
        spec.exit_code(302, 'ERROR_LABELS_FILE_MISSING', message='The job reported labels but wrote no labels file.')
        spec.exit_code(410, 'ERROR_ALL_LABELS_FAILED', message='No configuration could be labelled ({count} failures).')

    def job_parameters(self) -> dict:
        return {
            'calculator': self.inputs.calculator.value,
            'calculator_kwargs': self.inputs.calculator_kwargs.get_dict() if 'calculator_kwargs' in self.inputs else {},
            'properties': self.inputs.properties.get_list(),
            'max_force': self.inputs.max_force.value,
        }

    def job_files(self) -> list[tuple[str, str, str]]:
        return [(self.inputs.configurations.uuid, DatasetData.FILENAME, INPUT_FILE)]

    def retrieved_files(self) -> tuple[list[str], list[str]]:
        return [], [OUTPUT_FILE]  # the labels are parsed into a DatasetData, not kept twice
