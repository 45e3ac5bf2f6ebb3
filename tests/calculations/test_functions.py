"""merge_datasets: split and round tags, seeded and reproducible, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_alkit.calculations.functions import merge_datasets
from aiida_alkit.data import DatasetData
from aiida_alkit.models.training import split_train_valid


def test_assign_validation_counts():
    """The split tags merge_datasets gives new configurations (the one splitter, ``split_train_valid``)."""
    rng = np.random.default_rng(0)

    def assign_validation(n, fraction, rng):
        return split_train_valid(n, fraction, rng, tags=True)

    assert list(assign_validation(1, 0.1, rng)) == ['train']
    split = assign_validation(10, 0.2, rng)
    assert (split == 'valid').sum() == 2
    assert (assign_validation(2, 0.1, rng) == 'valid').sum() == 1
    with pytest.raises(ValueError, match='validation fraction'):
        assign_validation(5, 1.0, rng)


def test_merge(aiida_profile, copper_structures):
    initial = DatasetData.from_atoms(copper_structures[:3]).store()
    new = DatasetData.from_atoms(copper_structures[3:]).store()
    inputs = {'round_index': orm.Int(1), 'validation_fraction': orm.Float(0.34), 'seed': orm.Int(7)}
    first = merge_datasets(initial, labelled=new, **inputs)
    again = merge_datasets(initial, labelled=new, **inputs)
    assert len(first) == 5
    info = first.arrays.info
    assert list(info['round']) == [0, 0, 0, 1, 1]
    assert set(info['split']) == {'train', 'valid'}
    assert list(info['split']) == list(again.arrays.info['split'])  # same seed → same split
    assert first.labels == ['energy', 'forces', 'stress']
    assert {link.link_label for link in first.creator.base.links.get_incoming().all()} >= {'dataset', 'labelled'}
    # a set that already has a split keeps it when merged again
    second = merge_datasets(
        first, labelled=new, round_index=orm.Int(2), validation_fraction=orm.Float(0.5), seed=orm.Int(7)
    )
    assert list(second.arrays.info['split'][:5]) == list(info['split'])
    assert list(second.arrays.info['round'][5:]) == [2, 2]


def _pool_and_scores(n=12):
    from ase.build import bulk

    from aiida_alkit.data import DatasetData

    rng = np.random.default_rng(0)
    structures = []
    for seed in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    pool = DatasetData.from_atoms(structures).store()
    scores = orm.ArrayData()
    scores.set_array('pool_features', rng.normal(size=(n, 4)))
    scores.set_array('train_features', rng.normal(size=(6, 4)))
    scores.set_array('max_force_deviation', np.linspace(0.0, 0.3, n))
    return pool, scores.store()


def test_select_candidates_provenance_and_queries(aiida_profile):
    from aiida_alkit.calculations.functions import select_candidates

    pool, scores = _pool_and_scores()
    parameters = orm.Dict({'method': 'lcmd', 'batch_size': 3})
    outputs = select_candidates(pool, scores, parameters, orm.Int(5))
    selection = outputs['selection']
    picks = [outputs[f'pick_{k:04d}'] for k in range(3)]
    assert list(selection.get_array('indices')) == [p.base.attributes.get('alkit_pool_index') for p in picks]
    assert all(pick.creator.inputs.pool.uuid == pool.uuid for pick in picks)
    query = orm.QueryBuilder().append(orm.StructureData, filters={'attributes.alkit_rank': 0})
    assert picks[0].pk in [node.pk for node in query.all(flat=True)]
    again = select_candidates(pool, scores, parameters, orm.Int(5))
    assert list(again['selection'].get_array('indices')) == list(selection.get_array('indices'))


def test_select_candidates_trust_window(aiida_profile):
    from aiida_alkit.calculations.functions import select_candidates

    pool, scores = _pool_and_scores()
    parameters = orm.Dict({'method': 'trust', 'batch_size': 2, 'lo': 0.05, 'hi': 0.2})
    selection = select_candidates(pool, scores, parameters, orm.Int(1))['selection']
    attributes = selection.base.attributes.all
    assert attributes['n_accurate'] + attributes['n_candidate'] + attributes['n_failed'] == 12
    assert attributes['n_selected'] == 2
    with pytest.raises(ValueError, match='unknown selection parameters'):
        select_candidates(pool, scores, orm.Dict({'method': 'trust', 'batch_size': 2, 'upper': 1}), orm.Int(1))
