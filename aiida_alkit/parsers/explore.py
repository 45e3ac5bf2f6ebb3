"""Parser of `alkit.explore`: pool.npz → DatasetData, scores.npz → ArrayData, stops.json → Dict."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from aiida import orm
from aiida.parsers import Parser

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import RESULTS_FILE
from aiida_alkit.jobs.explore import POOL_FILE, SCORES_FILE, STOPS_FILE

__all__ = ['ExploreParser']


class ExploreParser(Parser):
    """Outputs of the explore job; exit codes as defined on ``ExploreCalculation``."""

    def parse(self, **kwargs):
        names = self.retrieved.base.repository.list_object_names()
        if RESULTS_FILE not in names:
            return self.exit_codes.ERROR_NO_RESULTS_FILE
        try:
            results = json.loads(self.retrieved.base.repository.get_object_content(RESULTS_FILE))
        except ValueError as exc:
            return self.exit_codes.ERROR_INVALID_RESULTS_FILE.format(error=str(exc))
        if STOPS_FILE in names:
            stops = json.loads(self.retrieved.base.repository.get_object_content(STOPS_FILE))
            self.out('stops', orm.Dict({'walkers': stops, 'counts': results.get('stop_counts', {})}))
        if 'error' in results:
            return self.exit_codes.ERROR_JOB_FAILED.format(error=results['error'])
        if results.get('status') == 'empty':
            return self.exit_codes.ERROR_EMPTY_POOL
        temporary = pathlib.Path(kwargs.get('retrieved_temporary_folder') or '.')
        if not (temporary / POOL_FILE).is_file() or not (temporary / SCORES_FILE).is_file():
            return self.exit_codes.ERROR_POOL_MISSING
        self.out('pool', DatasetData(ConfigurationArrays.load(temporary / POOL_FILE), validate=False))
        scores = orm.ArrayData()
        with np.load(temporary / SCORES_FILE, allow_pickle=False) as data:
            for name in data.files:
                scores.set_array(name, data[name])
        self.out('scores', scores)
        return None
