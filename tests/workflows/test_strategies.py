"""The strategy registry: the built-in presets, unknown names, and a plugin package that adds a strategy, a
selection method, a bias kind and a stop criterion through the entry-point groups (a real distribution on
``sys.path``, in a fresh interpreter; the bias kind and stop criterion run in a real explore job)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from ase.build import bulk

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs import explore
from aiida_alkit.jobs.explore_parameters import ExploreParameters, ParameterError
from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
from aiida_alkit.workflows.strategies import PRESET_FILE, Strategy, builtin_strategies, get_strategy, strategies

TINY = {'species': ['Cu'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]}


def test_builtin_strategies_are_the_presets_of_the_protocol_file():
    entries = yaml.safe_load(PRESET_FILE.open())['strategies']
    builtin = builtin_strategies()
    assert list(builtin) == list(entries) == ['gradient', 'alkpu', 'hal', 'dpgen', 'dopt', 'random']
    assert builtin['gradient'].preset['select'] == {
        'parameters': {'method': 'maxdet', 'posterior': True, 'uncertain_above': 0.15}
    }
    assert 'description' not in builtin['dpgen'].preset and 'trust window' in builtin['dpgen'].description
    assert strategies() == builtin  # no plugin installed here


def test_an_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown strategy 'greedy'; choose one of \['alkpu', 'dopt'"):
        get_strategy('greedy')


def test_a_strategy_must_name_a_selection_method_and_known_inputs():
    with pytest.raises(ValueError, match='must name a selection method'):
        Strategy('x', 'no selection', {'explore': {'parameters': {}}})
    with pytest.raises(ValueError, match=r"unknown preset keys \['trian'\]"):
        Strategy('x', 'typo', {'trian': {}, 'select': {'parameters': {'method': 'random'}}})


PLUGIN = '''
import numpy as np

from aiida_alkit.selection.api import Selection
from aiida_alkit.workflows.strategies import Strategy


def farthest_first(method, batch_size, *, pool_features, train_features, **_):
    """Pick the candidates farthest from the training set, farthest first (a toy method)."""
    distance = np.linalg.norm(pool_features[:, None] - train_features[None], axis=-1).min(axis=1)
    indices = np.argsort(-distance)[:batch_size]
    ranks = np.full(len(distance), -1)
    ranks[indices] = np.arange(indices.size)
    return Selection(method, indices, distance[indices], distance, ranks, 0, len(distance), 0)


FARTHEST = Strategy(
    'farthest',
    'toy: unbiased MD, the candidates farthest from the training set',
    {'select': {'parameters': {'method': 'farthest_first'}}},
)


class EnergyScale:
    """Toy bias term: u = scale |E| (eV), a function of the energy alone."""

    name = 'energy_scale'
    energy_level = True

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, outputs, batch, positions, strain):
        return UncertaintyValues(structure=self.scale * outputs['energy'].abs())


class UAbove:
    """Toy stop: a walker stops when the bias term's u exceeds a limit (eV)."""

    unphysical = False

    def __init__(self, limit):
        self.limit = limit

    def check(self, system, result):
        values = np.asarray(result.uncertainty, dtype=float)
        return np.where(values > self.limit, 'u_above', ''), {'toy_u': values}


ENERGY_SCALE = BiasKind('energy_scale', lambda context: EnergyScale(context.settings.bias.options['scale']))
U_ABOVE = StopCriterion('u_above', lambda context, limit, term: ([UAbove(float(limit))], term))
'''

PLUGIN = PLUGIN.replace(
    'from aiida_alkit.selection.api import Selection\n',
    'from aiida_alkit.exploration.bias import UncertaintyValues\n'
    'from aiida_alkit.jobs.explore_terms import BiasKind, StopCriterion\n'
    'from aiida_alkit.selection.api import Selection\n',
)


@pytest.fixture
def plugin_path(tmp_path):
    """A folder holding an installed (dist-info) toy plugin package registering one entry in each group."""
    (tmp_path / 'alkit_toy_plugin.py').write_text(PLUGIN)
    info = tmp_path / 'alkit_toy_plugin-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: alkit-toy-plugin\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text(
        '[alkit.strategies]\nfarthest = alkit_toy_plugin:FARTHEST\n\n'
        '[alkit.selectors]\nfarthest_first = alkit_toy_plugin:farthest_first\n\n'
        '[alkit.bias_kinds]\nenergy_scale = alkit_toy_plugin:ENERGY_SCALE\n\n'
        '[alkit.stop_criteria]\nu_above = alkit_toy_plugin:U_ABOVE\n'
    )
    return tmp_path


def test_a_plugin_package_adds_a_strategy_and_its_selection_method(plugin_path):
    tmp_path = plugin_path
    script = textwrap.dedent(
        """
        import numpy as np
        from aiida_alkit.selection.api import select
        from aiida_alkit.workflows.strategies import get_strategy
        from aiida_alkit.workflows.validation import CampaignInputs, DatasetContent, campaign_problem

        strategy = get_strategy('farthest')
        method = strategy.preset['select']['parameters']['method']
        pool = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
        picked = select(method, 2, pool_features=pool, train_features=np.zeros((1, 2)), seed=0)
        inputs = CampaignInputs(strategy='farthest', settings={'max_rounds': 1}, schedule={}, train={},
                                explore={}, select={'method': method}, seed=0,
                                datasets={'initial_dataset': DatasetContent(0, (), (), list)})
        problem = campaign_problem(inputs)
        print(picked.indices.tolist(), problem.exit_code if problem else None)
        """
    )
    environment = {'PYTHONPATH': str(tmp_path), 'PATH': '/usr/bin:/bin'}
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, env=environment, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    # the plugin's method picked the two farthest candidates; the campaign's checks know the strategy and the method
    # (the first problem they find is the missing data, after the settings)
    assert result.stdout.strip() == '[3, 1] ERROR_EMPTY_DATASET'


def _explore_with_plugin(plugin_path, folder, bias: dict, stop: dict) -> dict:
    parameters = {'walkers': 2, 'steps': 6, 'sample_every': 2, 'num_threads': 1, 'features': None}
    (folder / 'parameters.json').write_text(json.dumps({**parameters, 'bias': bias, 'stop': stop}))
    environment = {'PYTHONPATH': str(plugin_path), 'PATH': '/usr/bin:/bin'}
    result = subprocess.run(
        [sys.executable, '-m', 'aiida_alkit.jobs.explore', str(folder)],
        capture_output=True, text=True, env=environment, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stops = json.loads((folder / explore.STOPS_FILE).read_text())
    return {walker: entry['reason'] for walker, entry in stops.items()}


def test_a_plugin_bias_kind_and_stop_criterion_run_in_the_explore_job(plugin_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp('explore')
    GMNN(GMNNHyperparameters.from_dict(TINY)).save(folder / explore.POTENTIAL_FILE)
    structures = []
    for seed in range(2):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    ConfigurationArrays.from_atoms(structures).save(folder / explore.SEEDS_FILE)
    bias = {'kind': 'energy_scale', 'tau': 0.5, 'options': {'scale': 2.0}}

    # the plugin's criterion, switched on by its key: a limit of 0 eV stops every walker at once
    assert set(_explore_with_plugin(plugin_path, folder, bias, {'u_above': 0.0}).values()) == {'u_above'}
    # a limit never reached: the walkers run on, and the u the MD evaluated is the plugin's term with its options
    assert set(_explore_with_plugin(plugin_path, folder, bias, {'u_above': 1e9}).values()) == {'max_steps'}
    info = ConfigurationArrays.load(folder / explore.POOL_FILE).info
    np.testing.assert_allclose(info['u_energy'], 2.0 * np.abs(info['model_energy']), rtol=1e-6)
    np.testing.assert_allclose(info['toy_u'], info['u_energy'], rtol=1e-6)
    assert np.all(info['tau'] == 0.5)

    # without the plugin on the path, the job's parameters refuse both names, and say what is allowed
    with pytest.raises(ParameterError, match=r"bias.kind must be one of \['none', 'committee', 'gradient', 'hal'\]"):
        ExploreParameters.from_dict({'bias': bias})
    with pytest.raises(ParameterError, match=r"unknown stop parameters \['u_above'\]"):
        ExploreParameters.from_dict({'stop': {'u_above': 0.0}})
