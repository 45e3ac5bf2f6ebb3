"""Provenance helpers on one tiny real campaign (2 rounds, EMT labels, one planted failed initial label)."""

from __future__ import annotations

import sys

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.profile import LOCAL_TRANSPORT_SETTINGS
from aiida_alkit.workflows.provenance import (
    called_processes,
    campaign_rounds,
    failed_labels,
    labels_of_potential,
    round_from_link_label,
    round_of,
    selection_record,
)

from .test_active_learning import TINY_OVERRIDES

N_GOOD = 4  # rattled copper cells labelled in round 0; a fifth one (two atoms 1.4 Å apart) fails its label


def module_python_code(tmp_path_factory) -> orm.InstalledCode:
    """The ``alkit-python`` code (this interpreter) on a configured localhost; usable from module-scoped fixtures."""
    from aiida.common.exceptions import NotExistent

    existing = orm.QueryBuilder().append(orm.InstalledCode, filters={'label': 'alkit-python'}).all(flat=True)
    if existing:
        return existing[0]
    try:
        computer = orm.Computer.collection.get(
            label='localhost', hostname='localhost', scheduler_type='core.direct', transport_type='core.local'
        )
    except NotExistent:
        computer = orm.Computer(
            label='localhost',
            hostname='localhost',
            workdir=str(tmp_path_factory.mktemp('aiida_work')),
            transport_type='core.local',
            scheduler_type='core.direct',
        ).store()
        computer.set_minimum_job_poll_interval(0)
        computer.set_default_mpiprocs_per_machine(1)
    if not computer.is_configured:
        computer.configure(**LOCAL_TRANSPORT_SETTINGS)  # as `alkit setup` does (see conftest.py)
    return orm.InstalledCode(label='alkit-python', computer=computer, filepath_executable=sys.executable).store()


def copper(n: int, labelled: bool = False, broken: bool = False) -> DatasetData:
    """``n`` rattled 4-atom Cu cells (EMT-labelled if ``labelled``); ``broken`` appends one whose label fails."""
    from ..conftest import label_with_emt

    structures = []
    for seed in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(label_with_emt(atoms) if labelled else atoms)
    if broken:
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.positions[0] += [0.8, 0.8, 0.0]  # 1.42 Å from a neighbour: EMT force ~59 eV/Å > max_force 20 eV/Å
        structures.append(atoms)
    return DatasetData.from_atoms(structures).store()


def run_tiny_campaign(code: orm.InstalledCode, structures: DatasetData) -> orm.WorkflowNode:
    """Two rounds of the ``gradient`` strategy with tiny models, two walkers x 10 steps and EMT labels."""
    builder = WorkflowFactory('alkit.active_learning').get_builder_from_protocol(
        code,
        structures,
        protocol='fast',
        strategy='gradient',
        overrides=TINY_OVERRIDES,
        label={'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}},
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    return node


@pytest.fixture(scope='module')
def campaign(aiida_profile, tmp_path_factory):
    code = module_python_code(tmp_path_factory)
    return run_tiny_campaign(code, copper(N_GOOD, broken=True))


def _label_inputs(campaign_node, link_label: str) -> dict[str, orm.StructureData]:
    """Pick name → StructureData given to the campaign's LabelWorkChain ``link_label``."""
    (_, label_node), *_ = called_processes(campaign_node, link_label_filter=link_label)
    links = label_node.base.links.get_incoming(link_label_filter='structures__%').all()
    return {link.link_label.split('__', 1)[1]: link.node for link in links}


def test_round_from_link_label():
    assert round_from_link_label('label_initial') == 0
    assert round_from_link_label('train_round_3') == 3
    assert round_from_link_label('explore_round_12') == 12
    assert round_from_link_label('label_round_1') == 1
    assert round_from_link_label('CALL') is None
    assert round_from_link_label('label_round_x') is None


def test_labels_of_potential_without_training_set(aiida_profile):
    with pytest.raises(ValueError, match='no creator'):
        labels_of_potential(orm.Int(1).store())


@pytest.mark.campaign
def test_labels_of_potential(campaign):
    initial = _label_inputs(campaign, 'label_initial')
    assert sorted(initial) == [f'initial_{i:04d}' for i in range(N_GOOD + 1)]
    good_initial = {initial[f'initial_{i:04d}'].uuid for i in range(N_GOOD)}
    round_1 = {s.uuid for s in _label_inputs(campaign, 'label_round_1').values()}
    round_2 = {s.uuid for s in _label_inputs(campaign, 'label_round_2').values()}
    assert len(round_1) == len(round_2) == 2
    final = labels_of_potential(campaign.outputs.potential)
    assert all(isinstance(s, orm.StructureData) for s in final)
    assert len(final) == len({s.uuid for s in final}) == N_GOOD + 2
    assert {s.uuid for s in final} == good_initial | round_1  # the round-2 picks came after the last training
    first_potential = dict(called_processes(campaign, link_label_filter='train_round_1'))['train_round_1']
    assert {s.uuid for s in labels_of_potential(first_potential.outputs.potential)} == good_initial


@pytest.mark.campaign
def test_selection_record(campaign):
    for number in (1, 2):
        picks = _label_inputs(campaign, f'label_round_{number}')
        for name, structure in picks.items():
            record = selection_record(structure)
            attributes = structure.base.attributes
            assert record['pick'] == name
            assert record['round'] == number
            assert record['rank'] == attributes.get('alkit_rank') == int(name.split('_')[1])
            assert record['score'] == attributes.get('alkit_score')
            assert record['pool_index'] == attributes.get('alkit_pool_index')
            assert record['method'] == 'maxdet'
            assert record['labelled'] is True and record['failure'] is None
            assert orm.load_node(record['selection']).base.attributes.get('method') == 'maxdet'
    initial = _label_inputs(campaign, 'label_initial')
    record = selection_record(initial['initial_0000'])
    assert record['round'] == 0 and record['pick'] == 'initial_0000'
    assert record['rank'] is None and record['method'] is None and record['labelled'] is True
    broken = selection_record(initial[f'initial_{N_GOOD:04d}'])
    assert broken['labelled'] is False and 'max force' in broken['failure']
    with pytest.raises(ValueError, match='neither selected nor labelled'):
        selection_record(orm.StructureData(ase=bulk('Cu')).store())


@pytest.mark.campaign
def test_failed_labels(campaign):
    initial = _label_inputs(campaign, 'label_initial')
    failures = failed_labels(campaign)
    assert len(failures) == 1
    (failure,) = failures
    assert failure['round'] == 0
    assert failure['pick'] == f'initial_{N_GOOD:04d}'
    assert 'max force' in failure['reason'] and 'exceeds' in failure['reason']
    assert failure['structure'] == initial[failure['pick']].uuid
    label_node = orm.load_node(failure['label_process'])
    assert failure['pick'] in label_node.outputs.failures.get_dict()


@pytest.mark.campaign
def test_round_of(campaign):
    for number in (1, 2):
        for structure in _label_inputs(campaign, f'label_round_{number}').values():
            assert round_of(structure, campaign) == number
    for structure in _label_inputs(campaign, 'label_initial').values():
        assert round_of(structure, campaign) == 0
    with pytest.raises(ValueError, match='not produced by campaign'):
        round_of(orm.StructureData(ase=bulk('Cu')).store(), campaign)
    other = orm.WorkflowNode().store()
    with pytest.raises(ValueError, match='not produced by campaign'):
        round_of(next(iter(_label_inputs(campaign, 'label_round_1').values())), other)


@pytest.mark.campaign
def test_campaign_rounds_match_report(campaign):
    report = campaign.outputs.report.get_dict()['rounds']
    assert campaign_rounds(campaign) == report  # a finished campaign's rows are its report
    rebuilt = campaign_rounds(campaign, rebuild=True)  # what a running campaign shows: the same rows from the graph
    assert [row['round'] for row in rebuilt] == [row['round'] for row in report] == [1, 2]
    for got, expected in zip(rebuilt, report, strict=True):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value, key
    assert rebuilt[0]['trained_on'] == N_GOOD
    assert rebuilt[1]['trained_on'] == report[0]['dataset_size'] == N_GOOD + 2


@pytest.mark.campaign
def test_report_is_computed_by_a_calcfunction_from_the_rounds_nodes(campaign):
    """The work chain stores no data node itself: the report is returned by ``campaign_report``, whose inputs are the
    nodes every row was computed from (each round's training set, potential, pool, selection, labels, ...)."""
    report = campaign.outputs.report
    creator = report.creator
    assert creator.process_label == 'campaign_report'
    assert creator.caller.pk == campaign.pk
    inputs = {link.link_label: link.node for link in creator.base.links.get_incoming().all()}
    assert inputs['stop_reason'].value == report['stop_reason']
    for number in (1, 2):
        potential = inputs[f'round_{number}_potential']
        assert potential.pk == _called(campaign, f'train_round_{number}').outputs.potential.pk
        assert inputs[f'round_{number}_pool'].pk == _called(campaign, f'explore_round_{number}').outputs.pool.pk
        assert inputs[f'round_{number}_selection'].creator.process_label == 'select_candidates'
        decision = inputs[f'round_{number}_convergence']  # the campaign's decision, computed from the selection
        assert decision.creator.process_label == 'campaign_convergence'
        assert decision.creator.inputs.selection.pk == inputs[f'round_{number}_selection'].pk
        assert decision['stage_done'] is report['rounds'][number - 1]['stage_converged'] is False
        assert len(inputs[f'round_{number}_trained_on']) == report['rounds'][number - 1]['trained_on']
        assert len(inputs[f'round_{number}_dataset']) == report['rounds'][number - 1]['dataset_size']
    assert inputs['round_2_dataset'].pk == campaign.outputs.dataset.pk


def _called(campaign, link_label: str):
    (link,) = campaign.base.links.get_outgoing(link_label_filter=link_label).all()
    return link.node
