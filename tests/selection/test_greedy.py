"""Greedy batch selection (seed paper 001, section 3.2) checked index-for-index against ``bmdal_reg`` 3.0.2.

``bmdal_reg`` is used here only as a test oracle; ``aiida_alkit.selection.greedy`` never imports it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aiida_alkit.selection import greedy
from aiida_alkit.selection.greedy import SelectionResult, lcmd, max_det, max_diag, max_dist

N_POOL, N_TRAIN, DIM, BATCH = 300, 20, 16, 25
SEEDS = [0, 1, 2, 3]


def make_features(seed: int, n_pool: int = N_POOL, n_train: int = N_TRAIN, dim: int = DIM):
    """Random float64 features with varied norms (pool) and training features."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(n_pool, dim, dtype=torch.float64, generator=gen)
    pool *= torch.rand(n_pool, 1, dtype=torch.float64, generator=gen) + 0.1
    train = torch.randn(n_train, dim, dtype=torch.float64, generator=gen)
    return pool, train


def assert_valid(result: SelectionResult, batch_size: int, n_pool: int, method: str) -> None:
    assert result.method == method
    assert result.indices.dtype == np.int64
    assert result.indices.shape == (batch_size,) == result.gains.shape
    assert len(np.unique(result.indices)) == batch_size
    assert result.indices.min() >= 0
    assert result.indices.max() < n_pool


# ----------------------------------------------------------------------------------------------------------------------
# oracle: identical picks, identical order
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('method', ['maxdist', 'lcmd'])
@pytest.mark.parametrize('with_train', [True, False])
def test_distance_methods_match_bmdal(oracle, seed, method, with_train):
    pool, train = make_features(seed)
    if not with_train:
        train = train[:0]
    function = max_dist if method == 'maxdist' else lcmd
    result = function(pool, train, BATCH)
    assert_valid(result, BATCH, N_POOL, method)
    np.testing.assert_array_equal(result.indices, oracle(method, pool, train, BATCH))


@pytest.mark.parametrize('seed', SEEDS)
def test_max_det_pool_mode_matches_bmdal(oracle, seed):
    """bmdal's default MaxDet (P mode, no noise) ignores the training set; compare within the feature rank."""
    pool, train = make_features(seed)
    result = max_det(pool, train, DIM, condition_on_train=False)
    assert result.status is None
    np.testing.assert_array_equal(result.indices, oracle('maxdet', pool, train, DIM))


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('condition_on_train', [True, False])
def test_max_det_with_noise_matches_bmdal(oracle, seed, condition_on_train):
    pool, train = make_features(seed)
    noise = 0.3
    result = max_det(pool, train, BATCH, noise=noise, condition_on_train=condition_on_train)
    expected = oracle('maxdet', pool, train, BATCH, maxdet_sigma=math.sqrt(noise), sel_with_train=condition_on_train)
    np.testing.assert_array_equal(result.indices, expected)


@pytest.mark.parametrize('seed', SEEDS)
def test_max_det_conditioned_noise_free_matches_bmdal(oracle, seed):
    """Noise-free conditioning on the training points (TP mode) needs M + batch <= d to be well defined."""
    pool, train = make_features(seed, dim=48)
    result = max_det(pool, train, BATCH, condition_on_train=True)
    np.testing.assert_array_equal(result.indices, oracle('maxdet', pool, train, BATCH, sel_with_train=True))


@pytest.mark.parametrize('seed', SEEDS)
def test_posterior_transform_methods_match_bmdal(oracle, seed):
    """MaxDet/MaxDist/LCMD + GP kernel (eq. 22-23) against bmdal's ('train', [sigma]) kernel transform."""
    pool, train = make_features(seed)
    sigma2 = greedy.paper_sigma2(train)
    transforms = [('train', [math.sqrt(sigma2)])]
    pool_gp = greedy.posterior_transform(pool, train, sigma2)
    train_gp = greedy.posterior_transform(train, train, sigma2)
    for method, result in [
        ('maxdist', max_dist(pool_gp, train_gp, BATCH)),
        ('lcmd', lcmd(pool_gp, train_gp, BATCH)),
        ('maxdet', max_det(pool_gp, None, DIM)),  # paper: MaxDet + GP, noise-free, at most d picks
    ]:
        expected = oracle(method, pool, train, len(result), transforms)
        np.testing.assert_array_equal(result.indices, expected, err_msg=method)
    # MaxDiag + GP: bmdal returns the same set in increasing order of variance
    diag = max_diag((pool_gp**2).sum(dim=1), BATCH)
    np.testing.assert_array_equal(diag.indices, oracle('maxdiag', pool, train, BATCH, transforms)[::-1])


# ----------------------------------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------------------------------


def brute_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize('noise', [0.0, 0.1])
def test_max_det_gains_are_conditional_variances(noise):
    pool, train = (t.numpy() for t in make_features(5, dim=48))
    result = max_det(pool, train, BATCH, noise=noise)
    assert_valid(result, BATCH, N_POOL, 'maxdet')
    assert np.all(np.diff(result.gains) <= 1e-12 * result.gains[0])
    # eq. (27): the product of the pivots is the determinant ratio det(K_{T+S} + noise) / det(K_T + noise)
    picked = pool[result.indices]
    observed = np.vstack([train, picked])
    k_all = observed @ observed.T + noise * np.eye(len(observed))
    k_train = train @ train.T + noise * np.eye(len(train))
    log_ratio = np.linalg.slogdet(k_all)[1] - np.linalg.slogdet(k_train)[1]
    np.testing.assert_allclose(np.log(result.gains + noise).sum(), log_ratio, rtol=1e-8)


def test_max_det_beyond_rank_fills_without_duplicates():
    pool, _ = make_features(6, dim=4)
    result = max_det(pool, None, 10)
    assert_valid(result, 10, N_POOL, 'maxdet')
    assert result.status is not None
    assert np.all(result.gains[4:] == 0.0)
    assert np.all(result.gains[:4] > 0.0)


@pytest.mark.parametrize('with_train', [True, False])
def test_max_dist_gains_are_true_distances(with_train):
    pool, train = (t.numpy() for t in make_features(7))
    train = train if with_train else train[:0]
    result = max_dist(pool, train, BATCH)
    assert_valid(result, BATCH, N_POOL, 'maxdist')
    for step, index in enumerate(result.indices):
        centres = np.vstack([train, pool[result.indices[:step]]])
        if len(centres) == 0:  # first pick without training points: largest norm
            assert index == np.argmax((pool**2).sum(1))
            np.testing.assert_allclose(result.gains[0], np.linalg.norm(pool[index]))
            continue
        dists = np.sqrt(brute_sq_dists(pool, centres).min(axis=1))
        np.testing.assert_allclose(result.gains[step], dists[index], rtol=1e-9)
        unselected = np.setdiff1d(np.arange(N_POOL), result.indices[:step])
        np.testing.assert_allclose(result.gains[step], dists[unselected].max(), rtol=1e-9)


def test_lcmd_matches_brute_force_definition():
    """Eqs. (29)-(31) evaluated naively with the full distance matrix."""
    pool, train = (t.numpy() for t in make_features(8))
    result = lcmd(pool, train, BATCH)
    assert_valid(result, BATCH, N_POOL, 'lcmd')
    picked: list[int] = []
    for step in range(BATCH):
        centres = np.vstack([train, pool[picked]])
        sq = brute_sq_dists(pool, centres)
        centre = sq.argmin(axis=1)
        min_sq = sq.min(axis=1)
        unselected = np.setdiff1d(np.arange(N_POOL), picked)
        sizes = np.bincount(centre[unselected], weights=min_sq[unselected], minlength=len(centres))
        candidates = unselected[centre[unselected] == sizes.argmax()]
        best = int(candidates[np.argmax(min_sq[candidates])])
        assert result.indices[step] == best
        np.testing.assert_allclose(result.gains[step], math.sqrt(min_sq[best]), rtol=1e-9)
        picked.append(best)


def test_posterior_transform_reproduces_posterior_kernel():
    pool, train = (t.numpy() for t in make_features(9))
    sigma2 = greedy.paper_sigma2(train)
    assert sigma2 == pytest.approx((train**2).sum() / train.size)
    k_pp = pool @ pool.T
    k_pt = pool @ train.T
    expected = k_pp - k_pt @ np.linalg.solve(train @ train.T + sigma2 * np.eye(N_TRAIN), k_pt.T)  # eq. (21)
    for symmetric in (False, True):
        gp = greedy.posterior_transform(pool, train, sigma2, symmetric=symmetric)
        assert isinstance(gp, np.ndarray)
        assert gp.dtype == pool.dtype
        np.testing.assert_allclose(gp @ gp.T, expected, atol=1e-10)
    with pytest.raises(ValueError, match='sigma2'):
        greedy.posterior_transform(pool, train, 0.0)


def test_numpy_float32_and_torch_inputs_agree():
    pool, train = make_features(10)
    for function in (max_dist, lcmd, max_det):
        from_torch = function(pool, train, 10)
        from_numpy = function(pool.numpy(), train.numpy(), 10)
        np.testing.assert_array_equal(from_torch.indices, from_numpy.indices)
        single = function(pool.float().numpy(), train.float().numpy(), 10)
        assert_valid(single, 10, N_POOL, from_torch.method)


def test_max_diag_orders_by_variance():
    variances = np.array([0.5, 3.0, 1.0, 3.0, 2.0])
    result = max_diag(variances, 3)
    np.testing.assert_array_equal(result.indices, [1, 3, 4])
    np.testing.assert_array_equal(result.gains, [3.0, 3.0, 2.0])


@pytest.mark.parametrize('method', ['maxdet', 'maxdist', 'lcmd', 'maxdiag'])
def test_invalid_arguments(method):
    pool, train = make_features(11, n_pool=10)
    with pytest.raises(ValueError, match='exceeds'):
        greedy.select_batch(method, pool, train, 11)
    with pytest.raises(ValueError, match='at least 1'):
        greedy.select_batch(method, pool, train, 0)
    with pytest.raises(ValueError, match='shape'):
        greedy.select_batch(method, pool, train[:, :5], 3)
    with pytest.raises(ValueError, match='shape'):
        greedy.select_batch(method, pool[0], train, 1)
    result = greedy.select_batch(method, pool, train, 10)  # the whole pool, each point once
    np.testing.assert_array_equal(np.sort(result.indices), np.arange(10))
    with pytest.raises(ValueError, match='unknown selection method'):
        greedy.select_batch('maxfoo', pool, train, 1)


@pytest.mark.parametrize('seed', [0, 1])
def test_lazy_refresh_on_larger_pool_matches_bmdal(oracle, seed):
    """A pool much larger than the first refresh block, so that stale bounds are refreshed partially."""
    pool, train = make_features(seed, n_pool=4000, n_train=30, dim=24)
    batch = 40
    cases = [
        ('maxdist', max_dist(pool, train, batch), {}),
        ('lcmd', lcmd(pool, train, batch), {}),
        ('maxdet', max_det(pool, train, batch, noise=0.1), {'maxdet_sigma': math.sqrt(0.1), 'sel_with_train': True}),
    ]
    for method, result, config in cases:
        np.testing.assert_array_equal(result.indices, oracle(method, pool, train, batch, **config), err_msg=method)


# ----------------------------------------------------------------------------------------------------------------------
# oracle on real model features: sketched gradient features of a GM-NN for rattled and strained copper cells
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def model_features():
    from ase.build import bulk

    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.uncertainty.features import compute_features

    model = GMNN(GMNNHyperparameters.small(['Cu'], dtype='float64', hidden_widths=(16, 16)))
    structures = []
    for seed in range(70):
        atoms = bulk('Cu', 'fcc', a=3.5 + 0.004 * seed, cubic=True)
        atoms.rattle(0.02 + 0.002 * seed, seed=seed)
        structures.append(atoms)
    features = compute_features(model, structures, kind='sketch', dim=32, seed=0, per_atom=False)
    structure_features = torch.as_tensor(np.asarray(features.structure))
    return structure_features[10:], structure_features[:10]


@pytest.mark.parametrize('method', ['maxdist', 'lcmd', 'maxdet'])
def test_oracle_on_model_features(oracle, model_features, method):
    pool, train = model_features
    ours = greedy.select_batch(method, pool, train, 12)
    np.testing.assert_array_equal(ours.indices, oracle(method, pool, train, 12, sel_with_train=True))
