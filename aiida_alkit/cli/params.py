"""Click parameter types of the ``alkit`` commands: aiida-core's node identifier narrowed to one kind of node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from aiida.cmdline.params.types import NodeParamType

__all__ = ['CAMPAIGN', 'DATASET', 'NodeOfKind']


class NodeOfKind(NodeParamType):
    """A node given by pk, uuid or label as ``verdi`` takes them (aiida-core's ``NodeParamType``: it loads the default
    profile if none is loaded, and names an unknown or ambiguous identifier), that must also pass ``accepts``.

    :param kind: what the node must be, with its article (``'a DatasetData'``), for the error message.
    :param accepts: whether a loaded node is of that kind.
    """

    def __init__(self, kind: str, accepts: Callable[[Any], bool]):
        super().__init__()
        self.kind = kind
        self.name = kind.split()[-1]
        self.accepts = accepts

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        node = super().convert(value, param, ctx)
        if not self.accepts(node):
            self.fail(f'node {value} is a {type(node).__name__}, not {self.kind}', param, ctx)
        return node


def _is_dataset(node) -> bool:
    from aiida_alkit.data import DatasetData

    return isinstance(node, DatasetData)


def _is_campaign(node) -> bool:
    from aiida import orm

    return isinstance(node, orm.WorkflowNode) and node.process_label == 'ActiveLearningWorkChain'


#: A ``DatasetData`` node.
DATASET = NodeOfKind('a DatasetData', _is_dataset)
#: The node of an ``ActiveLearningWorkChain``.
CAMPAIGN = NodeOfKind('an ActiveLearningWorkChain', _is_campaign)
