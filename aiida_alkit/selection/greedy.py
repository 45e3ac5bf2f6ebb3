"""Greedy batch-selection methods of seed paper 001 (Zaverkin et al.), section 3.

All methods work on explicit feature matrices with the linear kernel ``k(x, x') = <phi(x), phi(x')>`` (eq. 7):
``pool_features`` of shape ``(N, d)`` and ``train_features`` of shape ``(M, d)`` (``M`` may be zero), given as numpy
arrays or torch tensors (kept on their device and in their floating dtype). Memory is ``O(N d + d^2)``: the
``N x N`` kernel matrix is never built, every greedy step costs one ``N x d`` matrix-vector product.

* :func:`max_diag` -- MaxDiag, eq. (26);
* :func:`max_det` -- MaxDet, eq. (27), greedy partial pivoted matrix-free Cholesky (in feature space);
* :func:`max_dist` -- MaxDist, eq. (28);
* :func:`lcmd` -- LCMD, eqs. (29)-(31);
* :func:`posterior_transform` -- GP posterior feature map, eqs. (21)-(23), with :func:`paper_sigma2` for sigma^2.

Conventions (tie-breaking, initialisation) follow the reference implementation of ref. 29 (``bmdal_reg``):
the first pick without training points is the point of largest norm, ties go to the lowest index, LCMD cluster
sizes are sums of squared distances and a point changes cluster only when it is strictly closer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from aiida_alkit.selection.dopt import max_vol
from aiida_alkit.selection.result import SelectionResult
from aiida_alkit.selection.result import check_batch_size as _check_batch_size

__all__ = [
    'SelectionResult',
    'lcmd',
    'max_det',
    'max_diag',
    'max_dist',
    'nearest_training_distance',
    'paper_sigma2',
    'posterior_matrix',
    'posterior_transform',
    'select_batch',
]

ArrayLike = np.ndarray | torch.Tensor

#: Number of matrix elements processed per block in the chunked matrix products.
_BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------


def _to_tensor(array: Any, name: str) -> torch.Tensor:
    """Return ``array`` as a floating torch tensor without copying when possible."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach()
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(array)))
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
        raise ValueError(f'{name} must hold real numbers, got dtype {tensor.dtype}')
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    return tensor


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _prepare(
    pool_features: ArrayLike, train_features: ArrayLike | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate shapes and batch size; return ``(pool, train, batch_size)`` as tensors of a common dtype/device."""
    pool = _to_tensor(pool_features, 'pool_features')
    if pool.ndim != 2:
        raise ValueError(f'pool_features must have shape (N, d), got shape {tuple(pool.shape)}')
    n_pool, dim = pool.shape
    if n_pool == 0 or dim == 0:
        raise ValueError(f'pool_features must be non-empty, got shape {tuple(pool.shape)}')
    if train_features is None:
        train = pool.new_zeros((0, dim))
    else:
        train = _to_tensor(train_features, 'train_features')
        if train.numel() == 0:
            train = pool.new_zeros((0, dim))
        elif train.ndim != 2 or train.shape[1] != dim:
            raise ValueError(
                f'train_features must have shape (M, {dim}) to match pool_features {tuple(pool.shape)}, '
                f'got shape {tuple(train.shape)}'
            )
    dtype = torch.promote_types(pool.dtype, train.dtype)
    pool = pool.to(dtype)
    train = train.to(device=pool.device, dtype=dtype)
    return pool, train, _check_batch_size(batch_size, n_pool)


def _chunks(n_rows: int, width: int) -> Iterator[slice]:
    """Row slices such that a block of ``rows x width`` stays below ``_BLOCK_ELEMENTS`` elements."""
    step = max(1, _BLOCK_ELEMENTS // max(1, width))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _sq_norms(features: torch.Tensor, check: bool = False) -> torch.Tensor:
    """Kernel diagonal ``k(x, x) = |phi(x)|^2`` per row; ``check`` rejects NaN/inf features (cheaply, via the norms)."""
    sq = (features**2).sum(dim=-1)
    if check and not bool(torch.isfinite(sq).all()):
        raise ValueError('features must be finite (NaN or inf found, or squared norms overflow)')
    return sq


def _result(indices: list[int], gains: list[float], method: str, status: str | None = None) -> SelectionResult:
    return SelectionResult(
        indices=np.asarray(indices, dtype=np.int64),
        gains=np.asarray(gains, dtype=np.float64),
        method=method,
        status=status,
    )


def _fill_by_prior(
    prior: torch.Tensor, selected: torch.Tensor, n_missing: int, indices: list[int], gains: list[float]
) -> None:
    """Complete a batch with the unselected points of largest prior variance (gain 0); deterministic fallback."""
    scores = torch.where(selected, torch.full_like(prior, -math.inf), prior)
    order = torch.argsort(scores, descending=True, stable=True)[:n_missing]
    indices.extend(int(i) for i in order.tolist())
    gains.extend([0.0] * n_missing)
    selected[order] = True


# ----------------------------------------------------------------------------------------------------------------------
# GP posterior transform, eqs. (21)-(23)
# ----------------------------------------------------------------------------------------------------------------------


def paper_sigma2(train_features: ArrayLike) -> float:
    """Data-dependent noise variance of section 3.1.4: ``sigma^2 = tr[Phi_train^T Phi_train] / (N_train d)``."""
    train = _to_tensor(train_features, 'train_features')
    if train.ndim != 2 or train.shape[0] == 0 or train.shape[1] == 0:
        raise ValueError(f'train_features must have shape (M, d) with M, d >= 1, got shape {tuple(train.shape)}')
    sigma2 = float((train.to(torch.float64) ** 2).sum()) / (train.shape[0] * train.shape[1])
    if not sigma2 > 0.0 or not math.isfinite(sigma2):
        raise ValueError(f'cannot derive sigma^2 from the training features (got {sigma2})')
    return sigma2


def posterior_matrix(train_features: ArrayLike, sigma2: float, symmetric: bool = False) -> torch.Tensor:
    """Matrix ``T`` (d x d, float64) of the GP posterior feature map ``phi_GP(x) = phi(x) @ T``, eqs. (22)-(23).

    With ``C = Phi_train^T Phi_train + sigma^2 I``, ``T T^T = sigma^2 C^{-1}`` so that
    ``phi_GP(x) . phi_GP(x') = sigma^2 phi(x)^T C^{-1} phi(x') = k(x, x' | D)`` (eq. 22, equal to eq. 21 by Woodbury).
    ``symmetric=True`` uses ``T = sigma C^{-1/2}`` literally as in eq. (23); the default uses the Cholesky factor
    ``T = sigma L^{-T}`` (``C = L L^T``), which is cheaper and gives the same kernel (the two differ by a rotation).
    """
    train = _to_tensor(train_features, 'train_features')
    if train.ndim != 2:
        raise ValueError(f'train_features must have shape (M, d), got shape {tuple(train.shape)}')
    if not (sigma2 > 0.0 and math.isfinite(sigma2)):
        raise ValueError(f'sigma2 must be a positive finite number, got {sigma2}')
    phi = train.to(torch.float64)
    dim = phi.shape[1]
    eye = torch.eye(dim, dtype=torch.float64, device=phi.device)
    cov = phi.T @ phi + sigma2 * eye
    sigma = math.sqrt(sigma2)
    if symmetric:
        eigvals, eigvecs = torch.linalg.eigh(cov)
        return sigma * (eigvecs * eigvals.rsqrt()) @ eigvecs.T
    chol = torch.linalg.cholesky(cov)
    return sigma * torch.linalg.solve_triangular(chol, eye, upper=False).T


def posterior_transform(
    pool_features: ArrayLike, train_features: ArrayLike, sigma2: float | None = None, symmetric: bool = False
) -> ArrayLike:
    """GP posterior transformed features ``phi_GP(x)`` of eq. (23) for every row of ``pool_features``.

    Matrix-free in the sense of the paper: only the ``d x d`` matrix ``Phi^T Phi + sigma^2 I`` is factorised.
    ``sigma2=None`` selects sigma^2 with :func:`paper_sigma2`. Returns the same array type (numpy/torch) and dtype as
    ``pool_features``. To transform the training features as well, pass them as ``pool_features``.
    """
    pool = _to_tensor(pool_features, 'pool_features')
    if pool.ndim != 2:
        raise ValueError(f'pool_features must have shape (N, d), got shape {tuple(pool.shape)}')
    train = _to_tensor(train_features, 'train_features')
    if train.numel() == 0:
        train = pool.new_zeros((0, pool.shape[1]))
    if train.ndim != 2 or train.shape[1] != pool.shape[1]:
        raise ValueError(
            f'train_features must have shape (M, {pool.shape[1]}) to match pool_features, got {tuple(train.shape)}'
        )
    if sigma2 is None:
        sigma2 = paper_sigma2(train)
    matrix = posterior_matrix(train.to(pool.device), sigma2, symmetric=symmetric)
    out = (pool.to(torch.float64) @ matrix).to(pool.dtype)
    return out if isinstance(pool_features, torch.Tensor) else out.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------------
# MaxDiag, eq. (26)
# ----------------------------------------------------------------------------------------------------------------------


def max_diag(pool_variances: ArrayLike, batch_size: int) -> SelectionResult:
    """MaxDiag, eq. (26): the ``batch_size`` points of largest ``k(x, x)``, in decreasing order (ties: lowest index)."""
    values = _to_tensor(pool_variances, 'pool_variances')
    if values.ndim != 1:
        raise ValueError(f'pool_variances must be one-dimensional, got shape {tuple(values.shape)}')
    batch_size = _check_batch_size(batch_size, int(values.shape[0]))
    if not bool(torch.isfinite(values).all()):
        raise ValueError('pool_variances must be finite (no NaN or inf)')
    order = torch.argsort(values, descending=True, stable=True)[:batch_size]
    return _result(order.tolist(), values[order].to(torch.float64).tolist(), 'maxdiag')


# ----------------------------------------------------------------------------------------------------------------------
# MaxDet, eq. (27)
# ----------------------------------------------------------------------------------------------------------------------


_NEVER_STALE = 1 << 62


def _lazy_argmax(
    bounds: torch.Tensor,
    fresh: torch.Tensor,
    step: int,
    refresh: Callable[[torch.Tensor, torch.Tensor, int], None],
    row_width: int,
    first_block: int = 256,
) -> int:
    """Exact ``argmax`` (first index on ties) of scores that only decrease from step to step (lazy greedy).

    ``bounds[i]`` is the score of point ``i`` after ``fresh[i]`` picks, hence an upper bound of its current score.
    Stale points with the largest bounds are refreshed (``refresh(rows, fresh, step)`` brings ``bounds[rows]`` up to
    date) in growing blocks until the largest bound belongs to an up-to-date point. ``row_width`` (the feature
    dimension) sets the chunk size of the refreshes.
    """
    n_points = bounds.shape[0]
    block = first_block
    while True:
        best = int(torch.argmax(bounds))
        if int(fresh[best]) >= step:
            return best
        if block >= n_points:
            rows = torch.nonzero(fresh < step).squeeze(1)
        else:
            rows = torch.topk(bounds, block, sorted=False).indices
            rows = rows[fresh[rows] < step]
            if rows.numel() == 0:  # ties at the block boundary
                rows = torch.tensor([best], dtype=torch.long, device=bounds.device)
        width = max(1, step - int(fresh[rows].min()))
        for part in _chunks(int(rows.shape[0]), max(width, row_width)):
            refresh(rows[part], fresh, step)
        fresh[rows] = step
        block *= 4


def _conditioned_metric(train: torch.Tensor, noise: float) -> torch.Tensor:
    """d x d matrix ``A`` with ``k(x, x' | train) = phi(x)^T A phi(x')`` (float64).

    ``noise > 0``: ``A = noise (Phi^T Phi + noise I)^{-1}`` (eq. 22). ``noise == 0``: the noise-free limit,
    ``A = I - V V^T`` with ``V`` an orthonormal basis of the span of the training features.
    """
    phi = train.to(torch.float64)
    dim = phi.shape[1]
    eye = torch.eye(dim, dtype=torch.float64, device=phi.device)
    if noise > 0.0:
        chol = torch.linalg.cholesky(phi.T @ phi + noise * eye)
        inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)
        return noise * (inv_chol.T @ inv_chol)
    _, singular, vh = torch.linalg.svd(phi, full_matrices=False)
    tol = float(singular.max()) * max(phi.shape) * torch.finfo(torch.float64).eps if singular.numel() else 0.0
    basis = vh[singular > tol]
    return eye - basis.T @ basis


def max_det(
    pool_features: ArrayLike,
    train_features: ArrayLike | None,
    batch_size: int,
    noise: float = 0.0,
    condition_on_train: bool = True,
) -> SelectionResult:
    """MaxDet, eq. (27): greedy determinant maximisation by partial pivoted matrix-free Cholesky.

    Each step picks ``argmax_x k(x, x | D, batch) + noise`` and conditions on it. The Cholesky columns are kept in
    feature space (``d x batch``) and the ``d x d`` conditioned metric ``A`` is updated by rank one, so memory is
    ``O(N d)``. Posterior variances only decrease, so stale values are upper bounds and are refreshed lazily (exact
    argmax, same picks as the eager algorithm). With ``condition_on_train`` the kernel is first conditioned on the
    training points (with observation noise ``noise``), otherwise the training points are ignored (use this after
    :func:`posterior_transform`, which already encodes them: MaxDet + GP of the paper). ``noise`` is sigma^2 added to
    the kernel diagonal; the paper uses 0.

    Gains are the posterior variances (without noise) of the picks at pick time; they are non-increasing. When no
    positive variance is left (at most ``rank(Phi)`` points can be picked for ``noise == 0``), the batch is completed
    with the remaining points of largest prior variance (gain 0) and ``status`` says so.
    Equivalent ``bmdal_reg`` setting: ``selection_method='maxdet'``, ``sel_with_train=condition_on_train``,
    ``maxdet_sigma=sqrt(noise)``.
    """
    pool, train, batch_size = _prepare(pool_features, train_features, batch_size)
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise ValueError(f'noise must be a non-negative finite number, got {noise}')
    n_pool, dim = pool.shape
    work = torch.float64
    device = pool.device
    prior = _sq_norms(pool, check=True).to(work)
    _sq_norms(train, check=True)
    metric: torch.Tensor | None = None  # conditioned metric A_0 of the training points; None means identity
    if condition_on_train and train.shape[0] > 0:
        metric = _conditioned_metric(train, noise)
        variances = torch.empty(n_pool, dtype=work, device=device)
        for rows in _chunks(n_pool, dim):
            block = pool[rows].to(work)
            variances[rows] = ((block @ metric) * block).sum(dim=1)
    else:
        variances = prior.clone()
    # Cholesky columns in feature space: v_t(x) = v_0(x) - sum_{s<t} (phi(x) . columns[:, s])^2 and
    # k(x, x' | D, batch[:t]) = phi(x)^T A_t phi(x') with A_t = A_0 - columns[:, :t] columns[:, :t]^T
    columns = torch.zeros(dim, batch_size, dtype=work, device=device)

    def refresh(rows: torch.Tensor, fresh: torch.Tensor, step: int) -> None:
        low = int(fresh[rows].min())
        proj = (pool[rows].to(work) @ columns[:, low:step]).square_()
        if int(fresh[rows].max()) > low:
            proj *= torch.arange(low, step, device=device)[None, :] >= fresh[rows][:, None]
        variances[rows] -= proj.sum(dim=1)

    # variances below this are numerical zeros (only relevant for noise == 0)
    tol = 100.0 * torch.finfo(pool.dtype).eps * float(prior.max()) if noise == 0.0 else 0.0
    fresh = torch.zeros(n_pool, dtype=torch.long, device=device)
    indices: list[int] = []
    gains: list[float] = []
    status = None
    for step in range(batch_size):
        best = _lazy_argmax(variances, fresh, step, refresh, dim)
        best_var = float(variances[best])
        pivot = best_var + noise
        if not pivot > tol:
            status = (
                f'MaxDet ran out of positive posterior variance after {step} picks; '
                f'completed the batch with the largest remaining prior variances'
            )
            selected = torch.zeros(n_pool, dtype=torch.bool, device=device)
            selected[indices] = True
            _fill_by_prior(prior, selected, batch_size - step, indices, gains)
            break
        indices.append(best)
        gains.append(best_var)
        phi_best = pool[best].to(work)
        direction = phi_best if metric is None else metric @ phi_best
        if step > 0:  # A_t phi(best), the posterior covariance direction
            direction = direction - columns[:, :step] @ (columns[:, :step].T @ phi_best)
        columns[:, step] = direction / math.sqrt(pivot)
        variances[best] = -math.inf
        fresh[best] = _NEVER_STALE
    return _result(indices, gains, 'maxdet', status)


# ----------------------------------------------------------------------------------------------------------------------
# MaxDist, eq. (28), and LCMD, eqs. (29)-(31)
# ----------------------------------------------------------------------------------------------------------------------


def _nearest_train(pool: torch.Tensor, pool_sq: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest training point for every pool point (first index on ties)."""
    n_pool, n_train = pool.shape[0], train.shape[0]
    train_sq = _sq_norms(train, check=True)
    min_sq = torch.full((n_pool,), math.inf, dtype=pool.dtype, device=pool.device)
    nearest = torch.zeros(n_pool, dtype=torch.long, device=pool.device)
    train_step = min(n_train, 4096)
    for rows in _chunks(n_pool, train_step):
        block, block_sq = pool[rows], pool_sq[rows]
        best = min_sq[rows]
        best_idx = nearest[rows]
        for start in range(0, n_train, train_step):
            cols = slice(start, min(start + train_step, n_train))
            # argmin of |t|^2 - 2 <x, t> (one fused GEMM), then the distance in eq. (10) form for the winner
            shifted = torch.addmm(train_sq[None, cols], block, train[cols].T, alpha=-2.0)
            arg = torch.argmin(shifted, dim=1)
            cross = (shifted.gather(1, arg[:, None]).squeeze(1) - train_sq[cols][arg]) / -2.0
            value = (block_sq + train_sq[cols][arg]) - 2.0 * cross
            closer = value < best
            best = torch.where(closer, value, best)
            best_idx = torch.where(closer, arg + start, best_idx)
        min_sq[rows] = best
        nearest[rows] = best_idx
    return min_sq, nearest


def nearest_training_distance(pool_features: ArrayLike, train_features: ArrayLike) -> np.ndarray:
    """Feature-space distance (eq. 10) of every pool point to its nearest training point, (N,) float64 numpy."""
    pool, train, _ = _prepare(pool_features, train_features, 1)
    if train.shape[0] == 0:
        raise ValueError('nearest_training_distance needs at least one training point')
    min_sq, _ = _nearest_train(pool, _sq_norms(pool, check=True), train)
    return min_sq.clamp(min=0.0).sqrt().to(torch.float64).cpu().numpy()


def _sq_dists_to(pool: torch.Tensor, pool_sq: torch.Tensor, index: int) -> torch.Tensor:
    """Squared feature distances ``k(x,x) + k(x',x') - 2 k(x,x')`` (eq. 10) of all pool points to pool point ``index``."""
    return (pool_sq + pool_sq[index]) - 2.0 * (pool @ pool[index])


def max_dist(pool_features: ArrayLike, train_features: ArrayLike | None, batch_size: int) -> SelectionResult:
    """MaxDist, eq. (28): greedily pick the pool point farthest from the training points and the picks so far.

    Distances are feature-space distances, eq. (10). Without training points the first pick is the point of
    largest norm (its gain is that norm, the distance to the zero feature vector), as in ``bmdal_reg``.
    Gains are the distances (not squared) of each pick to the training set and earlier picks. Minimum distances only
    decrease, so stale values are upper bounds and are refreshed lazily (exact argmax).
    Equivalent ``bmdal_reg`` setting: ``selection_method='maxdist'`` (TP mode, its default).
    """
    pool, train, batch_size = _prepare(pool_features, train_features, batch_size)
    pool_sq = _sq_norms(pool, check=True)
    if train.shape[0] > 0:
        min_sq, _ = _nearest_train(pool, pool_sq, train)
    else:
        min_sq = torch.full_like(pool_sq, math.inf)
    picked = torch.zeros(batch_size, dtype=torch.long, device=pool.device)

    def refresh(rows: torch.Tensor, fresh: torch.Tensor, step: int) -> None:
        low = int(fresh[rows].min())
        centres = picked[low:step]
        sq = (pool_sq[rows][:, None] + pool_sq[centres][None, :]) - 2.0 * (pool[rows] @ pool[centres].T)
        if int(fresh[rows].max()) > low:
            sq.masked_fill_(torch.arange(low, step, device=pool.device)[None, :] < fresh[rows][:, None], math.inf)
        min_sq[rows] = torch.minimum(min_sq[rows], sq.min(dim=1).values)

    fresh = torch.zeros(pool.shape[0], dtype=torch.long, device=pool.device)
    indices: list[int] = []
    gains: list[float] = []
    for step in range(batch_size):
        if step == 0 and train.shape[0] == 0:
            best = int(torch.argmax(pool_sq))
            gain_sq = float(pool_sq[best])
        else:
            best = _lazy_argmax(min_sq, fresh, step, refresh, pool.shape[1])
            gain_sq = float(min_sq[best])
        indices.append(best)
        gains.append(math.sqrt(max(gain_sq, 0.0)))
        picked[step] = best
        min_sq[best] = -math.inf  # never pick twice
        fresh[best] = _NEVER_STALE
    return _result(indices, gains, 'maxdist')


def lcmd(pool_features: ArrayLike, train_features: ArrayLike | None, batch_size: int) -> SelectionResult:
    """LCMD, eqs. (29)-(31): from the cluster of largest size pick the point farthest from its centre.

    Centres are the training points and earlier picks; every unselected pool point belongs to its nearest centre
    (eq. 29, it only moves to a new centre when strictly closer; ties go to the older centre); the cluster size is the
    sum of squared distances of its unselected members to the centre (eq. 30). Without training points the first pick
    is the point of largest norm, as in ``bmdal_reg``. Gains are the distances of the picks to their centres.
    Equivalent ``bmdal_reg`` setting: ``selection_method='lcmd'`` (TP mode and ``dist_weight_mode='sq-dist'``).
    """
    pool, train, batch_size = _prepare(pool_features, train_features, batch_size)
    n_train = train.shape[0]
    pool_sq = _sq_norms(pool, check=True)
    if n_train > 0:
        min_sq, centre = _nearest_train(pool, pool_sq, train)
    else:
        min_sq = torch.full_like(pool_sq, math.inf)
        centre = torch.zeros(pool.shape[0], dtype=torch.long, device=pool.device)
    neg_inf = torch.tensor(-math.inf, dtype=pool.dtype, device=pool.device)
    indices: list[int] = []
    gains: list[float] = []
    status = None
    for step in range(batch_size):
        if step == 0 and n_train == 0:
            best = int(torch.argmax(pool_sq))
            gain_sq = float(pool_sq[best])
        else:
            # selected points carry min_sq = -inf: weight 0 in the cluster sizes and never picked again
            sizes = torch.bincount(centre, weights=min_sq.clamp(min=0.0), minlength=n_train + step)
            in_largest = sizes[centre] == sizes.max()
            scores = torch.where(in_largest, min_sq, neg_inf)
            best = int(torch.argmax(scores))
            gain_sq = float(scores[best])
            if gain_sq == -math.inf:  # largest cluster has no unselected member (degenerate data)
                best = int(torch.argmax(min_sq))
                gain_sq = float(min_sq[best])
                status = f'LCMD fell back to MaxDist at pick {step} (largest cluster had no unselected point)'
        indices.append(best)
        gains.append(math.sqrt(max(gain_sq, 0.0)))
        sq = _sq_dists_to(pool, pool_sq, best)
        closer = sq < min_sq
        centre[closer] = n_train + step
        torch.where(closer, sq, min_sq, out=min_sq)
        min_sq[best] = -math.inf
    return _result(indices, gains, 'lcmd', status)


# ----------------------------------------------------------------------------------------------------------------------
# dispatcher
# ----------------------------------------------------------------------------------------------------------------------


def select_batch(
    method: str,
    pool_features: ArrayLike,
    train_features: ArrayLike | None,
    batch_size: int,
    **kwargs: Any,
) -> SelectionResult:
    """Run one of ``'maxdiag'`` (on the pool kernel diagonal), ``'maxdet'``, ``'maxdist'``, ``'lcmd'``, ``'maxvol'``."""
    key = method.lower()
    if key == 'maxdiag':
        pool, _, batch_size = _prepare(pool_features, train_features, batch_size)
        return max_diag(_sq_norms(pool, check=True), batch_size)
    if key == 'maxdet':
        return max_det(pool_features, train_features, batch_size, **kwargs)
    if key == 'maxdist':
        return max_dist(pool_features, train_features, batch_size, **kwargs)
    if key == 'lcmd':
        return lcmd(pool_features, train_features, batch_size, **kwargs)
    if key == 'maxvol':
        return max_vol(pool_features, train_features, batch_size, **kwargs)
    raise ValueError(
        f"unknown selection method {method!r}; expected 'maxdiag', 'maxdet', 'maxdist', 'lcmd' or 'maxvol'"
    )
