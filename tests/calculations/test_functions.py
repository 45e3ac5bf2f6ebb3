"""merge_datasets: split and round tags, seeded and reproducible, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_alkit.calculations.functions import assign_validation, merge_datasets
from aiida_alkit.data import DatasetData


def test_assign_validation_counts():
    rng = np.random.default_rng(0)
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
