"""Shared fixtures of the selection tests: ``bmdal_reg`` 3.0.2 as a test oracle (never imported by the package)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def oracle(monkeypatch):
    """Return ``run(method, pool, train, batch, transforms=(), **config) -> indices`` backed by ``bmdal_reg``."""
    # bmdal_reg 3.0.2 uses ``np.Inf``, which numpy 2 removed.
    monkeypatch.setattr(np, 'Inf', np.inf, raising=False)
    from bmdal_reg.bmdal import algorithms, selection
    from bmdal_reg.bmdal.feature_data import TensorFeatureData
    from bmdal_reg.bmdal.feature_maps import IdentityFeatureMap
    from bmdal_reg.bmdal.features import Features

    def run(method, pool, train, batch_size, transforms=(), **config):
        if len(train) == 0:  # select_batch cannot handle an empty training set: use the selection classes
            fmap = IdentityFeatureMap(pool.shape[1])
            cls = {'maxdist': selection.MaxDistSelectionMethod, 'lcmd': selection.LargestClusterMaxDistSelectionMethod}
            alg = cls[method](
                Features(fmap, TensorFeatureData(pool)),
                Features(fmap, TensorFeatureData(train)),
                sel_with_train=False,
                verbosity=0,
            )
            return alg.select(batch_size).numpy()
        indices, _ = algorithms.select_batch(
            batch_size,
            [torch.nn.Identity()],
            {'train': TensorFeatureData(train), 'pool': TensorFeatureData(pool)},
            None,
            base_kernel='linear',
            kernel_transforms=list(transforms),
            selection_method=method,
            verbosity=0,
            **config,
        )
        return indices.numpy()

    return run
