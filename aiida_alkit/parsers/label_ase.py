"""Parser of `alkit.label.ase`: results.json → ``failures`` Dict, labelled.npz → ``labelled`` DatasetData."""

from __future__ import annotations

from aiida import orm

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.label import OUTPUT_FILE
from aiida_alkit.parsers.base import AlkitJobParser

__all__ = ['AseLabelParser']


class AseLabelParser(AlkitJobParser):
    """Turn the label job's files into output nodes; exit codes as defined on ``AseLabelCalculation``."""

    def parse(self, **kwargs):
        results, problem = self.read_results()
        if problem:
            return problem
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
        path = self.temporary_file(kwargs, OUTPUT_FILE)
        if path is None:
            return self.exit_codes.ERROR_LABELS_FILE_MISSING
        self.out('labelled', DatasetData(ConfigurationArrays.load(path), validate=False))
        for record in failures:
            self.logger.warning(f'configuration {record["index"]} not labelled: {record["reason"]}')
        return None
