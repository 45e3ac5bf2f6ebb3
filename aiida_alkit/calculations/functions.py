"""Calcfunctions of a campaign: select candidates (science in ``selection``), merge labels into the training set,
decide whether the campaign has converged, and the campaign report computed from what each round produced."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.models.training import split_train_valid

__all__ = [
    'SELECT_PARAMETERS',
    'TRAINING_INFO_KEYS',
    'campaign_convergence',
    'campaign_report',
    'merge_datasets',
    'select_candidates',
]

#: Per-configuration metadata of a training set: 'split' ('train' or 'valid'), 'round' (the campaign round that
#: added it, 0 for the initial data) and 'origin' (uuid of the StructureData that was labelled, '' if none).
TRAINING_INFO_KEYS = ('split', 'round', 'origin')


def _as_training_set(
    arrays: ConfigurationArrays, round_index: int, fraction: float, rng, keep: bool
) -> ConfigurationArrays:
    """Tag with split/round/origin; ``keep`` keeps tags the set already has (the existing training set)."""
    n = len(arrays)
    existing = arrays.info if keep else {}
    info = {
        'split': existing['split'] if 'split' in existing else split_train_valid(n, fraction, rng, tags=True),
        'round': existing['round'] if 'round' in existing else np.full(n, round_index, dtype=np.int64),
        'origin': (
            existing['origin']
            if 'origin' in existing
            else arrays.info.get('structure_uuid', np.full(n, '', dtype='<U36'))
        ),
    }
    return ConfigurationArrays(
        positions=arrays.positions,
        numbers=arrays.numbers,
        cells=arrays.cells,
        pbc=arrays.pbc,
        offsets=arrays.offsets,
        energy=arrays.energy,
        forces=arrays.forces,
        stress=arrays.stress,
        info={key: np.asarray(value) for key, value in info.items()},
    )


@calcfunction
def merge_datasets(
    dataset: DatasetData,
    round_index: orm.Int,
    validation_fraction: orm.Float,
    seed: orm.Int,
    labelled: DatasetData | None = None,
) -> DatasetData:
    """The training set of the next round: ``dataset`` plus ``labelled`` with train/valid split and round tags.

    Configurations of ``dataset`` keep the split/round tags they already carry; the ``labelled`` ones are tagged with
    ``round_index`` and split with a generator seeded by ``seed`` and ``round_index`` (so a campaign replays
    identically). Labels kept are those both sets have.
    """
    rng = np.random.default_rng([int(seed.value), int(round_index.value)])
    fraction = float(validation_fraction.value)
    base = _as_training_set(dataset.arrays, 0, fraction, rng, keep=True)
    if labelled is None:
        return DatasetData(base, validate=False)
    new = _as_training_set(labelled.arrays, int(round_index.value), fraction, rng, keep=False)
    return DatasetData(ConfigurationArrays.concatenate([base, new]), validate=False)


#: Parameters of :func:`select_candidates` (see :func:`aiida_alkit.selection.api.select`).
SELECT_PARAMETERS = (
    'method',
    'batch_size',
    'posterior',
    'sigma2',
    'kpu_trained',
    'c0',
    'c1',
    'lo',
    'hi',
    'uncertain_above',
    'gamma_select',
)


@calcfunction
def select_candidates(pool: DatasetData, scores: orm.ArrayData, parameters: orm.Dict, seed: orm.Int) -> dict:
    """Select a batch from a candidate pool; one StructureData per pick, linked to the pool by this function.

    :param pool: the candidates.
    :param scores: per-candidate arrays: ``pool_features`` (N, d) and ``train_features`` (M, d) for feature methods,
        ``kpu`` for ALKPU, ``max_force_deviation`` (eV/Å) for the committee trust window.
    :param parameters: ``method``, ``batch_size`` and the options of :func:`aiida_alkit.selection.api.select`.
    :returns: ``selection`` (ArrayData: ``indices`` in pick order, ``gains``, per-candidate ``scores`` and ``ranks``;
        attributes ``method`` and the accurate/candidate/failed counts) and ``pick_NNNN`` StructureData whose
        attributes ``alkit_pool_index``, ``alkit_rank`` and ``alkit_score`` make them queryable.
    """
    from aiida_alkit.jobs.common import torch_threads
    from aiida_alkit.selection.api import select

    settings = parameters.get_dict()
    unknown = sorted(set(settings) - set(SELECT_PARAMETERS))
    if unknown:
        raise ValueError(f'unknown selection parameters {unknown}; allowed: {list(SELECT_PARAMETERS)}')
    names = scores.get_arraynames()
    # one torch thread: this runs inside a daemon worker next to running jobs (2 threads on a busy 2-core machine made
    # a greedy MaxDist 50x slower than 1)
    with torch_threads(1):
        result = select(
            settings.pop('method'),
            int(settings.pop('batch_size')),
            pool_features=scores.get_array('pool_features') if 'pool_features' in names else None,
            train_features=scores.get_array('train_features') if 'train_features' in names else None,
            scores={name: scores.get_array(name) for name in names if not name.endswith('_features')},
            seed=int(seed.value),
            n_pool=len(pool),
            **settings,
        )
    selection = orm.ArrayData()
    for name in ('indices', 'gains', 'scores', 'ranks'):
        selection.set_array(name, np.asarray(getattr(result, name)))
    selection.base.attributes.set('method', result.method)
    for name in ('n_accurate', 'n_candidate', 'n_failed'):
        selection.base.attributes.set(name, int(getattr(result, name)))
    selection.base.attributes.set('n_selected', int(result.indices.size))
    if result.status:
        selection.base.attributes.set('status', result.status)
    outputs: dict[str, orm.Data] = {'selection': selection}
    for rank, index in enumerate(result.indices):
        structure = orm.StructureData(ase=pool.get_atoms(int(index)))
        structure.base.attributes.set('alkit_pool_index', int(index))
        structure.base.attributes.set('alkit_rank', rank)
        structure.base.attributes.set('alkit_score', float(result.scores[index]))
        outputs[f'pick_{rank:04d}'] = structure
    return outputs


@calcfunction
def campaign_report(stop_reason: orm.Str, **sources: orm.Data) -> orm.Dict:
    """The campaign's ``report``: one row per round computed from the nodes that round produced, and why it stopped.

    ``sources`` are ``round_<k>_<what>`` → node (:data:`~aiida_alkit.workflows.provenance.REPORT_SOURCES`), so the
    graph shows what every row was computed from; the rows are
    :func:`~aiida_alkit.workflows.provenance.report_rows`, the same that ``campaign_rounds`` rebuilds for a campaign
    still running.
    """
    from aiida_alkit.workflows.provenance import report_rows

    return orm.Dict({'rounds': report_rows(dict(sources)), 'stop_reason': stop_reason.value})


@calcfunction
def campaign_convergence(
    selection: orm.ArrayData,
    pool: DatasetData,
    round_index: orm.Int,
    stages: orm.Int,
    accurate_fraction: orm.Float,
    potential: orm.Data | None = None,
    target_force_rmse: orm.Float | None = None,
) -> orm.Dict:
    """The campaign's decision after a round's selection (rules in :mod:`aiida_alkit.workflows.convergence`).

    :param selection: the ``selection`` output of ``select_candidates`` (its accurate and selected counts).
    :param pool: the round's candidate pool (its size is the number explored).
    :param stages: number of scheduled exploration stages; ``accurate_fraction``: the campaign's criterion.
    :param potential: the round's potential, whose test force RMSE (eV/Å) is compared with ``target_force_rmse``.
    :return: ``converged``, ``stage_done``, ``reason`` and ``accurate_fraction``.
    """
    from aiida_alkit.workflows.convergence import decide_round

    attributes = selection.base.attributes
    metrics = dict(potential.metrics) if potential is not None else {}
    decision = decide_round(
        explored=len(pool),
        n_accurate=int(attributes.get('n_accurate')),
        n_selected=int(attributes.get('n_selected')),
        round_index=round_index.value,
        stages=stages.value,
        accurate_fraction=accurate_fraction.value,
        test_force_rmse=metrics.get('test_forces_rmse_ev_per_ang'),
        target_force_rmse=None if target_force_rmse is None else target_force_rmse.value,
    )
    return orm.Dict(decision.as_dict())
