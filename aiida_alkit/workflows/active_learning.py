"""`ActiveLearningWorkChain` (``alkit.active_learning``): train → explore → select → label, round after round.

The work chain only sequences; every decision is made by a calcfunction or a process whose inputs are in the
graph (selection: :func:`~aiida_alkit.calculations.functions.select_candidates`; merge:
:func:`~aiida_alkit.calculations.functions.merge_datasets`; convergence:
:func:`~aiida_alkit.calculations.functions.campaign_convergence`, its own step ``decide`` after the selection, with
the rules of :mod:`aiida_alkit.workflows.convergence`). The campaign ends when:

* ``max_rounds`` rounds were run, or the ``label_budget`` (number of labelled structures) is spent;
* the fraction of explored candidates flagged *accurate* reaches ``accurate_fraction`` (DP-GEN's criterion; the
  window strategies ``dpgen`` and ``alkpu``, ``gradient`` through ``uncertain_above`` (a calibrated bound in eV/Å),
  ``dopt`` (extrapolation grade at most ``gamma_select``) and ``hal`` (frames of walkers whose HAL run never stopped)
  classify candidates as accurate), or nothing is left to
  select — at the *last* stage of the ``schedule``: at an earlier stage the campaign moves on to the next scheduled
  exploration (temperature, pressure) without labelling, as DP-GEN's stages do;
* with a ``test_dataset``: its force RMSE falls below ``target_force_rmse`` (eV/Å).

A failed label never stops a round; the campaign stops with ``ERROR_TOO_MANY_FAILED_LABELS`` only when more than
``max_failed_fraction`` of a round's labels fail.

Bad input fails the campaign in its first step, ``validate_inputs``, before any job is launched, with an exit code in
the 3xx range whose message names the problem and the offending set, index or value: settings out of range, an
unknown strategy or selection method, a batch larger than any candidate pool, train/explore parameters the jobs would
refuse, empty or unlabelled data, species the potential or the pseudopotential family does not cover, overlapping
atoms, an unphysical density (coordinates in the wrong unit) or an unreadable ``initial_potential``. The checks are
plain Python (:mod:`aiida_alkit.workflows.validation`); the port validator keeps only the structural checks (which
inputs go together), because a port validator can only refuse the submission, without an exit code or a stored input.
Nothing is computed and every input node stays in the graph.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_
from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin

from aiida_alkit.calculations.functions import (
    campaign_convergence,
    campaign_report,
    merge_datasets,
    select_candidates,
)
from aiida_alkit.data.dataset import DatasetData
from aiida_alkit.data.potential import PotentialData, PotentialFileError
from aiida_alkit.models.potential import model_kind_of
from aiida_alkit.workflows.explore import ExploreWorkChain
from aiida_alkit.workflows.label import LabelWorkChain, failure_reason, failure_record
from aiida_alkit.workflows.labelling import deep_merge
from aiida_alkit.workflows.strategies import get_strategy
from aiida_alkit.workflows.train import TrainWorkChain
from aiida_alkit.workflows.validation import (
    SETTING_RULES,
    STRATEGIES,
    CampaignInputs,
    DatasetContent,
    Problem,
    campaign_problem,
    max_pool_size,
    round_explore_parameters,
    schedule_length,
)

__all__ = ['STRATEGIES', 'ActiveLearningWorkChain', 'max_pool_size', 'round_explore_parameters']

PROTOCOL_FILE = pathlib.Path(__file__).parent / 'protocols' / 'active_learning.yaml'


def _validate_inputs(inputs: dict, _) -> str | None:
    """Structural checks only (which inputs go together); the content is checked by the ``validate_inputs`` step."""
    if ('initial_dataset' in inputs) == ('initial_structures' in inputs):
        return 'give exactly one of initial_dataset (labelled) or initial_structures (labelled in round 0)'
    if 'target_force_rmse' in inputs and 'test_dataset' not in inputs:
        return 'target_force_rmse needs a test_dataset'
    return None


class ActiveLearningWorkChain(ProtocolMixin, WorkChain):
    """An active-learning campaign for a machine-learned interatomic potential (see the module docstring)."""

    @classmethod
    def get_protocol_filepath(cls) -> pathlib.Path:
        """The YAML of the protocols (``fast``, ``balanced``, ``stringent``) and of the strategy presets."""
        return PROTOCOL_FILE

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
        spec.input(
            'initial_potential',
            valid_type=PotentialData,
            required=False,
            help='Warm start: round 1 continues training from this potential instead of a fresh model.',
        )
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
            default=lambda: orm.Dict({'method': 'maxdet', 'batch_size': 8}),
            help='method, batch_size and options of aiida_alkit.selection.api.select.',
        )
        spec.expose_inputs(LabelWorkChain, namespace='label', exclude=('structures',))
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.validate_inputs,
            cls.setup,
            if_(cls.needs_initial_labels)(cls.label_initial, cls.merge_initial),
            while_(cls.should_run_round)(
                cls.train,
                cls.inspect_train,
                cls.explore,
                cls.inspect_explore,
                cls.select,
                cls.decide,
                if_(cls.should_label)(cls.label, cls.inspect_label),
                cls.finish_round,
            ),
            cls.results,
        )
        spec.output('potential', valid_type=orm.Data, help='The last trained potential.')
        spec.output('dataset', valid_type=DatasetData, help='The final training set.')
        spec.output('report', valid_type=orm.Dict, help='One entry per round: counts, errors, temperatures, status.')
        # 301-307: settings; 308-311: data and potential; 312-313: pseudopotentials; 314-315: geometry
        spec.exit_code(
            301, 'ERROR_INVALID_CAMPAIGN_SETTING', message='Invalid campaign setting {key} = {value}: {reason}.'
        )
        spec.exit_code(302, 'ERROR_UNKNOWN_STRATEGY', message='Unknown strategy {strategy!r}: choose one of {choices}.')
        spec.exit_code(
            303,
            'ERROR_UNKNOWN_SELECTION_METHOD',
            message='Unknown selection method {method!r} in select.parameters: choose one of {choices}.',
        )
        spec.exit_code(
            304, 'ERROR_INVALID_BATCH_SIZE', message='select.parameters.batch_size = {batch_size} is invalid: {reason}.'
        )
        spec.exit_code(
            305, 'ERROR_INVALID_MD_SETTING', message='Invalid MD setting {key} = {value} in {where}: {reason}.'
        )
        spec.exit_code(306, 'ERROR_INVALID_TRAIN_PARAMETERS', message='Invalid train.parameters: {message}.')
        spec.exit_code(
            307, 'ERROR_INVALID_EXPLORE_PARAMETERS', message='Invalid explore.parameters in round {round}: {message}.'
        )
        spec.exit_code(308, 'ERROR_EMPTY_DATASET', message='Input {name} holds no configurations.')
        spec.exit_code(309, 'ERROR_MISSING_LABELS', message='Input {name} lacks {missing} labels: {reason}.')
        spec.exit_code(310, 'ERROR_INVALID_POTENTIAL', message='initial_potential PotentialData<{pk}>: {message}.')
        spec.exit_code(
            311,
            'ERROR_SPECIES_NOT_COVERED',
            message='The potential knows only {species} ({source}), but {name} contains {missing}.',
        )
        spec.exit_code(
            312,
            'ERROR_INVALID_PSEUDO_FAMILY',
            message='Pseudopotential family {family!r} cannot be used for pw.x labels: {reason}.',
        )
        spec.exit_code(
            313,
            'ERROR_PSEUDOS_NOT_COVERED',
            message='Pseudopotential family {family!r} has no pseudopotential for {missing}, which {name} contains.',
        )
        spec.exit_code(
            314,
            'ERROR_OVERLAPPING_ATOMS',
            message='Configuration {index} of {name} has two atoms {distance:.3f} Å apart (overlapping atoms; the '
            'minimum is {minimum} Å).',
        )
        spec.exit_code(
            315,
            'ERROR_UNPHYSICAL_DENSITY',
            message='Configuration {index} of {name} has {volume:.4g} Å³ per atom ({density:.3g} atoms/Å³), outside '
            '{low:g}-{high:g} Å³ per atom: are its coordinates in nm or Bohr instead of Å?',
        )
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
        :param overrides: nested dictionary merged last (same keys as the YAML). The model kind is chosen with
            ``{'train': {'parameters': {'model': {'kind': 'mace'}}}}`` (default GM-NN); the model settings come from
            the YAML's ``model_kinds`` section (the kind's ``default`` and its entry for the protocol).
        """
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol {protocol!r}; choose one of {sorted(data["protocols"])}')
        preset = get_strategy(strategy).preset  # ValueError naming the choices for an unknown strategy
        # aiida-quantumespresso's merge order: default inputs, protocol, then the overrides (here preset + user's)
        inputs = cls.get_protocol_inputs(protocol, deep_merge(preset, dict(overrides or {})))
        # the model section: the chosen kind's protocol settings (YAML `model_kinds`), the user's model on top
        user_model = dict(((inputs.get('train') or {}).get('parameters') or {}).get('model') or {})
        settings = data.get('model_kinds', {}).get(model_kind_of(user_model), {})
        model = deep_merge(dict(settings.get('default') or {}), dict(settings.get(protocol) or {}))
        inputs.setdefault('train', {}).setdefault('parameters', {})['model'] = deep_merge(model, user_model)
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
            if stage != 'select' and (inputs.get(stage) or {}).get('options'):
                builder[stage]['options'] = orm.Dict(inputs[stage]['options'])  # metadata.options of the jobs
        label = dict(label or {})
        if label:
            builder.label = _wrap_label_inputs(label)
        return builder

    # ------------------------------------------------------------------ input validation
    def validate_inputs(self):
        """Check the content of the inputs before any job runs (:mod:`aiida_alkit.workflows.validation`); fail with
        the exit code of the first problem."""
        problem = campaign_problem(self._campaign_inputs())
        if problem is None:
            return None
        exit_code = self.exit_codes[problem.exit_code].format(**problem.values)
        self.report(f'input rejected before any job ran: {exit_code.message}')
        return exit_code

    def _datasets(self) -> list[tuple[str, DatasetData]]:
        """(input name, node) of every configuration set given."""
        names = ('initial_dataset', 'initial_structures', 'seeds', 'test_dataset')
        return [(name, self.inputs[name]) for name in names if name in self.inputs]

    def _campaign_inputs(self) -> CampaignInputs:
        """The plain content of the inputs that the checks read."""
        settings = {key: self.inputs[key].value for key in SETTING_RULES if key in self.inputs}
        return CampaignInputs(
            strategy=self.inputs.strategy.value,
            settings=settings,
            schedule=self.inputs.schedule.get_dict(),
            train=self.inputs.train.parameters.get_dict(),
            explore=self.inputs.explore.parameters.get_dict(),
            select=self.inputs.select.parameters.get_dict(),
            seed=self.inputs.seed.value,
            datasets={
                name: DatasetContent(len(node), tuple(node.labels), tuple(node.species), lambda node=node: node.arrays)
                for name, node in self._datasets()
            },
            potential=self._initial_potential(),
            pseudo_elements=self._pseudo_elements(),
        )

    def _initial_potential(self) -> tuple[int, dict] | Problem | None:
        """(pk, hyper-parameters) of ``initial_potential`` loaded with weights_only, or the problem of loading it."""
        if 'initial_potential' not in self.inputs:
            return None
        node = self.inputs.initial_potential
        try:
            content = node.load()
        except (PotentialFileError, OSError) as exc:
            return Problem('ERROR_INVALID_POTENTIAL', {'pk': node.pk, 'message': str(exc).rstrip('.')})
        return node.pk, dict(content.hyperparameters)

    def _pseudo_elements(self) -> tuple[str, list[str]] | Problem | None:
        """With the pw label engine: (family, its elements) of a family that recommends cutoffs, or its problem."""
        if self.inputs.label.engine.value != 'pw':
            return None
        from aiida.common.exceptions import MultipleObjectsError, NotExistent
        from aiida_pseudo.groups.family import PseudoPotentialFamily

        label = self.inputs.label.pw.pseudo_family.value
        reason = None
        try:
            family = orm.load_group(label)
        except (NotExistent, MultipleObjectsError) as exc:
            return Problem('ERROR_INVALID_PSEUDO_FAMILY', {'family': label, 'reason': f'no such group ({exc})'})
        if not isinstance(family, PseudoPotentialFamily):
            reason = f'the group is a {type(family).__name__}, not an aiida-pseudo family'
        elif not hasattr(family, 'get_recommended_cutoffs'):
            reason = 'it recommends no cutoffs (the pw protocols need a cutoffs family)'
        if reason:
            return Problem('ERROR_INVALID_PSEUDO_FAMILY', {'family': label, 'reason': reason})
        return label, list(family.elements)

    # ------------------------------------------------------------------ steps
    def setup(self):
        self.ctx.round = 0
        self.ctx.report_sources = {}  # round_<k>_<what> -> node: what the report is computed from
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
        self._source('trained_on', dataset)
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
                **(
                    {'initial_potential': self.inputs.initial_potential}
                    if self.ctx.round == 1 and 'initial_potential' in self.inputs
                    else {}
                ),
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
        self._source('potential', self.ctx.potential)
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
        parameters = round_explore_parameters(
            self.inputs.explore.parameters.get_dict(), self.ctx.schedule, self.ctx.round, self.inputs.seed.value
        )
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
        self._source('explore_parameters', node.inputs.explore.parameters)
        self._source('pool', self.ctx.pool)
        self._source('stops', node.outputs.stops)
        self.ctx.current['explored'] = len(self.ctx.pool)
        self.ctx.current['walker_stops'] = dict(node.outputs.stops.get_dict().get('counts', {}))
        parameters = self.inputs.select.parameters.get_dict()
        if 'batch_size' in parameters and 'label_budget' in self.inputs:
            remaining = self.inputs.label_budget.value - self.ctx.n_labelled
            parameters['batch_size'] = max(1, min(parameters['batch_size'], remaining))
        parameters['batch_size'] = min(parameters.get('batch_size', 8), len(self.ctx.pool))
        if 'uncertain_above' in parameters and 'calibrated_uncertainty' not in self.ctx.scores.get_arraynames():
            parameters.pop('uncertain_above')
            self.report(
                f'round {self.ctx.round}: no calibrated uncertainty (the training set needs a validation '
                'configuration with forces): every candidate counts as uncertain this round'
            )
        self.ctx.select_parameters = parameters
        return None

    def select(self):
        """Select from (and classify) the pool; the counts of converged rounds are reported too."""
        outputs = select_candidates(
            self.ctx.pool,
            self.ctx.scores,
            orm.Dict(self.ctx.select_parameters),
            orm.Int(self.inputs.seed.value * 1000 + self.ctx.round),
        )
        selection = outputs['selection']
        self._source('selection', selection)
        self.ctx.picks = {key: value for key, value in outputs.items() if key.startswith('pick_')}
        counts = {key: selection.base.attributes.get(key) for key in ('n_accurate', 'n_candidate', 'n_failed')}
        self.ctx.current.update(counts)
        self.ctx.current['selected'] = len(self.ctx.picks)
        self.report(
            f'round {self.ctx.round}: selected {len(self.ctx.picks)} of {self.ctx.current["explored"]} candidates '
            f'(accurate {counts["n_accurate"]}, candidate {counts["n_candidate"]}, failed {counts["n_failed"]})'
        )

    def decide(self):
        """Has the campaign converged, or this exploration stage? Decided by the ``campaign_convergence``
        calcfunction from the round's selection, pool and potential (rules in :mod:`~aiida_alkit.workflows.convergence`)."""
        optional = {}
        if 'target_force_rmse' in self.inputs:
            optional = {'potential': self.ctx.potential, 'target_force_rmse': self.inputs.target_force_rmse}
        decision = campaign_convergence(
            self.ctx.report_sources[self._source_key('selection')],
            self.ctx.pool,
            orm.Int(self.ctx.round),
            orm.Int(schedule_length(self.ctx.schedule)),
            self.inputs.accurate_fraction,
            **optional,
        )
        self._source('convergence', decision)
        self.ctx.decision = decision.get_dict()
        if self.ctx.decision['converged']:
            self.ctx.converged = True
            self.ctx.stop_reason = self.ctx.decision['reason']
        elif self.ctx.decision['stage_done']:  # DP-GEN's stages: move on to the next scheduled exploration
            self.report(
                f'round {self.ctx.round}: {self.ctx.decision["accurate_fraction"]:.0%} accurate, '
                f'{len(self.ctx.picks)} picks at this stage; moving on to the next scheduled exploration without '
                'labelling'
            )

    def should_label(self) -> bool:
        """Label the picks unless the campaign converged or the round finished its exploration stage."""
        return not self.ctx.decision['converged'] and not self.ctx.decision['stage_done']

    def label(self):
        inputs = self._label_inputs(dict(self.ctx.picks))
        inputs.metadata = {'call_link_label': f'label_round_{self.ctx.round}'}
        node = self.submit(LabelWorkChain, **inputs)
        self.report(f'round {self.ctx.round}: labelling {len(self.ctx.picks)} structures, LabelWorkChain<{node.pk}>')
        return ToContext(label=node)

    def inspect_label(self):
        node = self.ctx.label
        if 'failures' in node.outputs:
            record = node.outputs.failures
        else:  # the label work chain itself was killed or excepted: none of the picks was labelled
            reason = failure_reason(node)
            record = failure_record(orm.Str(reason), **self.ctx.picks)
            self.report(f'round {self.ctx.round}: {reason}; its {len(self.ctx.picks)} picks count as failed labels')
        failures = record.get_dict()
        self._source('failures', record)
        if 'labelled' in node.outputs:
            self._source('labelled', node.outputs.labelled)
        total = len(self.ctx.picks)
        labelled = len(node.outputs.labelled) if 'labelled' in node.outputs else 0
        self.ctx.current.update({'labelled': labelled, 'failed_labels': len(failures)})
        self.ctx.n_labelled += labelled
        if total and len(failures) / total > self.inputs.max_failed_fraction.value:
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

    def _source_key(self, what: str) -> str:
        from aiida_alkit.workflows.provenance import report_source

        return report_source(self.ctx.round, what)

    def _source(self, what: str, node: orm.Data) -> None:
        """Keep ``node`` as one of the nodes this round's report row is computed from (``campaign_report``)."""
        self.ctx.report_sources[self._source_key(what)] = node

    def finish_round(self):
        current = self.ctx.current
        current['dataset_size'] = len(self.ctx.dataset)
        self._source('dataset', self.ctx.dataset)
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
        # built by a calcfunction from the nodes of every round, so the graph shows what the report was computed from
        self.out('report', campaign_report(orm.Str(self.ctx.stop_reason), **self.ctx.report_sources))


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
