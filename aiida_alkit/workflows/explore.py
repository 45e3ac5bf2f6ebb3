"""`ExploreWorkChain` (``alkit.explore``): the explore CalcJob with automatic recovery.

Handlers (``BaseRestartWorkChain``): when every walker blew up before a single candidate was recorded (an empty
pool), the MD timestep is halved and the exploration run again, down to ``min_timestep_fs``; walkers that go
unphysical individually are already dropped by the MD driver and never need a restart.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_alkit.calculations.explore import ExploreCalculation
from aiida_alkit.workflows.restart import AlkitRestartWorkChain

__all__ = ['ExploreWorkChain']


class ExploreWorkChain(AlkitRestartWorkChain):
    """Explore; halve the timestep when all walkers blew up at once."""

    _process_class = ExploreCalculation
    _namespace = 'explore'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'min_timestep_fs',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.25),
            help='Do not halve the MD timestep below this (fs).',
        )
        spec.exit_code(401, 'ERROR_TIMESTEP_TOO_SMALL', message='Walkers blew up even at the smallest timestep.')

    @process_handler(priority=500, exit_codes=[ExploreCalculation.exit_codes.ERROR_EMPTY_POOL])
    def handle_empty_pool(self, node):
        """Every walker stopped at once (typically unphysical): halve the timestep and explore again."""
        parameters = self.ctx.inputs.parameters.get_dict()
        timestep = float(parameters.get('timestep_fs', 2.0)) / 2
        if timestep < self.inputs.min_timestep_fs.value:
            self.report(f'{node.process_label}<{node.pk}>: empty pool even at {2 * timestep} fs; giving up')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_TIMESTEP_TOO_SMALL)
        parameters['timestep_fs'] = timestep
        self.ctx.inputs.parameters = orm.Dict(parameters)
        stops = node.outputs.stops.get_dict().get('counts', {}) if 'stops' in node.outputs else {}
        self.report(f'{node.process_label}<{node.pk}>: no candidate (walker stops {stops}); timestep -> {timestep} fs')
        return ProcessHandlerReport(do_break=True)
