"""Fast kernels of the Gaussian moment representation (eq. 2/11-13 of ``seeds/003``), used by ``gmnn.py``.

* :class:`NeighbourLayout`: the edges of a neighbour list sorted by centre atom into a padded table of N atoms x M
  slots (M = largest neighbour count), built once per neighbour list (and cached per ``edge_i`` tensor);
* :func:`padded_moments`: the moments Ψ_{i,L,s} = sum_j R_s(r_ij) r̂_ij^{⊗L} (eq. 2/11). Per-slot quantities are
  stored component-major, ``(k, N, M)``, so that elementwise work runs over contiguous rows of slots; the sum over
  neighbours is one batched product per atom, ``Ψ_i = R_i A_iᵀ``, with R_i (n_radial, M) the radial values and A_i
  (19, M) the packed symmetric angular basis [r̂_a, r̂_a r̂_b (a <= b), r̂_a r̂_b r̂_c (a <= b <= c)]; Ψ_L is then
  unpacked to full Cartesian tensors (L = 0 is the row sum of R_i);
* :class:`InvariantPlan`: the full contractions of eq. (13) as four batched matrix products per atom (using that Ψ_2,
  Ψ_3 are symmetric in their Cartesian indices), followed by one selection of the kept radial channels.

Everything is differentiable twice (force training); the custom autograd functions have backward passes made of
differentiable torch operations. Under ``torch.compile`` (the compiled training step) the same products are written as
plain operations instead, because the compiler does not differentiate a custom function's backward a second time.
Units: Å.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy as np
import torch

#: contraction names in the order of ``gmnn.CONTRACTIONS`` with L_max = 3 (the fast path of :class:`InvariantPlan`)
CONTRACTION_NAMES = ('L0', 'L1L1', 'L2L2', 'L3L3', 'L2L2L2', 'L1L1L2', 'L3L2L1', 'L2L3L3')

#: the two (R, (2R + 1) R) products of the fast path: name -> (product, column block, axes of (s, t, u) giving the
#: row x and the columns y, z of the block; None: no y)
_PRODUCTS = {
    'L2L2L2': (0, 0, (2, 0, 1)),
    'L2L3L3': (0, 1, (0, 1, 2)),
    'L2L2': (0, 2, (0, None, 1)),
    'L1L1L2': (1, 0, (0, 2, 1)),
    'L3L2L1': (1, 1, (2, 0, 1)),
    'L1L1': (1, 2, (0, None, 1)),
}

__all__ = ['InvariantPlan', 'NeighbourLayout', 'cached_layout', 'padded_moments']


@dataclass
class NeighbourLayout:
    """Padded neighbour table of a neighbour list.

    :param n_atoms: number of centre atoms N.
    :param n_edges: number of edges E.
    :param width: slots per atom M (largest neighbour count, at least 1).
    :param index: (N M,) int64 edge of each slot, row-major by atom; ``n_edges`` marks an empty slot.
    :param inverse: (E,) int64 slot of each edge.
    """

    n_atoms: int
    n_edges: int
    width: int
    index: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def from_edges(cls, edge_i: torch.Tensor, n_atoms: int) -> NeighbourLayout:
        """Layout of the edges with centre atoms ``edge_i`` (E,), any order (a stable sort keeps the edge order)."""
        n_edges = int(edge_i.shape[0])
        device = edge_i.device
        if n_edges == 0:
            index = torch.zeros(n_atoms, dtype=torch.int64, device=device)
            return cls(n_atoms, 0, 1, index, torch.zeros(0, dtype=torch.int64, device=device))
        counts = torch.bincount(edge_i, minlength=n_atoms)
        width = max(int(counts.max()), 1)
        positions = torch.arange(n_edges, device=device)
        if bool((edge_i[1:] >= edge_i[:-1]).all()):
            centre, order = edge_i, positions
        else:
            centre, order = torch.sort(edge_i, stable=True)
        first = torch.cumsum(counts, 0) - counts  # first sorted edge of each atom
        slots = centre * width + positions - first[centre]
        index = torch.full((n_atoms * width,), n_edges, dtype=torch.int64, device=device)
        index[slots] = order
        inverse = torch.empty(n_edges, dtype=torch.int64, device=device)
        inverse[order] = slots
        return cls(n_atoms, n_edges, width, index, inverse)


_LAYOUT_CACHE: dict[int, tuple[weakref.ref, int, int, NeighbourLayout]] = {}


def cached_layout(edge_i: torch.Tensor, n_atoms: int) -> NeighbourLayout:
    """:meth:`NeighbourLayout.from_edges`, reused while the same (unmodified) ``edge_i`` tensor is passed again."""
    key = id(edge_i)
    entry = _LAYOUT_CACHE.get(key)
    if entry is not None:
        reference, version, atoms, layout = entry
        if reference() is edge_i and version == edge_i._version and atoms == n_atoms:
            return layout
    layout = NeighbourLayout.from_edges(edge_i, n_atoms)
    for stale in [k for k, v in _LAYOUT_CACHE.items() if v[0]() is None]:
        del _LAYOUT_CACHE[stale]
    if len(_LAYOUT_CACHE) >= 8:
        _LAYOUT_CACHE.pop(next(iter(_LAYOUT_CACHE)))
    _LAYOUT_CACHE[key] = (weakref.ref(edge_i), edge_i._version, n_atoms, layout)
    return layout


class _PadSlots(torch.autograd.Function):
    """(E, 3) edge vectors -> (3, N, M) slot vectors; empty slots get the constant ``fill`` (3,)."""

    @staticmethod
    def forward(ctx, vectors, fill, index, inverse, n_atoms):
        ctx.save_for_backward(inverse)
        return torch.cat([vectors, fill[None]]).index_select(0, index).t().reshape(3, n_atoms, -1)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        # every edge sits in exactly one slot: the adjoint of the scatter is a gather
        return grad.reshape(3, -1).index_select(1, inverse).t(), None, None, None, None


class _SlotProduct(torch.autograd.Function):
    """Ψ[n, s, c] = sum_m R[s, n, m] A[c, n, m] for R (R, N, M), A (K, N, M): one batched product per atom.

    The gradients come back in the (K, N, M) shape with rows of M slots contiguous (no transposing copies).
    """

    @staticmethod
    def forward(ctx, radial, angular):
        ctx.save_for_backward(radial, angular)
        return torch.bmm(radial.transpose(0, 1), angular.permute(1, 2, 0))

    @staticmethod
    def backward(ctx, grad):
        radial, angular = ctx.saved_tensors
        grad_radial = grad_angular = None
        if ctx.needs_input_grad[0]:
            grad_radial = torch.bmm(grad, angular.transpose(0, 1)).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            grad_angular = torch.bmm(grad.transpose(1, 2), radial.transpose(0, 1)).transpose(0, 1)
        return grad_radial, grad_angular


def padded_moments(
    vectors: torch.Tensor,
    species: torch.Tensor,
    edge_j: torch.Tensor,
    layout: NeighbourLayout,
    coefficients: torch.Tensor,
    centres: torch.Tensor,
    gamma: float,
    factor: float,
    cutoff: float,
    max_moment: int,
) -> list[torch.Tensor]:
    """Moments Ψ_{i,L,s} (eq. 2/11) for L = 0..max_moment: [(N, R), (N, R, 3), (N, R, 3, 3), (N, R, 3, 3, 3)].

    Radial functions (eq. 12): R_s(r) = factor sum_k β_{Z_i Z_j s k} exp(-γ (r - r_k)²) f_cut(r), with
    factor = (2γ/π)^{1/4} N_basis^{-1/2} and f_cut(r) = (cos(π r / r_cut) + 1) / 2 for r < r_cut, else 0.

    :param vectors: (E, 3) r_ij = r_i - r_j, Å. :param species: (N,) species index. :param edge_j: (E,) neighbours.
    :param coefficients: β (S, S, R, n_basis). :param centres: Gaussian centres r_k (n_basis,), Å.
    :param gamma: γ, Å⁻². :param cutoff: r_cut, Å.
    """
    # Sizes come from tensor shapes (symbolic under torch.compile, so that a new batch size is no recompilation).
    n_atoms = species.shape[0]
    n_species, _, n_radial, n_basis = coefficients.shape
    dtype = vectors.dtype
    compiling = torch.compiler.is_compiling()
    # Empty slots get a vector beyond the cutoff: f_cut = 0 makes their radial values (and all gradients) exactly 0.
    fill = torch.tensor([2.0 * cutoff + 1.0, 0.0, 0.0], dtype=dtype, device=vectors.device)
    if compiling:  # plain operations: the compiler differentiates them twice (it cannot the custom functions)
        slots = torch.cat([vectors, fill[None]]).index_select(0, layout.index).t().reshape(3, n_atoms, -1)
    else:
        slots = _PadSlots.apply(vectors, fill, layout.index, layout.inverse, n_atoms)  # (3, N, M)
    width = slots.shape[2]
    r = slots.square().sum(0).sqrt()  # (N, M)
    gaussians = torch.exp((r - centres.to(dtype)[:, None, None]).square() * -gamma)  # (n_basis, N, M)
    cut = torch.where(r < cutoff, 0.5 * (torch.cos(r * (torch.pi / cutoff)) + 1.0), torch.zeros_like(r))
    beta = coefficients * factor
    if n_species == 1:
        radial = (beta[0, 0] @ gaussians.view(n_basis, -1)).view(n_radial, n_atoms, width)
    else:
        centre = species[:, None].expand(n_atoms, width)
        neighbour = torch.cat([species.index_select(0, edge_j), species.new_zeros(1)])[layout.index.view(n_atoms, -1)]
        per_pair = beta.reshape(n_species * n_species, n_radial, n_basis).permute(1, 2, 0)
        radial = (per_pair[:, :, centre * n_species + neighbour] * gaussians).sum(1)
    radial = radial * cut
    out = [radial.sum(-1).t()]
    if max_moment == 0:
        return out
    unit = slots / r
    # packed symmetric angular basis: r̂_a, r̂_a r̂_b (a <= b), r̂_a r̂_b r̂_c (a <= b <= c)
    parts = [unit]
    for rank in range(2, max_moment + 1):
        left, right = (_on_device(table, slots.device) for table in _PACKED_STEPS[rank])
        parts.append(parts[-1].index_select(0, left) * unit.index_select(0, right))
    angular = torch.cat(parts) if len(parts) > 1 else unit  # (3 + 6 + 10, N, M)
    if compiling:
        packed = torch.bmm(radial.transpose(0, 1), angular.permute(1, 2, 0))
    else:
        packed = _SlotProduct.apply(radial, angular)  # (N, R, 19)
    for rank in range(1, max_moment + 1):  # unpack Ψ_L to full Cartesian tensors, each contiguous
        full = packed.index_select(2, _on_device(_UNPACK[rank], slots.device))
        out.append(full.view((n_atoms, n_radial) + (3,) * rank))
    return out


def _packed_tables() -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict[int, torch.Tensor]]:
    """Index tables of the packed symmetric tensors r̂^{⊗L} (sorted index tuples, L = 1..3)."""
    packed = {rank: list(itertools.combinations_with_replacement(range(3), rank)) for rank in (1, 2, 3)}
    steps = {}
    for rank in (2, 3):
        left = [packed[rank - 1].index(item[:-1]) for item in packed[rank]]
        right = [item[-1] for item in packed[rank]]
        steps[rank] = (torch.tensor(left), torch.tensor(right))
    offsets = np.cumsum([0] + [len(packed[rank]) for rank in (1, 2, 3)])
    unpack = {
        rank: torch.tensor(
            [offsets[rank - 1] + packed[rank].index(tuple(sorted(item))) for item in np.ndindex((3,) * rank)]
        )
        for rank in (1, 2, 3)
    }
    return steps, unpack


_PACKED_STEPS, _UNPACK = _packed_tables()
_DEVICE_COPIES: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _on_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A constant index table on ``device`` (copied once per device)."""
    if table.device == device:
        return table
    key = (id(table), device)
    if key not in _DEVICE_COPIES:
        _DEVICE_COPIES[key] = (table, table.to(device))  # keeps ``table`` alive, so its id stays unique
    return _DEVICE_COPIES[key][1]


class InvariantPlan:
    """Full contractions of eq. (13) by four batched matrix products per atom, then one selection of kept channels.

    With Ψ_2, Ψ_3 symmetric in their Cartesian indices and p_L = Ψ_L of one atom (R radial channels s, t, u):

    * T2 = p2[(s a), b] [p2; p1][(t c) | t, b]ᵀ holds X_{satc} = sum_b p2_{sab} p2_{tbc} and Y_{uat} = sum_b p2_{uab} p1_{tb};
    * T3 = p3[(s a), (b c)] [p3; p2]ᵀ holds K_{taub} = sum_cd p3_{tacd} p3_{ubcd} and V_{sct} = sum_ab p3_{scab} p2_{tab};
    * product 0: p2[x, (a c)] [X | K | p2ᵀ] gives L2L2L2_{yzx}, L2L3L3_{xyz} and L2L2_{xz};
    * product 1: p1[x, a] [Y | V | p1ᵀ] gives L1L1L2_{xzy}, L3L2L1_{yzx} and L1L1_{xz};
    * L3L3_{tu} = sum_a K_{taua}.

    :attr:`select` maps the kept channels (order of ``gmnn.GaussianMoments.invariants``) into the concatenation of
    [L0 (R), L3L3 (R²), product 0 (R (2R+1) R), product 1 (R (2R+1) R)]. For L_max < 3 the contractions are
    plain ``torch.einsum`` calls.
    """

    def __init__(self, contractions: list[tuple[str, tuple[int, ...], str, str]], kept: dict[str, list[tuple]]):
        self.contractions = contractions
        self.fast = tuple(name for name, *_ in contractions) == CONTRACTION_NAMES
        n = len(kept['L0'])
        position: dict[tuple, int] = {}
        if self.fast:
            width = (2 * n + 1) * n  # columns of one product row
            for ch in np.ndindex(n):
                position[('L0', *ch)] = ch[0]
            for ch in np.ndindex(n, n):
                position[('L3L3', *ch)] = n + ch[0] * n + ch[1]
            for name, (product, block, (x, y, z)) in _PRODUCTS.items():
                for ch in np.ndindex(*(n,) * (3 if block < 2 else 2)):
                    row = ch[x] * width + block * n * n + (ch[y] * n if block < 2 else 0) + ch[z]
                    position[(name, *ch)] = n + n * n + product * n * width + row
        else:
            offset = 0
            for name, ranks, *_ in contractions:
                for flat, channels in enumerate(np.ndindex(*(n,) * len(ranks))):
                    position[(name, *channels)] = offset + flat
                offset += n ** len(ranks)
        self.select = torch.tensor([position[(name, *ch)] for name, *_ in contractions for ch in kept[name]])

    def __call__(self, moments: list[torch.Tensor], select: torch.Tensor | None = None) -> torch.Tensor:
        """G (N, d_0) from the moments [(N, R), (N, R, 3), (N, R, 3, 3), (N, R, 3, 3, 3)].

        :param select: :attr:`select` on the moments' device (e.g. a module buffer); copied when not given.
        """
        n_atoms, n = moments[0].shape
        if not self.fast:
            raw = [
                torch.einsum(equation, *[moments[rank] for rank in ranks])
                for _, ranks, equation, _ in self.contractions
            ]
        else:
            p1 = moments[1].reshape(n_atoms, n, 3)
            p2 = moments[2].reshape(n_atoms, n, 9)
            p2_rows = moments[2].reshape(n_atoms, 3 * n, 3)
            p3_rows = moments[3].reshape(n_atoms, 3 * n, 9)
            t2 = torch.bmm(p2_rows, torch.cat([p2_rows, p1], 1).transpose(1, 2))  # (N, 3R, 4R)
            t3 = torch.bmm(p3_rows, torch.cat([p3_rows, p2], 1).transpose(1, 2))
            x, y = t2.split([3 * n, n], dim=2)
            k, v = t3.split([3 * n, n], dim=2)
            x = x.view(n_atoms, n, 3, n, 3).permute(0, 2, 4, 1, 3)  # X (a, c, s, t)
            k = k.view(n_atoms, n, 3, n, 3).permute(0, 2, 4, 1, 3)  # K (a, b, t, u)
            y = y.view(n_atoms, n, 3, n).transpose(1, 2)  # Y (a, u, t)
            v = v.view(n_atoms, n, 3, n).transpose(1, 2)  # V (c, s, t)
            p2_columns = moments[2].permute(0, 2, 3, 1).unsqueeze(3)  # (N, a, b, 1, s)
            xk = torch.cat([x, k, p2_columns], 3).view(n_atoms, 9, -1)
            yv = torch.cat([y, v, p1.transpose(1, 2).unsqueeze(2)], 2).view(n_atoms, 3, -1)
            raw = [moments[0], k.diagonal(0, 1, 2).sum(-1), torch.bmm(p2, xk), torch.bmm(p1, yv)]
        flat = torch.cat([part.reshape(n_atoms, -1) for part in raw], dim=1)
        return flat.index_select(1, self.select.to(flat.device) if select is None else select)
