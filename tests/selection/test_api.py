"""The selection entry point: every method family, ranks and counts, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alkit.selection.api import select


@pytest.fixture
def features():
    rng = np.random.default_rng(3)
    return rng.normal(size=(50, 6)), rng.normal(size=(20, 6))


@pytest.mark.parametrize('method', ['maxdet', 'maxdist', 'lcmd', 'maxdiag'])
def test_feature_methods(features, method):
    pool, train = features
    result = select(method, 5, pool_features=pool, train_features=train)
    assert len(set(result.indices)) == 5
    assert list(result.ranks[result.indices]) == [0, 1, 2, 3, 4]
    assert (result.ranks == -1).sum() == 45
    assert result.n_candidate == 50


def test_trust_window_counts():
    deviation = np.array([0.01, 0.1, 0.12, 0.5, np.nan, 0.06])
    result = select('trust', 10, scores={'max_force_deviation': deviation}, lo=0.05, hi=0.15)
    assert (result.n_accurate, result.n_candidate, result.n_failed) == (1, 3, 2)
    assert sorted(result.indices) == [1, 2, 5]


def test_alkpu_window():
    result = select('alkpu', 1, scores={'kpu': np.array([1.0, 1.5, 1.9, 3.0])}, kpu_trained=1.0, seed=4)
    assert result.n_candidate == 2
    assert result.indices.size == 1
    assert result.indices[0] in (1, 2)
    # the explore job hands the reference over with the scores (one value): the same window
    handed = select('alkpu', 1, scores={'kpu': np.array([1.0, 1.5, 1.9, 3.0]), 'kpu_trained': np.ones(1)}, seed=4)
    assert handed.indices.tolist() == result.indices.tolist() and handed.n_candidate == 2


def test_errors(features):
    pool, train = features
    with pytest.raises(ValueError, match='unknown selection method'):
        select('best', 2, pool_features=pool, train_features=train)
    with pytest.raises(ValueError, match='needs pool_features'):
        select('lcmd', 2)
    with pytest.raises(ValueError, match='batch'):
        select('maxdist', 60, pool_features=pool, train_features=train)
    with pytest.raises(ValueError, match='kpu_trained'):
        select('alkpu', 2, scores={'kpu': np.ones(3)})


def test_calibrated_threshold_splits_accurate_from_uncertain(features):
    pool, train = features
    calibrated = np.linspace(0.0, 0.49, 50)  # eV/Å; 15 candidates at most 0.15
    result = select(
        'lcmd',
        5,
        pool_features=pool,
        train_features=train,
        scores={'calibrated_uncertainty': calibrated},
        uncertain_above=0.15,
    )
    assert (result.n_accurate, result.n_candidate) == (16, 34)
    assert np.all(calibrated[result.indices] > 0.15)
    nothing_left = select(
        'lcmd',
        5,
        pool_features=pool,
        train_features=train,
        scores={'calibrated_uncertainty': np.zeros(50)},
        uncertain_above=0.15,
    )
    assert nothing_left.indices.size == 0 and nothing_left.n_accurate == 50
    with pytest.raises(ValueError, match='calibrated_uncertainty'):
        select('lcmd', 5, pool_features=pool, train_features=train, uncertain_above=0.15)


def test_maxvol_counts_reliable_candidates_as_accurate():
    """seed 004: a candidate with extrapolation grade <= gamma_select interpolates (accurate); only the others may be
    picked, and each candidate's score is its grade."""
    rng = np.random.default_rng(5)
    train = rng.normal(size=(12, 4))
    inside = 0.2 * train[:6]  # well inside the training hull: grade < 1
    outside = 5.0 * rng.normal(size=(4, 4))  # far out: grade >> 2
    pool = np.concatenate([inside, outside])
    result = select('maxvol', 3, pool_features=pool, train_features=train)
    assert result.n_accurate == 6 and result.n_candidate == 4
    assert set(result.indices) <= set(range(6, 10)) and result.indices.size == 3
    assert (result.scores[:6] <= 2.0).all() and (result.scores[6:] > 2.0).all()
    everything = select('maxvol', 3, pool_features=pool, train_features=train, gamma_select=1e9)
    assert everything.n_accurate == 10 and everything.indices.size == 0


# ----------------------------------------------------------------------------------------------------------------------
# seed 001's modes through select (the path a campaign takes), checked against bmdal_reg
# ----------------------------------------------------------------------------------------------------------------------

SKETCH_DIM = 24


@pytest.fixture(scope='module')
def gmnn_features():
    """Real sketched gradient features (FEAT(RP), d = 24, per-atom means as the explore job computes them) of a tiny
    GM-NN on rattled and strained copper cells: 140 structures (training sets and pool are cut from them)."""
    from ase.build import bulk

    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.uncertainty.features import compute_features

    model = GMNN(GMNNHyperparameters.small(['Cu'], hidden_widths=(16, 16), dtype='float64', seed=2))
    structures = []
    for index in range(140):
        atoms = bulk('Cu', 'fcc', a=3.61 * (1.0 + 0.002 * (index % 21 - 10)), cubic=True) * (2, 1, 1)
        atoms.rattle(0.02 + 0.002 * (index % 37), seed=index)
        structures.append(atoms)
    features = compute_features(model, structures, kind='sketch', dim=SKETCH_DIM, normalise_per_atom=True)
    return np.asarray(features.structure, dtype=np.float64)


def bmdal_picks(oracle, method, pool, train, batch_size, posterior):
    """bmdal_reg's picks with its default mode for ``method`` and the ('train', [σ]) GP transform when posterior."""
    import math

    import torch

    from aiida_alkit.selection.greedy import paper_sigma2

    transforms = [('train', [math.sqrt(paper_sigma2(train))])] if posterior else []
    picks = oracle(method, torch.from_numpy(pool), torch.from_numpy(train), batch_size, transforms)
    return picks[::-1] if method == 'maxdiag' else picks  # bmdal lists MaxDiag picks in increasing variance


@pytest.mark.parametrize('n_train', [12, 60])  # fewer and more training points than the feature dimension (24)
@pytest.mark.parametrize('posterior', [True, False])
@pytest.mark.parametrize('method', ['maxdet', 'maxdiag', 'maxdist', 'lcmd'])
def test_select_matches_bmdal_modes_on_gmnn_features(oracle, gmnn_features, method, posterior, n_train):
    """MaxDist/LCMD in TP mode (training points are centres), MaxDet/MaxDiag in P mode; with GP both sets are
    transformed: every (method, posterior) pair a preset can produce picks what bmdal_reg picks, in the same order."""
    train, pool = gmnn_features[:n_train], gmnn_features[n_train : n_train + 80]
    batch_size = 8
    result = select(method, batch_size, pool_features=pool, train_features=train, posterior=posterior)
    assert result.status is None
    expected = bmdal_picks(oracle, method, pool, train, batch_size, posterior)
    np.testing.assert_array_equal(result.indices, expected)


def six_dimensional_example():
    """40 training points spanning 3 of 6 directions; a pool of 20 near-copies of training points (0-19) and 5
    points that reach into the 3 new directions (20-24), close to each other."""
    rng = np.random.default_rng(0)
    train = np.zeros((40, 6))
    train[:, :3] = rng.normal(size=(40, 3))
    copies = train[rng.choice(40, 20, replace=False)] + 0.01 * rng.normal(size=(20, 6))
    new = np.zeros((5, 6))
    new[:, 3] = 0.5
    new[:, 3:] += 0.1 * rng.normal(size=(5, 3))
    new[:, :3] = 0.5 * rng.normal(size=(5, 3))
    return np.concatenate([copies, new]), train


@pytest.mark.parametrize('posterior', [True, False])
@pytest.mark.parametrize('method', ['lcmd', 'maxdist'])
def test_distance_methods_use_training_points_as_centres(method, posterior):
    """Regression (seed 001 eq. 28-31): with the training points as centres the 5 new points are picked, not the
    near-copies of training points (the GP transform once dropped the training set and picked copies 5, 11, 16)."""
    pool, train = six_dimensional_example()
    result = select(method, 5, pool_features=pool, train_features=train, posterior=posterior)
    assert sorted(result.indices.tolist()) == [20, 21, 22, 23, 24]


def test_maxdet_feat_is_pool_mode_and_gp_uses_the_transform():
    """MaxDet with FEAT ignores the training set (P mode: the same picks without it) and never runs out of variance
    below the pool's rank; with GP the training set enters only through the transform."""
    from aiida_alkit.selection.greedy import max_det, paper_sigma2, posterior_transform

    pool, train = six_dimensional_example()
    feat = select('maxdet', 5, pool_features=pool, train_features=train, posterior=False)
    assert feat.status is None
    np.testing.assert_array_equal(feat.indices, max_det(pool, None, 5).indices)
    gp = select('maxdet', 5, pool_features=pool, train_features=train, posterior=True)
    transformed = posterior_transform(pool, train, paper_sigma2(train))
    np.testing.assert_array_equal(gp.indices, max_det(transformed, None, 5).indices)
    np.testing.assert_allclose(gp.scores, (transformed**2).sum(axis=1))
    diag = select('maxdiag', 5, pool_features=pool, train_features=train, posterior=True)
    assert sorted(diag.indices.tolist()) == [20, 21, 22, 23, 24]


def test_feat_distance_scores_are_distances_to_the_training_set():
    pool, train = six_dimensional_example()
    result = select('maxdist', 5, pool_features=pool, train_features=train, posterior=False)
    expected = np.sqrt(((pool[:, None, :] - train[None, :, :]) ** 2).sum(-1).min(axis=1))
    np.testing.assert_allclose(result.scores, expected, rtol=1e-10, atol=1e-12)


def test_hal_labels_the_stop_frames_of_the_walkers():
    """Seed 002: the frames at which HAL's criterion fired are picked, largest f_max first; frames of walkers that
    never fired are accurate, those of walkers that stopped are candidates."""
    walker = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    stop = np.array([False, False, True, False, True, False, False, False])
    f_max = np.array([0.1, 0.2, 0.5, 0.1, 0.9, 0.3, 0.2, 0.1])
    scores = {'hal_stop': stop, 'relative_force_uncertainty': f_max, 'walker': walker}
    result = select('hal', 5, scores=scores)
    assert result.indices.tolist() == [4, 2]
    assert (result.n_accurate, result.n_candidate, result.n_failed) == (3, 5, 0)
    assert select('hal', 1, scores=scores).indices.tolist() == [4]
    quiet = select('hal', 5, scores={**scores, 'hal_stop': np.zeros(8, dtype=bool)})
    assert quiet.indices.size == 0 and quiet.n_accurate == 8
    with pytest.raises(ValueError, match='hal_stop'):
        select('hal', 2, scores={'kpu': np.ones(3)})
