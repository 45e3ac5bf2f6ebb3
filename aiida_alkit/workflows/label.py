"""`LabelWorkChain` (``alkit.label``): label picked structures with pw.x or an ASE calculator.

Each pick is a ``StructureData``. With ``engine='pw'`` every pick gets its own ``PwBaseWorkChain`` built from
aiida-quantumespresso's protocols (forces and stress on), at most ``max_concurrent`` at a time; with
``engine='ase'`` all picks go into one ``alkit.label.ase`` job. A pick that cannot be labelled (unconverged SCF,
crashed code, forces above ``max_force``) is a *failed label*: recorded with its reason in the ``failures`` output
and left out of ``labelled``; the work chain fails only when no pick could be labelled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import WorkChain, calcfunction, if_, while_

from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.label import DEFAULT_MAX_FORCE
from aiida_alkit.profile import PSEUDO_FAMILY

__all__ = ['LabelWorkChain', 'failure_reason', 'failure_record', 'gather_labels', 'pack_structures']

ENGINES = ('pw', 'ase')


def failure_reason(node: orm.ProcessNode) -> str:
    """Why the label process ``node`` produced no labels: killed (with its process status), excepted, or failed."""
    name = f'{node.process_label}<{node.pk}>'
    if node.is_killed:
        return f'{name} was killed: {node.process_status or "no reason recorded"}'
    if node.is_excepted:
        lines = (node.exception or '').strip().splitlines()
        return f'{name} excepted: {lines[-1] if lines else "no exception recorded"}'
    return f'{name} failed with exit status {node.exit_status}: {node.exit_message}'


@calcfunction
def failure_record(reason: orm.Str, **structures: orm.StructureData) -> orm.Dict:
    """The failure record of structures none of which was labelled: ``{keyword: reason}`` for every structure (its
    inputs show which structures failed)."""
    return orm.Dict(dict.fromkeys(structures, reason.value))


@calcfunction
def pack_structures(**structures: orm.StructureData) -> DatasetData:
    """Structures (keyword → StructureData) as one DatasetData; ``info.pick`` holds each keyword, in sorted order."""
    atoms = []
    for key in sorted(structures):
        item = structures[key].get_ase()
        item.info = {'pick': key, 'structure_uuid': structures[key].uuid}
        atoms.append(item)
    return DatasetData(ConfigurationArrays.from_atoms(atoms, info_keys=['pick', 'structure_uuid']), validate=False)


@calcfunction
def gather_labels(max_force: orm.Float, failed: orm.Dict, **items: orm.Data) -> dict[str, orm.Data]:
    """Merge per-pick pw.x results into one labelled DatasetData and one failure record.

    ``items`` holds, per pick ``k``: ``structure__k`` (StructureData), ``parameters__k`` (output_parameters) and
    ``trajectory__k`` (output_trajectory). Energies in eV, forces in eV/Å; QE's stress (GPa, positive when
    compressed) becomes ASE's eV/Å³ convention. Picks whose largest force exceeds ``max_force`` (eV/Å) are moved to
    the failures. ``failed`` holds the picks whose pw.x run failed, ``{key: reason}``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_alkit.workflows.labelling import stress_from_pw

    failures = dict(failed.get_dict())
    labelled = []
    keys = sorted(key.split('__', 1)[1] for key in items if key.startswith('structure__'))
    for key in keys:
        structure = items[f'structure__{key}']
        atoms = structure.get_ase()
        trajectory = items[f'trajectory__{key}']
        forces = np.asarray(trajectory.get_array('forces')[-1])
        largest = float(np.linalg.norm(forces, axis=1).max())
        if largest > max_force.value:
            failures[key] = f'max force {largest:.1f} eV/Å exceeds {max_force.value} eV/Å (unphysical)'
            continue
        results: dict[str, Any] = {'energy': float(items[f'parameters__{key}']['energy']), 'forces': forces}
        if 'stress' in trajectory.get_arraynames() and atoms.pbc.all():
            results['stress'] = stress_from_pw(trajectory.get_array('stress')[-1])
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info = {'pick': key, 'structure_uuid': structure.uuid}
        labelled.append(atoms)
    outputs: dict[str, orm.Data] = {'failures': orm.Dict(failures)}
    if labelled:
        if not all(a.pbc.all() for a in labelled):
            for atoms in labelled:
                atoms.calc.results.pop('stress', None)
        arrays = ConfigurationArrays.from_atoms(labelled, info_keys=['pick', 'structure_uuid'], validate=False)
        outputs['labelled'] = DatasetData(arrays, validate=False)
    return outputs


@calcfunction
def name_ase_failures(packed: DatasetData, failures: orm.Dict) -> orm.Dict:
    """Failures of the ASE label job (by index into ``packed``) keyed by pick name."""
    picks = packed.arrays.info['pick']
    return orm.Dict({str(picks[r['index']]): r['reason'] for r in failures['failures']})


def _validate_inputs(inputs: dict, ctx) -> str | None:
    engine = inputs['engine'].value
    if engine not in ENGINES:
        return f'engine must be one of {ENGINES}, got {engine!r}'
    exposed_without_structures = ctx is not None and 'structures' not in ctx  # e.g. the campaign's label namespace
    if not exposed_without_structures and not inputs.get('structures'):
        return 'no structures to label'
    if engine == 'pw' and 'code' not in inputs.get('pw', {}):
        return 'engine "pw" needs pw.code (a quantumespresso.pw code)'
    if engine == 'ase':
        ase_inputs = inputs.get('ase', {})
        missing = [name for name in ('code', 'calculator') if name not in ase_inputs]
        if missing:
            return f'engine "ase" needs ase.{" and ase.".join(missing)}'
    return None


class LabelWorkChain(WorkChain):
    """Label every structure of the ``structures`` namespace with pw.x or an ASE calculator."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace(
            'structures', valid_type=orm.StructureData, dynamic=True, help='The structures to label, by pick name.'
        )
        spec.input('engine', valid_type=orm.Str, default=lambda: orm.Str('ase'), help='"pw" or "ase".')
        spec.input_namespace('pw', help='pw.x through PwBaseWorkChain (engine "pw").')
        spec.input('pw.code', valid_type=orm.AbstractCode, required=False, help='A quantumespresso.pw code.')
        spec.input(
            'pw.pseudo_family',
            valid_type=orm.Str,
            default=lambda: orm.Str(PSEUDO_FAMILY),
            help='Label of an aiida-pseudo family with recommended cutoffs.',
        )
        spec.input(
            'pw.protocol',
            valid_type=orm.Str,
            default=lambda: orm.Str('fast'),
            help='aiida-quantumespresso protocol: fast, balanced or stringent.',
        )
        spec.input(
            'pw.overrides',
            valid_type=orm.Dict,
            required=False,
            help='Protocol overrides (cutoffs, kpoints_distance, smearing, ...); forces and stress stay on.',
        )
        spec.input('pw.options', valid_type=orm.Dict, required=False, help='metadata.options of each pw.x job.')
        spec.input_namespace('ase', help='One alkit.label.ase job for all structures (engine "ase").')
        spec.input('ase.code', valid_type=orm.AbstractCode, required=False, help='The alkit-python code.')
        spec.input('ase.calculator', valid_type=orm.Str, required=False, help='Import path of an allowed calculator.')
        spec.input('ase.calculator_kwargs', valid_type=orm.Dict, required=False, help='Calculator keyword arguments.')
        spec.input(
            'ase.options',
            valid_type=orm.Dict,
            required=False,
            help='metadata.options of the ASE label job (default: one process, one hour).',
        )
        spec.input(
            'max_force',
            valid_type=orm.Float,
            default=lambda: orm.Float(DEFAULT_MAX_FORCE),
            help='Labels with a larger force (eV/Å) are unphysical and recorded as failures.',
        )
        spec.input(
            'max_concurrent',
            valid_type=orm.Int,
            default=lambda: orm.Int(8),
            help='At most this many pw.x jobs run at the same time (clusters cap jobs per user).',
        )
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.use_pw)(
                while_(cls.pw_remaining)(cls.submit_pw_wave, cls.inspect_pw_wave),
                cls.gather_pw,
            ).else_(
                cls.run_ase,
                cls.gather_ase,
            ),
            cls.finalize,
        )
        spec.output('labelled', valid_type=DatasetData, required=False, help='The labelled structures, one set.')
        spec.output('failures', valid_type=orm.Dict, help='Pick name → reason, for every failed label.')
        spec.exit_code(410, 'ERROR_NO_LABELS', message='No structure could be labelled ({count} failures).')

    def setup(self):
        self.ctx.pending = sorted(self.inputs.structures)
        self.ctx.failed = {}
        self.ctx.finished = {}

    def use_pw(self) -> bool:
        return self.inputs.engine.value == 'pw'

    # ------------------------------------------------------------------ pw.x
    def pw_remaining(self) -> bool:
        return bool(self.ctx.pending)

    def submit_pw_wave(self):
        from aiida_alkit.workflows.labelling import get_pw_builder, local_options

        wave = self.ctx.pending[: self.inputs.max_concurrent.value]
        self.ctx.pending = self.ctx.pending[len(wave) :]
        overrides = self.inputs.pw.overrides.get_dict() if 'overrides' in self.inputs.pw else {}
        options = self.inputs.pw.options.get_dict() if 'options' in self.inputs.pw else local_options()
        for key in wave:
            builder = get_pw_builder(
                self.inputs.pw.code,
                self.inputs.structures[key],
                pseudo_family=self.inputs.pw.pseudo_family.value,
                protocol=self.inputs.pw.protocol.value,
                overrides=overrides,
                options=options,
            )
            builder.metadata.call_link_label = f'pw_{key}'
            node = self.submit(builder)
            self.report(f'labelling {key} with PwBaseWorkChain<{node.pk}>')
            self.to_context(**{f'pw_{key}': node})
        self.ctx.wave = wave

    def inspect_pw_wave(self):
        for key in self.ctx.wave:
            node = self.ctx[f'pw_{key}']
            if node.is_finished_ok:
                self.ctx.finished[key] = node
            else:
                reason = failure_reason(node)
                self.ctx.failed[key] = reason
                self.report(f'failed label {key}: {reason}')

    def gather_pw(self):
        items: dict[str, orm.Data] = {}
        for key, node in self.ctx.finished.items():
            items[f'structure__{key}'] = self.inputs.structures[key]
            items[f'parameters__{key}'] = node.outputs.output_parameters
            items[f'trajectory__{key}'] = node.outputs.output_trajectory
        results = gather_labels(max_force=self.inputs.max_force, failed=orm.Dict(self.ctx.failed), **items)
        self.ctx.labelled = results.get('labelled')
        self.ctx.failures = results['failures']

    # ------------------------------------------------------------------ ASE
    def run_ase(self):
        from aiida_alkit.calculations.label_ase import AseLabelCalculation

        self.ctx.packed = pack_structures(**self.inputs.structures)
        builder = AseLabelCalculation.get_builder()
        builder.code = self.inputs.ase.code
        builder.configurations = self.ctx.packed
        builder.calculator = self.inputs.ase.calculator
        if 'calculator_kwargs' in self.inputs.ase:
            builder.calculator_kwargs = self.inputs.ase.calculator_kwargs
        builder.max_force = self.inputs.max_force
        builder.metadata.options.max_wallclock_seconds = 3600
        if 'options' in self.inputs.ase:
            for key, value in self.inputs.ase.options.get_dict().items():
                builder.metadata.options[key] = value
        builder.metadata.call_link_label = 'ase_label'
        node = self.submit(builder)
        self.report(f'labelling {len(self.inputs.structures)} structures with {builder.calculator.value} <{node.pk}>')
        self.to_context(ase_label=node)

    def gather_ase(self):
        node = self.ctx.ase_label
        if 'failures' in node.outputs:
            self.ctx.failures = name_ase_failures(self.ctx.packed, node.outputs.failures)
        else:
            reason = failure_reason(node)
            self.report(f'{len(self.inputs.structures)} failed labels: {reason}')
            # the job produced nothing to derive the record from: built from the structures and the reason
            self.ctx.failures = failure_record(orm.Str(reason), **self.inputs.structures)
        self.ctx.labelled = node.outputs.labelled if 'labelled' in node.outputs else None

    # ------------------------------------------------------------------ results
    def finalize(self):
        failures = self.ctx.failures
        self.out('failures', failures)
        count = len(failures.get_dict())
        if self.ctx.labelled is None:
            return self.exit_codes.ERROR_NO_LABELS.format(count=count)
        self.out('labelled', self.ctx.labelled)
        self.report(f'{len(self.ctx.labelled)} structures labelled, {count} failed')
        return None
