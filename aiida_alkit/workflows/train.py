"""`TrainWorkChain` (``alkit.train``): the train CalcJob with automatic recovery.

Handlers (``BaseRestartWorkChain``): a diverged loss (NaN/inf) lowers every learning rate by ``lr_reduction``
and trains again from scratch; a job that stopped itself before its walltime (``ERROR_OUT_OF_WALLTIME``: a single
Adam model stops when the next epoch would overrun 0.9 x ``max_wallclock_seconds``) or that the scheduler killed at
its walltime restarts from the ``checkpoint.pt`` its work folder holds (the remaining epochs, same settings; the
learning-rate schedule and Adam's moments start afresh). RLEKF and committee jobs write no checkpoint: they are
restarted from scratch.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_alkit.calculations.train import TrainCalculation
from aiida_alkit.models.potential import default_learning_rates, model_kind_of
from aiida_alkit.workflows.restart import AlkitRestartWorkChain

__all__ = ['TrainWorkChain']


class TrainWorkChain(AlkitRestartWorkChain):
    """Train a potential; recover from a diverged loss or an exhausted walltime."""

    _process_class = TrainCalculation
    _namespace = 'train'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'lr_reduction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.1),
            help='Factor applied to every learning rate after a diverged training run.',
        )
        spec.exit_code(
            401, 'ERROR_UNRECOVERABLE_FAILURE', message='The train job failed in a way no handler can recover from.'
        )

    @process_handler(priority=500, exit_codes=[TrainCalculation.exit_codes.ERROR_TRAINING_DIVERGED])
    def handle_diverged(self, node):
        """Lower the learning rates by ``lr_reduction`` and train again from scratch."""
        parameters = self.ctx.inputs.parameters.get_dict()
        training = dict(parameters.get('training') or {})
        rates = default_learning_rates(model_kind_of(parameters.get('model') or {}))
        rates.update(training.get('learning_rates') or {})
        factor = self.inputs.lr_reduction.value
        training['learning_rates'] = {group: rate * factor for group, rate in rates.items()}
        parameters['training'] = training
        self.ctx.inputs.parameters = orm.Dict(parameters)
        self.ctx.inputs.pop('parent_folder', None)
        self.report(
            f'{node.process_label}<{node.pk}> diverged: learning rates x{factor} -> {training["learning_rates"]}'
        )
        return ProcessHandlerReport(do_break=True)

    @process_handler(
        priority=400,
        exit_codes=[
            TrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
            TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
        ],
    )
    def handle_out_of_walltime(self, node):
        """Resume from the checkpoint in the interrupted job's work folder (single Adam models), else start over."""
        parameters = self.ctx.inputs.parameters.get_dict()
        checkpointed = parameters.get('optimizer', 'adam') == 'adam' and parameters.get('committee_size', 1) == 1
        if not checkpointed:
            self.report(f'{node.process_label}<{node.pk}> ran out of walltime without a checkpoint: starting over')
            return ProcessHandlerReport(do_break=True)
        self.ctx.inputs.parent_folder = node.outputs.remote_folder
        self.ctx.inputs.pop('initial_potential', None)
        self.report(f'{node.process_label}<{node.pk}> ran out of walltime: resuming from its checkpoint')
        return ProcessHandlerReport(do_break=True)
