"""Parser of `alkit.train`: potential.pt → PotentialData (with metric attributes), metrics.json → Dict."""

from __future__ import annotations

import math

from aiida import orm

from aiida_alkit.data.potential import PotentialData
from aiida_alkit.jobs.train import METRICS_FILE, POTENTIAL_FILE
from aiida_alkit.models.serialization import PotentialFileError
from aiida_alkit.parsers.base import AlkitJobParser

__all__ = ['TrainParser']

_UNITS = {'energy': 'ev_per_atom', 'forces': 'ev_per_ang', 'stress': 'ev_per_ang3'}


def flat_metrics(errors: dict) -> dict[str, float]:
    """``{'valid': {'forces_rmse': x}}`` → ``{'valid_forces_rmse_ev_per_ang': x}`` (units in the names)."""
    flat = {}
    for split in ('train', 'valid', 'test'):
        for key, value in (errors.get(split) or {}).items():
            if value is None:
                continue
            quantity = key.split('_')[0]
            unit = _UNITS.get(quantity)
            flat[f'{split}_{key}' + (f'_{unit}' if unit else '')] = float(value)
    return flat


def finite_or_none(value):
    """The same structure with NaN/inf floats replaced by None (the database stores JSON, which has no NaN)."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrainParser(AlkitJobParser):
    """Outputs of the train job; exit codes as defined on ``TrainCalculation``."""

    def parse(self, **kwargs):
        results, problem = self.read_results()
        if problem:
            return problem
        if results.get('status') == 'diverged':
            return self.exit_codes.ERROR_TRAINING_DIVERGED.format(error=results.get('error_message', ''))
        if results.get('status') == 'out_of_walltime':
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(error=results.get('error_message', ''))
        if 'error' in results:
            return self.exit_codes.ERROR_JOB_FAILED.format(error=results['error'])
        path = self.temporary_file(kwargs, POTENTIAL_FILE)
        if path is None:
            return self.exit_codes.ERROR_POTENTIAL_MISSING
        metrics = finite_or_none(self.read_json(METRICS_FILE) or {})
        try:
            potential = PotentialData(file=path)
        except PotentialFileError as exc:
            return self.exit_codes.ERROR_JOB_FAILED.format(error=str(exc))
        potential.set_metrics(flat_metrics(metrics.get('errors') or {}))
        if 'kpu_trained' in metrics:
            potential.base.attributes.set('kpu_trained', float(metrics['kpu_trained']))
        self.out('potential', potential)
        self.out('metrics', orm.Dict(metrics))
        return None
