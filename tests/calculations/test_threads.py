"""A job uses as many torch threads as its scheduler request granted cores, never more (issue: threads)."""

from __future__ import annotations

import json

import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node

from aiida_alkit.jobs.common import GRANTED_CORES_KEY, configure_threads, torch_threads

from .test_train import (
    TINY,
    TrainCalculation,
    training_set,  # noqa: F401  (fixture)
)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_threads_follow_the_granted_cores(restore_threads):
    assert configure_threads({}) is None  # nothing known: torch's default is left alone
    assert configure_threads({GRANTED_CORES_KEY: 1, 'num_threads': 4}) == 1 == torch.get_num_threads()  # never more
    assert configure_threads({GRANTED_CORES_KEY: 3, 'num_threads': 2}) == 2 == torch.get_num_threads()  # fewer: ok
    assert configure_threads({GRANTED_CORES_KEY: 2}) == 2 == torch.get_num_threads()
    assert configure_threads({'num_threads': 1}) == 1  # outside AiiDA (no scheduler request)
    torch.set_num_threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def _parameters_file(code, dataset, resources: dict | None) -> dict:
    """The parameters.json of a dry run (written under ./submit_test of the working directory)."""
    builder = TrainCalculation.get_builder()
    builder.code = code
    builder.dataset = dataset
    builder.parameters = orm.Dict({'model': TINY, 'num_threads': 8, 'training': {'epochs': 1}})
    if resources is not None:
        builder.metadata.options.resources = resources
    builder.metadata.dry_run = True  # prepare_for_submission only: the input files, no job
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = node.dry_run_info['folder']
    with open(f'{folder}/parameters.json') as handle:
        return json.load(handle)


@pytest.mark.parametrize(
    ('resources', 'granted'),
    [
        (None, 1),  # the localhost default: one core per job, the daemon and the other jobs share the rest
        ({'num_machines': 1, 'num_mpiprocs_per_machine': 1, 'num_cores_per_mpiproc': 4}, 4),
        ({'num_machines': 1, 'num_mpiprocs_per_machine': 2}, 2),
    ],
)
def test_the_calcjob_writes_the_granted_cores(
    alkit_python_code,
    training_set,  # noqa: F811
    resources,
    granted,
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder under the working directory
    parameters = _parameters_file(alkit_python_code, training_set, resources)
    assert parameters[GRANTED_CORES_KEY] == granted
    assert parameters['num_threads'] == 8  # the request stays as given; the job caps it at the granted cores
