"""ExploreWorkChain: an exploration in which every walker blows up is retried with half the timestep."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from ..calculations.test_explore import single_potential  # noqa: F401  (fixture)
from ..calculations.test_train import training_set  # noqa: F401  (fixture)

ExploreWorkChain = WorkflowFactory('alkit.explore')


@pytest.mark.faults
def test_blow_up_is_retried_with_a_smaller_timestep(alkit_python_code, single_potential, training_set):  # noqa: F811
    parameters = {
        'walkers': 2,
        'steps': 6,
        'sample_every': 3,
        'timestep_fs': 10.0,
        'temperature_K': 300.0,
        'num_threads': 1,
        'device': 'cpu',
        'features': None,
        # a walker is unphysical as soon as two atoms come closer than 1.1 x the training minimum: with 10 fs steps
        # every walker is stopped at once (empty pool), with 5 fs they survive
        'stop': {'min_distance_fraction': 0.999},
    }
    _, node = run_get_node(
        ExploreWorkChain,
        explore={
            'code': alkit_python_code,
            'potential': single_potential,
            'seeds': training_set,
            'training': training_set,
            'parameters': orm.Dict(parameters),
            'metadata': {'options': {'max_wallclock_seconds': 600}},
        },
        min_timestep_fs=orm.Float(0.1),
    )
    calls = sorted(node.called, key=lambda n: n.ctime)
    assert calls[0].exit_status == 410  # empty pool
    timesteps = [call.inputs.parameters['timestep_fs'] for call in calls]
    assert timesteps[:2] == [10.0, 5.0]
    assert node.is_finished_ok, node.exit_message  # seeded: 5 fs is enough here
    assert len(node.outputs.pool) > 0
