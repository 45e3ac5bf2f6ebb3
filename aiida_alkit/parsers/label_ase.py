"""Parser of `alkit.label.ase`: results.json → ``failures`` Dict, labelled.npz → ``labelled`` DatasetData."""

from __future__ import annotations

import json
import pathlib

from aiida import orm
from aiida.parsers import Parser

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import RESULTS_FILE
from aiida_alkit.jobs.label import OUTPUT_FILE

__all__ = ['AseLabelParser']


class AseLabelParser(Parser):
    """Turn the label job's files into output nodes; exit codes as defined on ``AseLabelCalculation``."""

    def parse(self, **kwargs):
        retrieved = self.retrieved
        if RESULTS_FILE not in retrieved.base.repository.list_object_names():
            return self.exit_codes.ERROR_NO_RESULTS_FILE
        try:
            results = json.loads(retrieved.base.repository.get_object_content(RESULTS_FILE))
        except ValueError as exc:
            return self.exit_codes.ERROR_INVALID_RESULTS_FILE.format(error=str(exc))
        if 'error' in results:
            return self.exit_codes.ERROR_JOB_FAILED.format(error=results['error'])
        failures = results.get('failures', [])
        self.out(
            'failures',
            orm.Dict(
                {
                    'n_input': results.get('n_input'),
                    'n_labelled': results.get('n_labelled'),
                    'n_failed': len(failures),
                    'failures': failures,
                }
            ),
        )
        if not results.get('n_labelled'):
            return self.exit_codes.ERROR_ALL_LABELS_FAILED.format(count=len(failures))
        temporary = kwargs.get('retrieved_temporary_folder')
        path = pathlib.Path(temporary) / OUTPUT_FILE if temporary else None
        if path is None or not path.is_file():
            return self.exit_codes.ERROR_LABELS_FILE_MISSING
        self.out('labelled', DatasetData(ConfigurationArrays.load(path), validate=False))
        for record in failures:
            self.logger.warning(f'configuration {record["index"]} not labelled: {record["reason"]}')
        return None
