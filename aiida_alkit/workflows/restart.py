"""The part every alkit restart wrapper shares: the CalcJob's inputs exposed in one namespace, the standard
``BaseRestartWorkChain`` loop, and its outputs exposed unchanged."""

from __future__ import annotations

from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, while_

__all__ = ['AlkitRestartWorkChain']


class AlkitRestartWorkChain(BaseRestartWorkChain):
    """Base of ``TrainWorkChain`` and ``ExploreWorkChain``: set ``_process_class`` and ``_namespace``."""

    _namespace = ''

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(cls._process_class, namespace=cls._namespace)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.expose_outputs(cls._process_class)

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._namespace))
