"""Greedy batch selection (seed paper 001, section 3.2): aiida-alkit against ``bmdal_reg`` 3.0.2, same process.

Setting (full run): pool N = 100 000, d = 512 features, M = 1 000 training points, batch 256.
  * ``maxdet``: the paper's MaxDet + GP: GP posterior transform (eq. 23, sigma^2 from the paper) then noise-free
    MaxDet in P mode, float64 (bmdal's ``allow_float64`` setting for MaxDet); timings include the transform;
  * ``maxdist`` and ``lcmd``: feature kernel, training points as initial centres (TP mode), float32 (bmdal default).
``--quick`` runs N = 10 000, d = 128, M = 100, batch 64 in seconds (best of 3 runs).
Prints one JSON line per method: method, alkit_s, bmdal_reg_s, speedup, identical (same indices in the same order),
plus process CPU times (more robust than wall times on a shared machine) and the problem size.
``bmdal_reg`` is only the reference here; aiida-alkit does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
import time


def _best_time(function, repeat: int):
    """Smallest wall and process CPU time over ``repeat`` calls, and the result of the last call."""
    best, best_cpu, result = math.inf, math.inf, None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, result


def run(
    n_pool: int,
    dim: int,
    n_train: int,
    batch_size: int,
    methods: list[str],
    seed: int = 0,
    repeat: int = 1,
    quiet: bool = False,
) -> list[dict]:
    import numpy as np
    import torch

    vars(np).setdefault('Inf', np.inf)  # bmdal_reg 3.0.2 still uses the alias that numpy 2 removed
    from bmdal_reg.bmdal.algorithms import select_batch
    from bmdal_reg.bmdal.feature_data import TensorFeatureData

    from aiida_alkit.selection import greedy

    gen = torch.Generator().manual_seed(seed)
    pool64 = torch.randn(n_pool, dim, dtype=torch.float64, generator=gen)
    pool64 *= torch.rand(n_pool, 1, dtype=torch.float64, generator=gen) + 0.1
    train64 = torch.randn(n_train, dim, dtype=torch.float64, generator=gen)
    pool32, train32 = pool64.float(), train64.float()

    def bmdal(method, pool, train, transforms=(), **config):
        data = {'train': TensorFeatureData(train), 'pool': TensorFeatureData(pool)}
        indices, _ = select_batch(
            batch_size,
            [torch.nn.Identity()],
            data,
            None,
            base_kernel='linear',
            kernel_transforms=list(transforms),
            selection_method=method,
            verbosity=0,
            **config,
        )
        return indices.numpy()

    def alkit_maxdet():
        sigma2 = greedy.paper_sigma2(train64)
        pool_gp = greedy.posterior_transform(pool64, train64, sigma2)
        return greedy.max_det(pool_gp, None, batch_size).indices

    def bmdal_maxdet():
        sigma = math.sqrt(greedy.paper_sigma2(train64))
        return bmdal('maxdet', pool64, train64, [('train', [sigma])], allow_float64=True)

    cases = {
        'maxdet': (alkit_maxdet, bmdal_maxdet),
        'maxdist': (
            lambda: greedy.max_dist(pool32, train32, batch_size).indices,
            lambda: bmdal('maxdist', pool32, train32),
        ),
        'lcmd': (
            lambda: greedy.lcmd(pool32, train32, batch_size).indices,
            lambda: bmdal('lcmd', pool32, train32),
        ),
    }
    rows = []
    for method in methods:
        ours, theirs = cases[method]
        alkit_s, alkit_cpu_s, ours_idx = _best_time(ours, repeat)
        bmdal_s, bmdal_cpu_s, theirs_idx = _best_time(theirs, repeat)
        rows.append(
            {
                'method': method,
                'alkit_s': round(alkit_s, 3),
                'bmdal_reg_s': round(bmdal_s, 3),
                'speedup': round(bmdal_s / alkit_s, 2),
                'identical': bool(np.array_equal(ours_idx, theirs_idx)),
                'alkit_cpu_s': round(alkit_cpu_s, 3),
                'bmdal_reg_cpu_s': round(bmdal_cpu_s, 3),
                'n_pool': n_pool,
                'dim': dim,
                'n_train': n_train,
                'batch_size': batch_size,
                'repeat': repeat,
                'torch_threads': torch.get_num_threads(),
            }
        )
        if not quiet:
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='10x smaller pool and training set, d=128, batch 64')
    parser.add_argument('--methods', default='maxdet,maxdist,lcmd', help='comma-separated subset')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeat', type=int, default=None, help='best of R runs (default: 3 quick, 1 full)')
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    # warm up both implementations (first-call overheads) on a tiny problem
    run(500, 16, 10, 4, methods, args.seed, repeat=1, quiet=True)
    if args.quick:
        run(10_000, 128, 100, 64, methods, args.seed, repeat=args.repeat or 3)
    else:
        run(100_000, 512, 1_000, 256, methods, args.seed, repeat=args.repeat or 1)


if __name__ == '__main__':
    main()
