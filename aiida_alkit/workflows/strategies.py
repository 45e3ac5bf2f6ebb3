"""The campaign strategies, one entry each: a name, what it does and its preset (campaign inputs merged over the
protocol). No AiiDA import.

A strategy's preset names the parts it uses by their registry keys: the explore job's ``bias.kind`` and ``stop``
criteria (:class:`~aiida_alkit.jobs.explore_parameters.ExploreParameters`) and the select step's ``method``
(:func:`~aiida_alkit.selection.api.selectors`). The built-in strategies are the ``strategies`` section of
``protocols/active_learning.yaml``; a plugin package adds its own through the entry-point group
:data:`STRATEGY_ENTRY_POINT_GROUP` (each entry point names a :class:`Strategy`, or a function returning one), together
with a selection method of its own in ``alkit.selectors`` if it needs one. A plugin cannot replace a built-in.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ['STRATEGY_ENTRY_POINT_GROUP', 'Strategy', 'builtin_strategies', 'get_strategy', 'strategies']

#: Entry-point group through which a plugin package adds strategies.
STRATEGY_ENTRY_POINT_GROUP = 'alkit.strategies'
PRESET_FILE = pathlib.Path(__file__).parent / 'protocols' / 'active_learning.yaml'
#: The campaign inputs a preset may set.
PRESET_KEYS = ('train', 'explore', 'select', 'schedule', 'max_rounds', 'accurate_fraction', 'label_budget')


@dataclass(frozen=True)
class Strategy:
    """One active-learning strategy.

    :param name: the campaign's ``strategy`` input.
    :param description: what it does, with the paper it follows.
    :param preset: campaign inputs, e.g. ``{'explore': {'parameters': {'bias': {'kind': 'gradient'}}}, 'select':
        {'parameters': {'method': 'maxdet'}}}``, merged over the protocol and under the user's overrides.
    """

    name: str
    description: str
    preset: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.preset) - set(PRESET_KEYS))
        if unknown:
            raise ValueError(f'strategy {self.name!r}: unknown preset keys {unknown}; allowed: {list(PRESET_KEYS)}')
        method = ((self.preset.get('select') or {}).get('parameters') or {}).get('method')
        if not isinstance(method, str):
            raise ValueError(
                f'strategy {self.name!r}: its preset must name a selection method (select.parameters.method)'
            )


@functools.cache
def builtin_strategies() -> dict[str, Strategy]:
    """The strategies of the ``strategies`` section of the protocol file, in their order there."""
    with PRESET_FILE.open() as handle:
        entries = yaml.safe_load(handle)['strategies']
    return {
        name: Strategy(
            name,
            ' '.join(str(entry.get('description', '')).split()),
            {k: v for k, v in entry.items() if k != 'description'},
        )
        for name, entry in entries.items()
    }


def strategies() -> dict[str, Strategy]:
    """The built-in strategies and those of installed plugins (:data:`STRATEGY_ENTRY_POINT_GROUP`)."""
    return {**builtin_strategies(), **_plugin_strategies()}


@functools.cache
def _plugin_strategies() -> dict[str, Strategy]:
    """The installed plugins' strategies (not those named like a built-in), looked up once per process."""
    from importlib.metadata import entry_points

    found: dict[str, Strategy] = {}
    for entry_point in entry_points(group=STRATEGY_ENTRY_POINT_GROUP):
        if entry_point.name in builtin_strategies():
            continue
        value = entry_point.load()
        strategy = value if isinstance(value, Strategy) else value()
        if not isinstance(strategy, Strategy) or strategy.name != entry_point.name:
            raise TypeError(
                f'entry point {entry_point.name!r} of {STRATEGY_ENTRY_POINT_GROUP} must give a Strategy of that name, '
                f'got {strategy!r}'
            )
        found[strategy.name] = strategy
    return found


def get_strategy(name: str) -> Strategy:
    """The strategy ``name``; ValueError naming the choices if there is none."""
    available = strategies()
    if name not in available:
        raise ValueError(f'unknown strategy {name!r}; choose one of {sorted(available)}')
    return available[name]
