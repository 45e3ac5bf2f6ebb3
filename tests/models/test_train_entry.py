"""The one trainer (Adam, RLEKF, committees): per-epoch reports, checkpoint hook, history; the one splitter and the
one evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_alkit.models.committee import Committee
from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
from aiida_alkit.models.rlekf import RLEKF, RLEKFConfig
from aiida_alkit.models.training import (
    EpochReport,
    TrainingConfig,
    evaluate_errors,
    format_report,
    log_progress,
    split_train_valid,
    train,
)

from .test_training import _copper

RLEKF_SETTINGS = RLEKFConfig(block_size=256, p0=1.0e4)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def copper():
    return _copper(10, seed=4)


def _hyperparameters(seed: int = 1) -> GMNNHyperparameters:
    return GMNNHyperparameters.small(['Cu'], hidden_widths=(8, 8), seed=seed)


def _config(optimizer: str = 'adam', epochs: int = 3) -> TrainingConfig:
    return TrainingConfig(epochs=epochs, batch_size=4 if optimizer == 'adam' else 2, valid_fraction=0.0)


# ---------------------------------------------------------------------------------------------- callback
@pytest.mark.parametrize(('optimizer', 'members'), [('adam', None), ('rlekf', None), ('adam', 2), ('rlekf', 2)])
def test_every_optimizer_reports_every_epoch_once(copper, optimizer, members):
    train_set, valid = split_train_valid(copper, 0.3, seed=2)
    model = GMNN(_hyperparameters()) if members is None else Committee(_hyperparameters(), n_members=members)
    reports: list[EpochReport] = []
    result = train(
        model, train_set, valid, _config(optimizer), optimizer=optimizer, rlekf=RLEKF_SETTINGS, callback=reports.append
    )
    expected = [(member, epoch) for member in (range(members) if members else [None]) for epoch in (1, 2, 3)]
    assert all(isinstance(report, EpochReport) for report in reports)
    assert [(report.member, report.epoch) for report in reports] == expected
    for report in reports:  # the report is the history entry of its epoch
        entry = next(e for e in result.history if (e['member'], e['epoch']) == (report.member, report.epoch))
        assert report.valid_rmse == {key: entry[f'valid_{key}_rmse'] for key in ('energy', 'forces', 'stress')}
        assert report.train_rmse['forces'] == entry['train_forces_rmse'] > 0
        assert report.train_loss == entry['train_loss'] > 0 and report.valid_loss == entry['valid_loss'] > 0
        assert (report.seconds, report.epochs) == (entry['time_s'], 3)
        if optimizer == 'adam':
            assert report.lr == entry['lr'] == pytest.approx(0.03 * (1 - report.epoch / 3))  # the linear decay to 0
            assert report.kalman_lambda is None
        else:
            assert report.lr is None and report.kalman_lambda == entry['lambda'] and report.best
    # one history format: epoch 0 and one entry per epoch and member, the same keys for every optimizer
    assert [(e['member'], e['epoch']) for e in result.history if e['epoch'] > 0] == expected
    assert len(result.history) == len(expected) + (members or 1)
    assert {'epoch', 'member', 'lr', 'time_s', 'train_loss', 'valid_forces_rmse'} <= set(result.history[-1])
    assert result.optimizer == optimizer and result.to_dict()['optimizer'] == optimizer
    final = evaluate_errors(model, valid)
    if members is not None:
        assert result.best_epoch is None and len(result.members) == members
        assert [len(m.series('epoch', k)) for k, m in enumerate(result.members)] == [4] * members
    elif optimizer == 'rlekf':  # keeps its last weights: the last report is the final model
        assert result.best_epoch == 3 and result.rlekf is not None
        assert final['forces_rmse'] == pytest.approx(reports[-1].valid_rmse['forces'], rel=1e-9)
    else:  # restores the weights of the last report marked best
        best = [report for report in reports if report.best][-1]
        assert result.best_epoch == best.epoch
        assert final['forces_rmse'] == pytest.approx(best.valid_rmse['forces'], rel=1e-5)


def test_a_callback_returning_true_stops_training(copper):
    model = GMNN(_hyperparameters())
    result = train(model, copper, None, _config(epochs=6), callback=lambda report: report.epoch == 2)
    assert result.stopped_early and result.epochs_run == 2 and result.series('epoch') == [0, 1, 2]


def test_progress_lines(copper):
    lines: list[str] = []
    train(GMNN(_hyperparameters()), copper, None, _config(epochs=5), callback=log_progress(lines.append, 2))
    assert [line.split()[1] for line in lines] == ['2', '4', '5']  # every 2 epochs and the last one
    report = EpochReport(3, 5, 0.5, None, {'energy': 0.002, 'forces': 0.1}, {}, None, 1.0, 1, True, 0.99)
    assert format_report(report) == (
        'member 1: epoch    3  λ 0.99  loss 0.5/-  E 2/- meV/atom  F 100/- meV/Å  (train/valid RMSE)  *'
    )


# ---------------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_hook_sees_every_epoch_and_the_current_weights(copper):
    model = GMNN(_hyperparameters())
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def hook(epoch: int, state: dict) -> None:
        assert state['member'] is None and set(state['optimizer']) == {'state', 'param_groups'}  # Adam's
        saved[epoch] = {name: tensor.clone() for name, tensor in state['model'].items()}

    result = train(model, copper, None, _config(epochs=3), checkpoint=hook)
    assert sorted(saved) == [1, 2, 3]
    assert not all(torch.equal(saved[1][name], saved[3][name]) for name in saved[1])
    # the model ends with the best epoch's weights, which the hook received at that epoch
    assert all(torch.equal(tensor, saved[result.best_epoch][name]) for name, tensor in model.state_dict().items())


def test_checkpoint_hook_of_rlekf_and_its_exceptions(copper):
    model = GMNN(_hyperparameters())
    states: dict[int, dict] = {}
    result = train(
        model,
        copper,
        None,
        _config('rlekf', epochs=2),
        optimizer='rlekf',
        rlekf=RLEKF_SETTINGS,
        checkpoint=lambda epoch, state: states.update({epoch: state['optimizer']}),
    )
    assert sorted(states) == [1, 2] and states[2]['kind'] == 'rlekf'
    assert states[1]['lambda'] < RLEKF.from_state_dict(model, states[2]).lam == result.rlekf.lam < 1

    class Stop(Exception):
        pass

    def stop(epoch: int, state: dict) -> None:
        if epoch == 2:
            raise Stop

    epochs: list[int] = []
    with pytest.raises(Stop):
        train(
            GMNN(_hyperparameters()),
            copper,
            None,
            _config(epochs=5),
            callback=lambda r: epochs.append(r.epoch),
            checkpoint=stop,
        )
    assert epochs == [1, 2]


# ---------------------------------------------------------------------------------------------- splitter
def test_split_from_a_tag_or_a_seeded_draw(copper):
    tagged = copper.subset(range(10))
    tagged.info['split'] = np.array(['train', 'valid'] + ['train'] * 6 + ['valid', 'train'])
    train_set, valid = split_train_valid(tagged, 0.5, seed=0, tag='split')  # the tag wins over the fraction
    np.testing.assert_array_equal(valid.energy, copper.energy[[1, 8]])
    np.testing.assert_array_equal(train_set.energy, copper.energy[[0, 2, 3, 4, 5, 6, 7, 9]])
    assert split_train_valid(copper, tag='split') == (copper, None)  # no tag, no fraction: everything trains
    drawn_train, drawn_valid = split_train_valid(copper, 0.3, seed=5, tag='split')  # no tag: the draw
    assert (len(drawn_train), len(drawn_valid)) == (7, 3)
    tagged.info['split'][:] = 'valid'
    with pytest.raises(ValueError, match='no training configurations'):
        split_train_valid(tagged, tag='split')


def test_split_labels_follow_the_counting_rule():
    rng = np.random.default_rng(0)
    assert list(split_train_valid(1, 0.1, rng, tags=True)) == ['train']
    assert (split_train_valid(10, 0.2, rng, tags=True) == 'valid').sum() == 2
    assert (split_train_valid(2, 0.1, rng, tags=True) == 'valid').sum() == 1  # at least one from two
    assert (split_train_valid(3, 0.9, rng, tags=True) == 'valid').sum() == 2  # never all
    assert split_train_valid(4, 0.0, rng, tags=True).dtype == np.dtype('<U5')
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        split_train_valid(5, 1.0, rng, tags=True)
    with pytest.raises(TypeError, match='tags=True'):
        split_train_valid(5, 0.2)


def test_labels_and_subsets_are_the_same_draw(copper):
    labels = split_train_valid(len(copper), 0.3, 7, tags=True)
    train_set, valid = split_train_valid(copper, 0.3, 7)
    np.testing.assert_array_equal(valid.energy, copper.energy[labels == 'valid'])
    np.testing.assert_array_equal(train_set.energy, copper.energy[labels == 'train'])
    shared = np.random.default_rng(1)  # a shared generator draws on; replaying it replays the draws
    first, second = (split_train_valid(20, 0.3, shared, tags=True) for _ in range(2))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(split_train_valid(20, 0.3, np.random.default_rng(1), tags=True), first)


# ---------------------------------------------------------------------------------------------- evaluator
def test_one_evaluator_for_models_and_committee_means(copper):
    committee = Committee(GMNNHyperparameters.small(['Cu'], dtype='float64', seed=3), n_members=2)
    errors = evaluate_errors(committee, copper, batch_size=3)
    batch = committee.make_batch(copper.to_atoms())
    mean = committee.predict(batch, compute_stress=True)
    forces = mean['forces'].numpy() - copper.forces
    per_atom = (mean['energy'].numpy() - copper.energy) / copper.sizes
    assert errors['forces_rmse'] == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-10)
    assert errors['energy_mae'] == pytest.approx(np.mean(np.abs(per_atom)), rel=1e-10)
    assert errors['stress_rmse'] == pytest.approx(np.sqrt(np.mean((mean['stress'].numpy() - copper.stress) ** 2)))
    assert (errors['n_structures'], errors['n_stress_structures']) == (10, 10)
    member = evaluate_errors(committee.members[0], copper)
    assert member['forces_rmse'] != pytest.approx(errors['forces_rmse'], rel=1e-6)
