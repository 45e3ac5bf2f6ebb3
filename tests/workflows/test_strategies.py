"""The strategy registry: the built-in presets, unknown names, and a plugin package that adds a strategy and a
selection method through the entry-point groups (a real distribution on ``sys.path``, in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from aiida_alkit.workflows.strategies import PRESET_FILE, Strategy, builtin_strategies, get_strategy, strategies


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
'''


def test_a_plugin_package_adds_a_strategy_and_its_selection_method(tmp_path):
    (tmp_path / 'alkit_toy_plugin.py').write_text(PLUGIN)
    info = tmp_path / 'alkit_toy_plugin-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: alkit-toy-plugin\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text(
        '[alkit.strategies]\nfarthest = alkit_toy_plugin:FARTHEST\n\n'
        '[alkit.selectors]\nfarthest_first = alkit_toy_plugin:farthest_first\n'
    )
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
