"""`ActiveLearningWorkChain` (``alkit.active_learning``): train → explore → select → label, round after round.

The work chain only sequences; every decision is made by a calcfunction or a process whose inputs are in the
graph (selection: :func:`~aiida_alkit.calculations.functions.select_candidates`; merge:
:func:`~aiida_alkit.calculations.functions.merge_datasets`). Convergence, checked after each exploration:

* ``max_rounds`` rounds were run, or the ``label_budget`` (number of labelled structures) is spent;
* the fraction of explored candidates flagged *accurate* reaches ``accurate_fraction`` (DP-GEN's criterion; only
  window strategies — ``dpgen``, ``alkpu`` — classify candidates as accurate);
* with a ``test_dataset``: its force RMSE falls below ``target_force_rmse`` (eV/Å).

A failed label never stops a round; the campaign stops with ``ERROR_TOO_MANY_FAILED_LABELS`` only when more than
``max_failed_fraction`` of a round's labels fail.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import yaml
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_alkit.calculations.functions import merge_datasets, select_candidates
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.workflows.explore import ExploreWorkChain
from aiida_alkit.workflows.label import LabelWorkChain
from aiida_alkit.workflows.labelling import deep_merge
from aiida_alkit.workflows.train import TrainWorkChain

__all__ = ['STRATEGIES', 'ActiveLearningWorkChain']

PROTOCOL_FILE = pathlib.Path(__file__).parent / 'protocols' / 'active_learning.yaml'
STRATEGIES = ('gradient', 'alkpu', 'hal', 'dpgen', 'dopt', 'random')


def load_protocol_file() -> dict:
    with PROTOCOL_FILE.open() as handle:
        return yaml.safe_load(handle)


def _validate_inputs(inputs: dict, _) -> str | None:
    if ('initial_dataset' in inputs) == ('initial_structures' in inputs):
        return 'give exactly one of initial_dataset (labelled) or initial_structures (labelled in round 0)'
    if 'initial_dataset' in inputs and 'energy' not in inputs['initial_dataset'].labels:
        return 'initial_dataset has no energy labels; pass it as initial_structures to label it first'
    strategy = inputs['strategy'].value
    if strategy not in STRATEGIES:
        return f'strategy must be one of {STRATEGIES}, got {strategy!r}'
    if inputs['max_rounds'].value < 1:
        return 'max_rounds must be at least 1'
    if not 0 < inputs['accurate_fraction'].value <= 1:
        return 'accurate_fraction must be in (0, 1]'
    if not 0 <= inputs['max_failed_fraction'].value <= 1:
        return 'max_failed_fraction must be in [0, 1]'
    if 'target_force_rmse' in inputs and 'test_dataset' not in inputs:
        return 'target_force_rmse needs a test_dataset'
    schedule = inputs['schedule'].get_dict()
    unknown = sorted(set(schedule) - {'temperatures', 'pressures', 'steps', 'walkers'})
    if unknown:
        return f'unknown schedule keys {unknown}; use temperatures, pressures, steps, walkers (lists, one per round)'
    method = inputs['select']['parameters'].get_dict().get('method')
    if method is None:
        return 'select.parameters needs a "method" (the strategy presets set it; see get_builder_from_protocol)'
    return None


class ActiveLearningWorkChain(WorkChain):
    """An active-learning campaign for a machine-learned interatomic potential (see the module docstring)."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('code', valid_type=orm.AbstractCode, help='The alkit-python code that runs train/explore jobs.')
        spec.input(
            'initial_dataset', valid_type=DatasetData, required=False, help='Labelled configurations to start from.'
        )
        spec.input(
            'initial_structures',
            valid_type=DatasetData,
            required=False,
            help='Unlabelled configurations, labelled in round 0 with the label settings.',
        )
        spec.input(
            'seeds', valid_type=DatasetData, required=False, help='MD starting structures (default: the initial set).'
        )
        spec.input('test_dataset', valid_type=DatasetData, required=False, help='Labelled test set for the target.')
        spec.input('strategy', valid_type=orm.Str, default=lambda: orm.Str('gradient'), help=f'One of {STRATEGIES}.')
        spec.input('max_rounds', valid_type=orm.Int, default=lambda: orm.Int(5), help='Maximum number of rounds.')
        spec.input(
            'label_budget', valid_type=orm.Int, required=False, help='Stop when this many structures were labelled.'
        )
        spec.input(
            'accurate_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.9),
            help='Converged when at least this fraction of explored candidates is accurate (window strategies).',
        )
        spec.input(
            'target_force_rmse',
            valid_type=orm.Float,
            required=False,
            help='Converged when the test-set force RMSE (eV/Å) is below this.',
        )
        spec.input(
            'max_failed_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.5),
            help='Stop with an error when a larger fraction of a round’s labels fails.',
        )
        spec.input(
            'validation_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.1), help='Validation share.'
        )
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of every random choice.')
        spec.input(
            'schedule',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help='Per-round lists: temperatures (K), pressures (GPa), steps, walkers; the last value repeats.',
        )
        spec.input_namespace('train', help='Train settings.')
        spec.input('train.parameters', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='jobs/train.py.')
        spec.input('train.options', valid_type=orm.Dict, required=False, help='metadata.options of train jobs.')
        spec.input_namespace('explore', help='Explore settings.')
        spec.input('explore.parameters', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='jobs/explore.py.')
        spec.input('explore.options', valid_type=orm.Dict, required=False, help='metadata.options of explore jobs.')
        spec.input_namespace('select', help='Selection settings.')
        spec.input(
            'select.parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({'method': 'lcmd', 'batch_size': 8}),
            help='method, batch_size and options of aiida_alkit.selection.api.select.',
        )
        spec.expose_inputs(LabelWorkChain, namespace='label', exclude=('structures',))
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.needs_initial_labels)(cls.label_initial, cls.merge_initial),
            while_(cls.should_run_round)(
                cls.train,
                cls.inspect_train,
                cls.explore,
                cls.inspect_explore,
                cls.select,
                if_(cls.should_label)(cls.label, cls.inspect_label),
                cls.finish_round,
            ),
            cls.results,
        )
        spec.output('potential', valid_type=orm.Data, help='The last trained potential.')
        spec.output('dataset', valid_type=DatasetData, help='The final training set.')
        spec.output('report', valid_type=orm.Dict, help='One entry per round: counts, errors, temperatures, status.')
        spec.exit_code(401, 'ERROR_TRAINING_FAILED', message='Training failed in round {round}: {message}')
        spec.exit_code(402, 'ERROR_EXPLORATION_FAILED', message='Exploration failed in round {round}: {message}')
        spec.exit_code(403, 'ERROR_INITIAL_LABELS_FAILED', message='Labelling the initial structures failed.')
        spec.exit_code(
            404,
            'ERROR_TOO_MANY_FAILED_LABELS',
            message='Round {round}: {failed} of {total} labels failed (more than max_failed_fraction).',
        )

    # ------------------------------------------------------------------ protocol
    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structures: DatasetData,
        protocol: str | None = None,
        strategy: str = 'gradient',
        overrides: Mapping[str, Any] | None = None,
        label: Mapping[str, Any] | None = None,
    ):
        """A builder from the YAML protocols (``fast``, ``balanced``, ``stringent``) and a strategy preset.

        :param structures: labelled → ``initial_dataset``; unlabelled → ``initial_structures`` (labelled first).
        :param label: the ``label`` namespace (engine and its code/settings), e.g.
            ``{'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}}``.
        :param overrides: nested dictionary merged last (same keys as the YAML).
        """
        data = load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol {protocol!r}; choose one of {sorted(data["protocols"])}')
        if strategy not in data['strategies']:
            raise ValueError(f'unknown strategy {strategy!r}; choose one of {sorted(data["strategies"])}')
        inputs = deep_merge(data['default_inputs'], data['protocols'][protocol])
        inputs = deep_merge(inputs, data['strategies'][strategy])
        inputs = deep_merge(inputs, overrides or {})
        inputs.pop('description', None)
        builder = cls.get_builder()
        builder.code = code
        if 'energy' in structures.labels:
            builder.initial_dataset = structures
        else:
            builder.initial_structures = structures
        builder.strategy = orm.Str(strategy)
        for key, node_type in (
            ('max_rounds', orm.Int),
            ('accurate_fraction', orm.Float),
            ('max_failed_fraction', orm.Float),
            ('validation_fraction', orm.Float),
            ('seed', orm.Int),
            ('label_budget', orm.Int),
            ('target_force_rmse', orm.Float),
        ):
            if key in inputs:
                builder[key] = node_type(inputs[key])
        builder.schedule = orm.Dict(inputs.get('schedule', {}))
        for stage in ('train', 'explore', 'select'):
            builder[stage]['parameters'] = orm.Dict((inputs.get(stage) or {}).get('parameters', {}))
        label = dict(label or {})
        if label:
            builder.label = _wrap_label_inputs(label)
        return builder

    # ------------------------------------------------------------------ steps
    def setup(self):
        self.ctx.round = 0
        self.ctx.rounds = []
        self.ctx.n_labelled = 0
        self.ctx.converged = False
        self.ctx.stop_reason = ''
        self.ctx.dataset = self.inputs.get('initial_dataset')
        self.ctx.potential = None
        schedule = self.inputs.schedule.get_dict()
        self.ctx.schedule = schedule
        self.report(
            f'campaign: strategy {self.inputs.strategy.value}, at most {self.inputs.max_rounds.value} rounds'
            + (f', label budget {self.inputs.label_budget.value}' if 'label_budget' in self.inputs else '')
        )

    def needs_initial_labels(self) -> bool:
        return 'initial_structures' in self.inputs

    def _label_inputs(self, structures: dict[str, orm.StructureData]) -> AttributeDict:
        inputs = AttributeDict(self.exposed_inputs(LabelWorkChain, namespace='label'))
        inputs.structures = structures
        return inputs

    def label_initial(self):
        dataset = self.inputs.initial_structures
        structures = {f'initial_{i:04d}': dataset.get_structure(i) for i in range(len(dataset))}
        inputs = self._label_inputs(structures)
        inputs.metadata = {'call_link_label': 'label_initial'}
        node = self.submit(LabelWorkChain, **inputs)
        self.report(f'round 0: labelling {len(structures)} initial structures with LabelWorkChain<{node.pk}>')
        return ToContext(initial_labels=node)

    def merge_initial(self):
        node = self.ctx.initial_labels
        if 'labelled' not in node.outputs:
            return self.exit_codes.ERROR_INITIAL_LABELS_FAILED
        self.ctx.dataset = node.outputs.labelled
        self.ctx.n_labelled += len(node.outputs.labelled)
        return None

    def should_run_round(self) -> bool:
        return not self.ctx.converged and self.ctx.round < self.inputs.max_rounds.value

    def _scheduled(self, key: str, default: Any) -> Any:
        values = self.ctx.schedule.get(key)
        if not values:
            return default
        return values[min(self.ctx.round - 1, len(values) - 1)]  # round is 1-based

    def train(self):
        self.ctx.round += 1
        self.ctx.current = {'round': self.ctx.round}
        dataset = (
            merge_datasets(
                self.ctx.dataset,
                round_index=orm.Int(self.ctx.round - 1),
                validation_fraction=self.inputs.validation_fraction,
                seed=self.inputs.seed,
            )
            if self.ctx.round == 1
            else self.ctx.dataset
        )
        self.ctx.dataset = dataset
        parameters = self.inputs.train.parameters.get_dict()
        training = dict(parameters.get('training') or {})
        training.setdefault('seed', self.inputs.seed.value + self.ctx.round)
        parameters['training'] = training
        inputs = {
            'train': {
                'code': self.inputs.code,
                'dataset': dataset,
                'parameters': orm.Dict(parameters),
                'metadata': {'options': self._options('train')},
                **({'test_dataset': self.inputs.test_dataset} if 'test_dataset' in self.inputs else {}),
            },
            'metadata': {'call_link_label': f'train_round_{self.ctx.round}'},
        }
        node = self.submit(TrainWorkChain, **inputs)
        self.report(f'round {self.ctx.round}: training on {len(dataset)} configurations with TrainWorkChain<{node.pk}>')
        return ToContext(train=node)

    def _options(self, stage: str) -> dict:
        options = {'max_wallclock_seconds': 3600}
        if 'options' in self.inputs[stage]:
            options.update(self.inputs[stage].options.get_dict())
        return options

    def inspect_train(self):
        node = self.ctx.train
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(round=self.ctx.round, message=node.exit_message)
        self.ctx.potential = node.outputs.potential
        self.ctx.current['metrics'] = dict(self.ctx.potential.metrics)
        if 'test_forces_rmse_ev_per_ang' in self.ctx.current['metrics']:
            self.ctx.current['test_forces_rmse'] = self.ctx.current['metrics']['test_forces_rmse_ev_per_ang']
        self.report(f'round {self.ctx.round}: trained, validation {self._format_metrics(self.ctx.current["metrics"])}')
        return None

    @staticmethod
    def _format_metrics(metrics: dict) -> str:
        parts = []
        for key, label, scale, unit in (
            ('valid_energy_rmse_ev_per_atom', 'E', 1e3, 'meV/atom'),
            ('valid_forces_rmse_ev_per_ang', 'F', 1e3, 'meV/Å'),
        ):
            if key in metrics:
                parts.append(f'{label} RMSE {metrics[key] * scale:.1f} {unit}')
        return ', '.join(parts) or 'no validation errors'

    def explore(self):
        parameters = self.inputs.explore.parameters.get_dict()
        parameters['temperature_K'] = float(self._scheduled('temperatures', parameters.get('temperature_K', 300.0)))
        pressure = self._scheduled('pressures', parameters.get('pressure_GPa'))
        parameters['pressure_GPa'] = None if pressure is None else float(pressure)
        parameters['steps'] = int(self._scheduled('steps', parameters.get('steps', 200)))
        parameters['walkers'] = int(self._scheduled('walkers', parameters.get('walkers', 4)))
        parameters['seed'] = self.inputs.seed.value * 1000 + self.ctx.round
        self.ctx.current.update(
            {'temperature_K': parameters['temperature_K'], 'pressure_GPa': parameters['pressure_GPa'],
             'steps': parameters['steps'], 'walkers': parameters['walkers']}
        )  # fmt: skip
        seeds = self.inputs.get('seeds', self.ctx.dataset)
        inputs = {
            'explore': {
                'code': self.inputs.code,
                'potential': self.ctx.potential,
                'seeds': seeds,
                'training': self.ctx.dataset,
                'parameters': orm.Dict(parameters),
                'metadata': {'options': self._options('explore')},
            },
            'metadata': {'call_link_label': f'explore_round_{self.ctx.round}'},
        }
        node = self.submit(ExploreWorkChain, **inputs)
        self.report(
            f'round {self.ctx.round}: exploring at {parameters["temperature_K"]:.0f} K with {parameters["walkers"]} '
            f'walkers x {parameters["steps"]} steps, ExploreWorkChain<{node.pk}>'
        )
        return ToContext(explore=node)

    def inspect_explore(self):
        node = self.ctx.explore
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_EXPLORATION_FAILED.format(round=self.ctx.round, message=node.exit_message)
        self.ctx.pool = node.outputs.pool
        self.ctx.scores = node.outputs.scores
        self.ctx.current['explored'] = len(self.ctx.pool)
        self.ctx.current['walker_stops'] = dict(node.outputs.stops.get_dict().get('counts', {}))
        parameters = self.inputs.select.parameters.get_dict()
        if parameters.get('method') == 'alkpu':
            parameters.setdefault('kpu_trained', self.ctx.potential.base.attributes.get('kpu_trained'))
        if 'batch_size' in parameters and 'label_budget' in self.inputs:
            remaining = self.inputs.label_budget.value - self.ctx.n_labelled
            parameters['batch_size'] = max(1, min(parameters['batch_size'], remaining))
        parameters['batch_size'] = min(parameters.get('batch_size', 8), len(self.ctx.pool))
        if 'uncertain_above' in parameters and 'calibrated_uncertainty' not in self.ctx.scores.get_arraynames():
            parameters.pop('uncertain_above')
            self.report(
                f'round {self.ctx.round}: no calibrated uncertainty (the training set needs >= 2 validation '
                'configurations with forces): every candidate counts as uncertain this round'
            )
        self.ctx.select_parameters = parameters
        return None

    def select(self):
        """Select from (and classify) the pool; check convergence. Converged rounds still report their counts."""
        outputs = select_candidates(
            self.ctx.pool,
            self.ctx.scores,
            orm.Dict(self.ctx.select_parameters),
            orm.Int(self.inputs.seed.value * 1000 + self.ctx.round),
        )
        selection = outputs['selection']
        self.ctx.picks = {key: value for key, value in outputs.items() if key.startswith('pick_')}
        counts = {key: selection.base.attributes.get(key) for key in ('n_accurate', 'n_candidate', 'n_failed')}
        self.ctx.current.update(counts)
        self.ctx.current['selected'] = len(self.ctx.picks)
        explored = max(1, self.ctx.current['explored'])
        accurate = counts['n_accurate'] / explored
        self.ctx.current['accurate_fraction'] = accurate
        if accurate >= self.inputs.accurate_fraction.value:
            self.ctx.converged = True
            self.ctx.stop_reason = f'{accurate:.0%} of the explored candidates are accurate'
        elif 'target_force_rmse' in self.inputs and self._test_force_rmse() < self.inputs.target_force_rmse.value:
            self.ctx.converged = True
            self.ctx.stop_reason = 'test-set force RMSE below the target'
        elif not self.ctx.picks:
            self.ctx.converged = True
            self.ctx.stop_reason = 'nothing left to select'
        self.report(
            f'round {self.ctx.round}: selected {len(self.ctx.picks)} of {self.ctx.current["explored"]} candidates '
            f'(accurate {counts["n_accurate"]}, candidate {counts["n_candidate"]}, failed {counts["n_failed"]})'
        )

    def should_label(self) -> bool:
        return not self.ctx.converged

    def _test_force_rmse(self) -> float:
        return self.ctx.potential.metrics.get('test_forces_rmse_ev_per_ang', float('inf'))

    def label(self):
        inputs = self._label_inputs(dict(self.ctx.picks))
        inputs.metadata = {'call_link_label': f'label_round_{self.ctx.round}'}
        node = self.submit(LabelWorkChain, **inputs)
        self.report(f'round {self.ctx.round}: labelling {len(self.ctx.picks)} structures, LabelWorkChain<{node.pk}>')
        return ToContext(label=node)

    def inspect_label(self):
        node = self.ctx.label
        failures = node.outputs.failures.get_dict() if 'failures' in node.outputs else {}
        total = len(self.ctx.picks)
        labelled = len(node.outputs.labelled) if 'labelled' in node.outputs else 0
        self.ctx.current.update({'labelled': labelled, 'failed_labels': len(failures)})
        self.ctx.n_labelled += labelled
        if total and len(failures) / total > self.inputs.max_failed_fraction.value:
            self.ctx.rounds.append(self.ctx.current)
            return self.exit_codes.ERROR_TOO_MANY_FAILED_LABELS.format(
                round=self.ctx.round, failed=len(failures), total=total
            )
        if labelled:
            self.ctx.dataset = merge_datasets(
                self.ctx.dataset,
                labelled=node.outputs.labelled,
                round_index=orm.Int(self.ctx.round),
                validation_fraction=self.inputs.validation_fraction,
                seed=self.inputs.seed,
            )
        if 'label_budget' in self.inputs and self.ctx.n_labelled >= self.inputs.label_budget.value:
            self.ctx.converged = True
            self.ctx.stop_reason = f'label budget of {self.inputs.label_budget.value} spent'
        return None

    def finish_round(self):
        current = self.ctx.current
        current['dataset_size'] = len(self.ctx.dataset)
        self.ctx.rounds.append(current)
        self.report(
            f'round {current["round"]} done: explored {current.get("explored", 0)}, selected '
            f'{current.get("selected", 0)}, labelled {current.get("labelled", 0)}, failed '
            f'{current.get("failed_labels", 0)}; training set {current["dataset_size"]}'
        )

    def results(self):
        if not self.ctx.stop_reason:
            self.ctx.stop_reason = f'maximum of {self.inputs.max_rounds.value} rounds reached'
        self.report(f'campaign finished after {self.ctx.round} rounds: {self.ctx.stop_reason}')
        self.out('potential', self.ctx.potential)
        self.out('dataset', self.ctx.dataset)
        report = orm.Dict({'rounds': self.ctx.rounds, 'stop_reason': self.ctx.stop_reason}).store()
        self.out('report', report)


def _wrap_label_inputs(label: Mapping[str, Any]) -> dict:
    """Plain values of the label namespace as AiiDA nodes (engine, calculator names, numbers)."""
    out: dict[str, Any] = {}
    for key, value in label.items():
        if isinstance(value, Mapping):
            out[key] = _wrap_label_inputs(value)
        elif isinstance(value, str):
            out[key] = orm.Str(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, int):
            out[key] = orm.Int(value)
        else:
            out[key] = orm.Float(value)
    for key in ('calculator_kwargs', 'overrides', 'options'):
        for namespace in out.values():
            if isinstance(namespace, dict) and isinstance(namespace.get(key), dict):
                namespace[key] = orm.Dict(namespace[key])
    return out
