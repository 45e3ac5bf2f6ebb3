"""Feature distances (seeds/001 eq. 10), GP posterior (eq. 21-23) and atom uncertainties (seeds/003 eq. 3-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_alkit.selection.greedy import max_dist
from aiida_alkit.uncertainty.gp import (
    GradientUncertainty,
    feature_distances,
    min_feature_distances,
    paper_sigma2,
    posterior_variance,
    representative_subset,
    segment_max,
)


@pytest.fixture
def features(rng):
    train = rng.normal(size=(30, 12)) * rng.uniform(0.2, 2.0, size=(30, 1))
    query = rng.normal(size=(7, 12))
    return train, query


def test_feature_distances_match_brute_force(features):
    train, query = features
    brute = np.linalg.norm(query[:, None, :] - train[None, :, :], axis=-1)
    np.testing.assert_allclose(feature_distances(query, train), brute, rtol=1e-10)
    distances, nearest = min_feature_distances(query, torch.as_tensor(train))
    np.testing.assert_allclose(distances, brute.min(axis=1), rtol=1e-10)
    np.testing.assert_array_equal(nearest, brute.argmin(axis=1))
    exact, _ = min_feature_distances(train[[3, 8]], train)
    np.testing.assert_array_equal(exact, [0.0, 0.0])  # a training point is at distance exactly zero


def test_posterior_variance_matches_eq21_and_paper_sigma2(features):
    """eq. (22) via the transform equals the kernel form eq. (21); σ² = tr[Φ^T Φ] / (N_train d)."""
    train, query = features
    train = train[:8]  # fewer training points than dimensions: directions outside their span stay uncertain
    variance, sigma2 = posterior_variance(query, train)
    assert sigma2 == pytest.approx(np.trace(train.T @ train) / train.size)
    assert sigma2 == pytest.approx(paper_sigma2(train))
    k_qt = query @ train.T
    eq21 = (query**2).sum(1) - np.einsum('ij,ij->i', k_qt @ np.linalg.inv(train @ train.T + sigma2 * np.eye(8)), k_qt)
    np.testing.assert_allclose(variance, eq21, rtol=1e-9)
    fixed, used = posterior_variance(query, train, sigma2=0.5)
    assert used == 0.5
    eq21 = (query**2).sum(1) - np.einsum('ij,ij->i', k_qt @ np.linalg.inv(train @ train.T + 0.5 * np.eye(8)), k_qt)
    np.testing.assert_allclose(fixed, eq21, rtol=1e-9)


def test_posterior_variance_small_at_training_points_large_far_away(features):
    train, _ = features
    variance, sigma2 = posterior_variance(train, train)
    assert np.all(variance < sigma2)  # k(x, x | D) = σ² a / (1 + a) < σ² for a training point
    # far from the data: along a direction the training set barely covers, scaled up
    _, _, vh = np.linalg.svd(train)
    far = 50.0 * vh[-1:]
    far_variance, _ = posterior_variance(far, train)
    assert far_variance[0] > 100.0 * sigma2
    assert np.all(variance < 0.1 * far_variance[0])


def test_representative_subset_is_maxdist(features):
    train, _ = features
    picks = representative_subset(train, 10)
    np.testing.assert_array_equal(picks, max_dist(train, None, 10).indices)
    assert picks[0] == int(np.argmax((train**2).sum(1)))  # MaxDist starts from the largest norm
    np.testing.assert_array_equal(representative_subset(train, 100), np.arange(30))


def test_segment_max():
    np.testing.assert_array_equal(segment_max(np.array([1.0, 3.0, 2.0, 5.0, 4.0]), np.array([3, 2])), [3.0, 5.0])
    with pytest.raises(ValueError):
        segment_max(np.ones(3), np.array([2, 2]))


def test_distance_uncertainty_with_representative_subset(rng):
    """seeds/003 eq. (3): min distance to the MaxDist subset; zero for a subset atom; structure value = max over atoms."""
    train_atoms = rng.normal(size=(40, 6))
    train_structures = rng.normal(size=(5, 6))
    model = GradientUncertainty('distance', n_representative=12).fit(atomic=train_atoms, structure=train_structures)
    np.testing.assert_array_equal(model.representative_indices, max_dist(train_atoms, None, 12).indices)
    subset = train_atoms[model.representative_indices]
    query = np.concatenate([subset[:3], rng.normal(size=(4, 6))])
    result = model.predict(atomic=query, structure=train_structures[:2], n_atoms=np.array([3, 4]))
    np.testing.assert_array_equal(result.atomic[:3], 0.0)
    brute = np.linalg.norm(query[:, None] - subset[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(result.atomic, brute, rtol=1e-10)
    np.testing.assert_allclose(result.structure, [0.0, brute[3:].max()], rtol=1e-12)
    np.testing.assert_array_equal(result.total, 0.0)  # training structures
    # every training atom is at zero distance when the subset holds them all
    full = GradientUncertainty('distance', n_representative=None).fit(atomic=train_atoms)
    np.testing.assert_array_equal(full.predict(atomic=train_atoms).atomic, 0.0)


def test_gradient_uncertainty_on_model_features():
    """End to end: GM-NN sketched features; training structures are certain, a compressed one is not."""
    from ase.build import bulk

    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.uncertainty.features import compute_features

    model = GMNN(GMNNHyperparameters.small(['Cu'], hidden_widths=(16, 16), dtype='float64'))
    train = []
    for index in range(6):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=index)
        train.append(atoms)
    far = bulk('Cu', 'fcc', a=3.0, cubic=True) * (2, 1, 1)
    far.rattle(0.3, seed=99)
    options = {'kind': 'sketch', 'dim': 64, 'seed': 2, 'normalise_per_atom': True}
    train_features = compute_features(model, train, **options)
    test_features = compute_features(model, [train[0], far], **options)

    posterior = GradientUncertainty('posterior').fit(train_features)
    assert posterior.sigma2_atomic == pytest.approx(paper_sigma2(train_features.atomic))
    assert posterior.sigma2_structure == pytest.approx(paper_sigma2(train_features.structure))
    result = posterior.predict(test_features)
    assert result.atomic.shape == (16,) and result.structure.shape == (2,) and result.total.shape == (2,)
    assert np.all(result.atomic[:8] <= np.sqrt(posterior.sigma2_atomic))
    assert result.total[0] <= np.sqrt(posterior.sigma2_structure)
    assert result.total[1] > 3.0 * result.total[0]
    assert result.structure[1] > 3.0 * result.structure[0]
    np.testing.assert_allclose(result.structure, [result.atomic[:8].max(), result.atomic[8:].max()])
    variance, _ = posterior_variance(test_features.structure, train_features.structure)
    np.testing.assert_allclose(result.total**2, variance, rtol=1e-8)

    distance = GradientUncertainty('distance').fit(train_features)
    result = distance.predict(test_features)
    np.testing.assert_allclose(result.atomic[:8], 0.0, atol=1e-12)
    assert result.total[0] < 1e-12 and result.total[1] > 1e-6
    assert result.structure[1] > 0.0


def test_errors(features):
    train, query = features
    with pytest.raises(ValueError, match='method'):
        GradientUncertainty('ensemble')
    with pytest.raises(RuntimeError, match='fit'):
        GradientUncertainty().predict(atomic=query)
    with pytest.raises(ValueError, match='dimension'):
        GradientUncertainty().fit(atomic=train).predict(atomic=query[:, :5])
    with pytest.raises(ValueError):
        feature_distances(query[:, :3], train)
