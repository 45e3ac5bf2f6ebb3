"""The one-file potential format: round trip, and clear errors for corrupt, truncated or foreign files."""

from __future__ import annotations

import pickle

import pytest
import torch

from aiida_alkit.models.serialization import PotentialFileError, load_potential_file, save_potential_file

HYPER = {'model_kind': 'gmnn', 'species': ['Cu'], 'cutoff': 5.0, 'widths': [32, 32]}


@pytest.fixture
def potential_file(tmp_path):
    path = tmp_path / 'model.pt'
    state = {
        'layer.weight': torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
        'layer.bias': torch.zeros(4),
    }
    save_potential_file(path, state, HYPER, extras={'rlekf.P0': torch.eye(3)})
    return path, state


def test_round_trip_is_bit_identical(potential_file):
    path, state = potential_file
    content = load_potential_file(path)
    assert content.hyperparameters == HYPER
    assert content.format_version == 1
    for name, tensor in state.items():
        assert torch.equal(content.state_dict[name], tensor)
    assert torch.equal(content.extras['rlekf.P0'], torch.eye(3))


@pytest.mark.faults
def test_truncated_file(potential_file):
    path, _ = potential_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PotentialFileError, match='corrupt or truncated'):
        load_potential_file(path)


def test_random_bytes(tmp_path):
    path = tmp_path / 'noise.pt'
    path.write_bytes(b'\x00\x01not a torch file' * 10)
    with pytest.raises(PotentialFileError, match='not a readable potential file'):
        load_potential_file(path)


class _Payload:
    def __reduce__(self):
        return (print, ('pickle code ran',))


@pytest.mark.faults
def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / 'evil.pt'
    torch.save({'format': 'aiida-alkit-potential', 'evil': _Payload()}, path)
    with pytest.raises(PotentialFileError):
        load_potential_file(path)
    assert 'pickle code ran' not in capsys.readouterr().out
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(PotentialFileError):
        load_potential_file(path)
    assert 'pickle code ran' not in capsys.readouterr().out


def test_foreign_and_future_files(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(2)}, path)
    with pytest.raises(PotentialFileError, match='not an aiida-alkit potential file'):
        load_potential_file(path)
    torch.save({'format': 'aiida-alkit-potential', 'format_version': 99}, path)
    with pytest.raises(PotentialFileError, match='format version 99 is not supported'):
        load_potential_file(path)


def test_bad_hyperparameters(tmp_path):
    with pytest.raises(PotentialFileError, match='lack'):
        save_potential_file(tmp_path / 'x.pt', {}, {'model_kind': 'gmnn'})
    with pytest.raises(PotentialFileError, match='cutoff'):
        save_potential_file(tmp_path / 'x.pt', {}, {**HYPER, 'cutoff': -1})


WRITER = """
import sys

import torch

from aiida_alkit.models.serialization import save_potential_file

path, hyper = sys.argv[1], {'model_kind': 'gmnn', 'species': ['Cu'], 'cutoff': 5.0, 'widths': [32, 32]}
state = {'w': torch.zeros(4_000_000)}  # 16 MB: most of the writer's time is spent writing
save_potential_file(path, state, hyper, extras={'version': 0})
print('written', flush=True)
version = 1
while True:
    save_potential_file(path, state, hyper, extras={'version': version})
    version += 1
"""


@pytest.mark.faults
@pytest.mark.parametrize('delay_s', [0.05, 0.3, 0.7])
def test_a_writer_killed_while_writing_leaves_a_whole_file(tmp_path, delay_s):
    """A process killed (SIGKILL, as a scheduler's time limit ends a job) while it rewrites a potential file, as the
    train job rewrites its checkpoint every epoch: the file on disk is the last one written whole. Found with a real
    SLURM, whose time limit truncated a checkpoint that the next job could then not read."""
    import subprocess
    import sys
    import time

    path = tmp_path / 'checkpoint.pt'
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == b'written'
        time.sleep(delay_s)
    finally:
        writer.kill()
        writer.wait()
    content = load_potential_file(path)
    assert content.state_dict['w'].shape == (4_000_000,)
    assert content.extras['version'] >= 0
