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


class _FileCreator:
    """Unpickling this object creates a file: the marker of code run by a loader."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


IMPORT_AND_LOAD = """
import sys
from aiida import load_profile, orm
from aiida.manage.configuration import create_profile, get_config
from aiida.tools.archive import import_archive

config = get_config(create=True)
create_profile(config, name='fresh', email='fresh@localhost', storage_backend='core.sqlite_dos', storage_config={})
config.store()
load_profile('fresh', allow_switch=True)
import_archive(sys.argv[1])
from aiida_alkit.models.serialization import PotentialFileError
node = orm.load_node(sys.argv[2])
print('imported', type(node).__name__, node.species)
try:
    node.load()
except PotentialFileError as exc:
    print('refused:', exc)
"""


@pytest.mark.faults
def test_archive_with_a_pickled_payload_brings_data_only(aiida_profile, tmp_path):
    """A shared archive whose potential file was replaced by a pickle that creates a file when unpickled: importing
    it into a fresh profile runs nothing, and loading the potential refuses the file (weights_only)."""
    import os
    import pickle
    import subprocess
    import sys

    from aiida.tools.archive import create_archive

    good = tmp_path / 'model.pt'
    save_potential_file(good, {'w': torch.zeros(2)}, {'model_kind': 'gmnn', 'species': ['Cu'], 'cutoff': 4.0})
    node = PotentialData(file=good)
    marker = tmp_path / 'unpickled-code-ran'
    # the constructor checks the file, so the hostile content is swapped in afterwards, before storing: this is
    # what a tampered archive would carry
    node.base.repository.put_object_from_bytes(pickle.dumps(_FileCreator(str(marker))), PotentialData.FILENAME)
    node.store()
    archive = tmp_path / 'shared.aiida'
    create_archive([node], filename=archive)

    script = tmp_path / 'import_and_load.py'
    script.write_text(IMPORT_AND_LOAD)
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'fresh')}
    run = subprocess.run(
        [sys.executable, str(script), str(archive), node.uuid], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "imported PotentialData ['Cu']" in run.stdout
    assert 'refused:' in run.stdout and node.uuid in run.stdout
    assert not marker.exists()
