"""Fixtures of the exploration tests: one torch thread, tiny float64 committees, small copper cells."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope='module', autouse=True)
def _single_torch_thread():
    """Keep each test on one core (other test sessions share the machine); restore the old value afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def tiny_committee():
    """Three untrained float64 GM-NN members for Cu (different seeds, so their energies disagree)."""
    from aiida_alkit.models.committee import Committee
    from aiida_alkit.models.gmnn import GMNNHyperparameters

    return Committee(GMNNHyperparameters.small(['Cu'], dtype='float64', hidden_widths=(16, 16)), n_members=3)


@pytest.fixture
def copper_cells():
    """Two rattled copper cells of 4 and 8 atoms (different sizes in one batch)."""
    from ase.build import bulk

    small = bulk('Cu', 'fcc', a=3.61, cubic=True)
    large = bulk('Cu', 'fcc', a=3.65, cubic=True) * (2, 1, 1)
    small.rattle(0.08, seed=1)
    large.rattle(0.08, seed=2)
    return [small, large]
