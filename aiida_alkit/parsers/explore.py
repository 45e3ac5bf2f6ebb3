"""Parser of `alkit.explore`: pool.npz → DatasetData, scores.npz → ArrayData (with the calibration record of
``results.json`` as its ``calibration`` attribute), stops.json → Dict."""

from __future__ import annotations

import numpy as np
from aiida import orm

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.explore import POOL_FILE, SCORES_FILE, STOPS_FILE
from aiida_alkit.parsers.base import AlkitJobParser

__all__ = ['ExploreParser']


class ExploreParser(AlkitJobParser):
    """Outputs of the explore job; exit codes as defined on ``ExploreCalculation``."""

    def parse(self, **kwargs):
        results, problem = self.read_results()
        if problem:
            return problem
        stops = self.read_json(STOPS_FILE)
        if stops is not None:
            self.out('stops', orm.Dict({'walkers': stops, 'counts': results.get('stop_counts', {})}))
        if 'error' in results:
            return self.exit_codes.ERROR_JOB_FAILED.format(error=results['error'])
        if results.get('status') == 'empty':
            return self.exit_codes.ERROR_EMPTY_POOL
        pool_file, scores_file = self.temporary_file(kwargs, POOL_FILE), self.temporary_file(kwargs, SCORES_FILE)
        if pool_file is None or scores_file is None:
            return self.exit_codes.ERROR_POOL_MISSING
        self.out('pool', DatasetData(ConfigurationArrays.load(pool_file), validate=False))
        scores = orm.ArrayData()
        with np.load(scores_file, allow_pickle=False) as data:
            for name in data.files:
                scores.set_array(name, data[name])
        if results.get('calibration'):  # rule, alpha, quantile level, q_hat, validation size: queryable
            scores.base.attributes.set('calibration', results['calibration'])
        self.out('scores', scores)
        return None
