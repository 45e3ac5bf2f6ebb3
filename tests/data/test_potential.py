"""PotentialData: stores a checked potential file, exposes its hyper-parameters, loads weights_only."""

from __future__ import annotations

import pytest
import torch
from aiida import orm

from aiida_alkit.data import PotentialData
from aiida_alkit.models.serialization import PotentialFileError, save_potential_file


def test_store_and_load(aiida_profile, tmp_path):
    path = tmp_path / 'model.pt'
    weights = {'w': torch.arange(6.0).reshape(2, 3)}
    save_potential_file(path, weights, {'model_kind': 'gmnn', 'species': ['Al', 'Cu'], 'cutoff': 5.0})
    node = PotentialData(file=path)
    node.set_metrics({'valid_forces_rmse_ev_per_ang': 0.05})
    node.store()
    loaded = orm.load_node(node.pk)
    assert loaded.model_kind == 'gmnn'
    assert loaded.species == ['Al', 'Cu']
    assert loaded.cutoff == 5.0
    assert loaded.metrics == {'valid_forces_rmse_ev_per_ang': 0.05}
    assert torch.equal(loaded.load().state_dict['w'], weights['w'])
    loaded.export(tmp_path / 'copy.pt')
    assert (tmp_path / 'copy.pt').read_bytes() == path.read_bytes()


@pytest.mark.faults
def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / 'broken.pt'
    path.write_bytes(b'garbage')
    with pytest.raises(PotentialFileError, match=r'broken\.pt'):
        PotentialData(file=path)
