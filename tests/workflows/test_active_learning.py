"""End-to-end campaigns with real training, MD and EMT labels (pytest -m campaign runs exactly these)."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.workflows.labelling import deep_merge

from ..conftest import label_with_emt

ActiveLearningWorkChain = WorkflowFactory('alkit.active_learning')

TINY_OVERRIDES = {
    'max_rounds': 2,
    'train': {
        'parameters': {
            'model': {'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]},
            'training': {'epochs': 4, 'batch_size': 4},
            'num_threads': 1,
            'device': 'cpu',
        }
    },
    'explore': {'parameters': {'walkers': 2, 'steps': 10, 'sample_every': 5, 'num_threads': 1, 'device': 'cpu'}},
    'select': {'parameters': {'batch_size': 2}},
    'schedule': {'temperatures': [300, 600]},
}

#: The same campaign with a tiny MACE: only the model section differs (`kind` picks the model).
MACE_TINY_OVERRIDES = {**TINY_OVERRIDES, 'train': {'parameters': dict(TINY_OVERRIDES['train']['parameters'])}}
MACE_TINY_OVERRIDES['train']['parameters']['model'] = {
    'kind': 'mace',
    'cutoff': 4.0,
    'channels': 4,
    'max_ell': 1,
    'radial_mlp': [8],
    'mlp_width': 4,
}


def _copper(n: int, labelled: bool) -> DatasetData:
    structures = []
    for seed in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(label_with_emt(atoms) if labelled else atoms)
    return DatasetData.from_atoms(structures).store()


def _emt(code) -> dict:
    return {'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}}


@pytest.mark.campaign
@pytest.mark.parametrize('strategy', ['gradient', 'dpgen'])
def test_two_round_campaign(alkit_python_code, strategy):
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(6, labelled=False),
        protocol='fast',
        strategy=strategy,
        overrides=TINY_OVERRIDES,
        label=_emt(alkit_python_code),
    )
    if strategy == 'dpgen':
        builder.train.parameters = orm.Dict({**builder.train.parameters.get_dict(), 'committee_size': 2})
        builder.select.parameters = orm.Dict({**builder.select.parameters.get_dict(), 'lo': 0.0, 'hi': 100.0})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    rounds = results['report']['rounds']
    assert [entry['round'] for entry in rounds] == [1, 2]
    assert rounds[0]['temperature_K'] == 300 and rounds[1]['temperature_K'] == 600
    assert all(entry['explored'] > 0 for entry in rounds)
    assert all(entry['selected'] == 2 and entry['labelled'] == 2 for entry in rounds)
    dataset = results['dataset']
    assert len(dataset) == 6 + 2 + 2
    assert sorted(set(dataset.arrays.info['round'])) == [0, 1, 2]
    # provenance: the final potential was trained (round 2) on the set holding the labels selected in round 1
    trained_on = results['potential'].creator.inputs.dataset
    assert len(trained_on) == 6 + 2
    assert 1 in set(trained_on.arrays.info['round'])


def test_protocol_and_validation(alkit_python_code):
    with pytest.raises(ValueError, match='unknown strategy'):
        ActiveLearningWorkChain.get_builder_from_protocol(alkit_python_code, _copper(2, True), strategy='magic')
    with pytest.raises(ValueError, match='unknown protocol'):
        ActiveLearningWorkChain.get_builder_from_protocol(alkit_python_code, _copper(2, True), protocol='quick')
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(2, True),
        protocol='fast',
        strategy='dpgen',
        overrides={'train': {'options': {'max_wallclock_seconds': 7200}}},
        label=_emt(alkit_python_code),
    )
    assert builder.train.options['max_wallclock_seconds'] == 7200  # scheduler options through the overrides
    assert builder.select.parameters['method'] == 'trust'
    assert builder.train.parameters['committee_size'] == 4
    assert 'initial_dataset' in builder
    # content problems are exit codes of the first step (more in tests/workflows/test_bad_input.py)
    builder.max_rounds = orm.Int(0)
    _, node = run_get_node(builder)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_INVALID_CAMPAIGN_SETTING.status
    assert 'max_rounds = 0' in node.exit_message
    assert node.called == []


@pytest.mark.campaign
@pytest.mark.pwx
def test_campaign_round_with_pw_labels(alkit_python_code):
    from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, ensure_resources

    ensure_resources()
    structures = []
    for seed, strain in enumerate((0.99, 1.01)):
        atoms = bulk('Al', 'fcc', a=4.04 * strain, cubic=True)
        atoms.rattle(0.04, seed=seed)
        structures.append(atoms)
    initial = DatasetData.from_atoms(structures).store()
    overrides = {
        **TINY_OVERRIDES,
        'max_rounds': 1,
        'train': {
            'parameters': {
                **TINY_OVERRIDES['train']['parameters'],
                'model': {'species': ['Al'], 'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]},
            }
        },
    }
    label = {
        'engine': 'pw',
        'pw': {
            'code': orm.load_code(f'{PW_CODE}@localhost'),
            'pseudo_family': PSEUDO_FAMILY,
            'overrides': {'kpoints_distance': 0.6},
        },
        'max_concurrent': 2,
    }
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code, initial, protocol='fast', strategy='gradient', overrides=overrides, label=label
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    (entry,) = results['report']['rounds']
    assert entry['labelled'] == 2 and entry['failed_labels'] == 0
    dataset = results['dataset']
    assert len(dataset) == 2 + 2
    assert dataset.labels == ['energy', 'forces', 'stress']
    launched = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
    assert len(launched) == 4  # two initial structures and two picks, each a real pw.x run


@pytest.mark.campaign
@pytest.mark.parametrize('strategy', ['alkpu', 'hal', 'dopt', 'random'])
def test_one_round_of_every_other_strategy(alkit_python_code, strategy):
    overrides = {**TINY_OVERRIDES, 'max_rounds': 1}
    if strategy == 'alkpu':  # RLEKF on the tiny model: one epoch, small blocks
        overrides = deep_merge(overrides, {'train': {'parameters': {'rlekf': {'epochs': 1, 'block_size': 64}}}})
    if strategy == 'hal':  # a softmax over 32 atoms is at least 1/32: every HAL run stops, its stop frame is picked
        overrides = deep_merge(overrides, {'explore': {'parameters': {'stop': {'hal': {'s_tol': 0.01}}}}})
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(4, labelled=True),
        protocol='fast',
        strategy=strategy,
        overrides=overrides,
        label=_emt(alkit_python_code),
    )
    if strategy == 'alkpu':  # open the KPU window wide: this test checks the plumbing, not the thresholds
        builder.select.parameters = orm.Dict({**builder.select.parameters.get_dict(), 'c0': 0.0, 'c1': 1e9})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    (entry,) = results['report']['rounds']
    assert entry['explored'] > 0
    assert entry['selected'] >= 1
    assert entry['labelled'] == entry['selected'] - entry['failed_labels']
    select = next(n for n in node.called_descendants if getattr(n, 'process_label', '') == 'select_candidates')
    expected = {'alkpu': 'alkpu', 'hal': 'hal', 'dopt': 'maxvol', 'random': 'random'}[strategy]
    assert select.outputs.selection.base.attributes.get('method') == expected
    if strategy == 'alkpu':  # the window's reference reaches the select step with the scores, from the potential
        (train,) = [n for n in node.called_descendants if getattr(n, 'process_label', '') == 'TrainWorkChain']
        reference = train.outputs.potential.base.attributes.get('kpu_trained')
        # (the attribute is the train job's metric, rounded; the scores carry the potential file's float)
        assert reference > 0 and select.inputs.scores.get_array('kpu_trained') == pytest.approx([reference])
        assert 'kpu_trained' not in select.inputs.parameters.get_dict()
    if strategy == 'hal':  # seed 002: what is labelled is the configurations at which the HAL runs stopped
        pool = select.inputs.pool.arrays.info
        picked = select.outputs.selection.get_array('indices')
        assert set(pool['frame_kind'][picked]) == {'stop'} and all(
            r.startswith('hal') for r in pool['stop_reason'][picked]
        )


@pytest.mark.campaign
def test_accurate_stage_moves_on_to_the_next_scheduled_one(alkit_python_code):
    """DP-GEN's stages: a round whose candidates are all accurate at a non-final schedule stage labels nothing and
    the campaign explores the next stage; at the last stage the same finding ends the campaign."""
    overrides = {**TINY_OVERRIDES, 'max_rounds': 3}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(4, labelled=True),
        protocol='fast',
        strategy='dpgen',
        overrides=overrides,
        label=_emt(alkit_python_code),
    )
    builder.train.parameters = orm.Dict({**builder.train.parameters.get_dict(), 'committee_size': 2})
    # every deviation is below lo: all candidates accurate
    builder.select.parameters = orm.Dict({**builder.select.parameters.get_dict(), 'lo': 100.0, 'hi': 200.0})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    rounds = results['report']['rounds']
    assert [(entry['round'], entry['temperature_K']) for entry in rounds] == [(1, 300), (2, 600)]
    assert rounds[0]['stage_converged'] and rounds[0]['accurate_fraction'] == 1.0
    assert rounds[1]['stage_converged'] is False
    decisions = [
        call.outputs.result.get_dict()
        for call in node.called
        if call.process_label == 'campaign_convergence'
    ]  # fmt: skip
    assert [(entry['converged'], entry['stage_done']) for entry in decisions] == [(False, True), (True, False)]
    assert 'labelled' not in rounds[0]
    assert results['report']['stop_reason'] == '100% of the explored candidates are accurate'
    labels = [link.link_label for link in node.base.links.get_outgoing().all() if link.link_label.startswith('label')]
    assert labels == []


# ---------------------------------------------------------------------------------------------------------- MACE
def _mace_builder(code, structures: DatasetData, strategy: str, overrides: dict):
    """A `fast` campaign of ``strategy`` on ``structures`` with EMT labels (MACE through ``overrides``)."""
    return ActiveLearningWorkChain.get_builder_from_protocol(
        code, structures, protocol='fast', strategy=strategy, overrides=overrides, label=_emt(code)
    )


def test_protocol_picks_the_model_kind(alkit_python_code):
    """`model.kind: mace` replaces GM-NN's protocol model settings by MACE's (YAML `model_kinds`), the user's model
    overrides on top."""
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(2, True),
        protocol='fast',
        overrides={'train': {'parameters': {'model': {'kind': 'mace', 'channels': 12}}}},
        label=_emt(alkit_python_code),
    )
    model = builder.train.parameters['model']
    assert model['kind'] == 'mace' and model['channels'] == 12 and model['cutoff'] == 4.0
    assert 'hidden_widths' not in model
    default = ActiveLearningWorkChain.get_builder_from_protocol(alkit_python_code, _copper(2, True), protocol='fast')
    assert default.train.parameters['model']['hidden_widths'] == [16, 16]  # GM-NN unless asked otherwise


@pytest.mark.campaign
def test_mace_campaign_to_its_criterion(alkit_python_code):
    """A gradient campaign (seed 003's biased MD, calibrated stop, MaxDet) with MACE, from the protocol with the one
    override `model.kind: mace`, runs until its round limit; every potential is a MACE potential."""
    builder = _mace_builder(alkit_python_code, _copper(6, labelled=False), 'gradient', MACE_TINY_OVERRIDES)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    rounds = results['report']['rounds']
    assert [entry['round'] for entry in rounds] == [1, 2]
    assert all(entry['explored'] > 0 and entry['labelled'] == 2 for entry in rounds)
    assert results['potential'].model_kind == 'mace'
    assert len(results['dataset']) == 6 + 2 + 2
    explores = [n for n in node.called_descendants if n.process_label == 'ExploreCalculation']
    assert explores and all(n.inputs.potential.model_kind == 'mace' for n in explores)


@pytest.mark.campaign
@pytest.mark.parametrize('strategy', ['dpgen', 'hal', 'dopt', 'random'])
def test_one_mace_round_of_every_other_strategy(alkit_python_code, strategy):
    overrides = deep_merge(MACE_TINY_OVERRIDES, {'max_rounds': 1})
    if strategy == 'dpgen':  # a committee of two MACE models, every candidate inside the trust window
        overrides = deep_merge(overrides, {'train': {'parameters': {'committee_size': 2}}})
        overrides = deep_merge(overrides, {'select': {'parameters': {'lo': 0.0, 'hi': 100.0}}})
    if strategy == 'hal':  # as for GM-NN: s_tol below 1/N_at stops every HAL run, its stop frame is picked
        overrides = deep_merge(overrides, {'explore': {'parameters': {'stop': {'hal': {'s_tol': 0.01}}}}})
    builder = _mace_builder(alkit_python_code, _copper(4, labelled=True), strategy, overrides)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    (entry,) = results['report']['rounds']
    assert entry['explored'] > 0 and entry['selected'] >= 1
    assert entry['labelled'] == entry['selected'] - entry['failed_labels']
    expected = 'mace-committee' if strategy == 'dpgen' else 'mace'
    assert results['potential'].model_kind == expected


def test_alkpu_with_mace_is_refused_before_any_job(alkit_python_code):
    """RLEKF (and so KPU) is GM-NN only: the campaign says so with a 3xx exit code and runs nothing."""
    builder = _mace_builder(alkit_python_code, _copper(4, labelled=True), 'alkpu', MACE_TINY_OVERRIDES)
    _, node = run_get_node(builder)
    assert 300 <= node.exit_status < 400
    assert 'RLEKF' in node.exit_message and 'mace' in node.exit_message
    assert node.called == []
