"""Batches: many structures as one disconnected graph of torch tensors.

All atoms of all structures are concatenated; ``structure_index[n]`` says which structure atom ``n`` belongs to and
every edge ``(edge_i[e], edge_j[e], edge_shifts[e])`` is a neighbour pair inside one structure (global atom indices;
the vector from ``i`` to the neighbour image is ``r_j - r_i + S @ cell``, Å). Labels (energy eV, forces eV/Å,
stress eV/Å³ with ASE's sign, ``stress = (1/V) dE/dε``) ride along when the input has them.

:class:`VerletBatcher` builds the batches of a structure set that evolves in time (MD walkers) and reuses neighbour
lists built with ``cutoff + skin`` while that is provably safe (Verlet skin); see its docstring for the criterion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from aiida_alkit.models.neighbors import neighbor_pairs

__all__ = [
    'Batch',
    'VerletBatcher',
    'batch_from_arrays',
    'batch_from_atoms',
    'batch_from_configurations',
    'species_index_table',
]


@dataclass
class Batch:
    """A set of structures as flat tensors (see the module docstring for conventions and units).

    :param positions: (N, 3) Å.
    :param species: (N,) int64 index into the model's species list.
    :param cells: (B, 3, 3) Å, lattice vectors as rows (zeros for molecules).
    :param pbc: (B, 3) bool.
    :param structure_index: (N,) int64, structure of each atom.
    :param edge_i: (E,) int64, centre atom of each pair.
    :param edge_j: (E,) int64, neighbour atom of each pair.
    :param edge_shifts: (E, 3) int64 cell shifts of the neighbour image.
    :param n_atoms: (B,) int64 atoms per structure.
    :param energy: optional (B,) eV.
    :param forces: optional (N, 3) eV/Å.
    :param stress: optional (B, 3, 3) eV/Å³.
    :param neighbour_layout: optional precomputed arrangement of the pairs for a model's kernels (GM-NN's padded
        table, :meth:`~aiida_alkit.models.potential.AtomicPotential.prepare_batch`); dropped by :meth:`to`.
    """

    positions: torch.Tensor
    species: torch.Tensor
    cells: torch.Tensor
    pbc: torch.Tensor
    structure_index: torch.Tensor
    edge_i: torch.Tensor
    edge_j: torch.Tensor
    edge_shifts: torch.Tensor
    n_atoms: torch.Tensor
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    neighbour_layout: Any = None

    @property
    def n_structures(self) -> int:
        """Number of structures B."""
        return int(self.n_atoms.shape[0])

    @property
    def n_atoms_total(self) -> int:
        """Number of atoms N."""
        return int(self.positions.shape[0])

    @property
    def periodic(self) -> torch.Tensor:
        """(B,) bool: structures periodic in all three directions (the ones with a stress)."""
        return self.pbc.all(dim=-1)

    def volumes(self) -> torch.Tensor:
        """(B,) cell volumes abs(det(cell)), Å³ (zero for molecules)."""
        return torch.linalg.det(self.cells).abs()

    def image_offsets(self, cells: torch.Tensor) -> torch.Tensor:
        """(E, 3) ``S @ cell`` of every pair for the cells (B, 3, 3) given (e.g. strained ones), Å, in their dtype:
        the neighbour image of pair e sits at ``r_j + image_offsets[e]``."""
        shifts = self.edge_shifts.to(cells.dtype)
        if cells.shape[0] == 1:
            return shifts @ cells[0]
        edge_cells = cells.index_select(0, self.structure_index.index_select(0, self.edge_i))  # (E, 3, 3)
        return torch.einsum('ek,ekl->el', shifts, edge_cells)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Batch:
        """Copy to ``device``; floating-point tensors are also cast to ``dtype`` when given."""
        values: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == 'neighbour_layout':
                value = None  # built for the old device
            elif value is not None:
                value = value.to(device=device, dtype=dtype if value.is_floating_point() and dtype else None)
            values[item.name] = value
        return Batch(**values)


def species_index_table(species: Sequence[str]) -> np.ndarray:
    """Lookup table atomic number -> index in ``species`` (-1 for elements the model does not know)."""
    from ase.data import atomic_numbers

    table = np.full(119, -1, dtype=np.int64)
    for index, symbol in enumerate(species):
        if symbol not in atomic_numbers:
            raise ValueError(f'unknown chemical symbol {symbol!r} in the species list')
        table[atomic_numbers[symbol]] = index
    return table


def _species_indices(numbers: np.ndarray, species: Sequence[str], table: np.ndarray | None = None) -> np.ndarray:
    """(N,) species index of each atomic number; ValueError naming the elements the model does not know."""
    species_index = (species_index_table(species) if table is None else table)[numbers]
    if (species_index < 0).any():
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in numbers[species_index < 0]})
        raise ValueError(f'elements {unknown} are not among the model species {list(species)}')
    return species_index


def _flat_arrays(positions, numbers, cells, pbc, offsets) -> tuple[np.ndarray, ...]:
    """The flat batch layout as arrays of the right dtype and shape; refuses arrays that do not fit together."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    n_structures = len(offsets) - 1
    if cells.shape[0] != n_structures or pbc.shape[0] != n_structures or offsets[-1] != len(positions):
        raise ValueError('inconsistent batch arrays: cells/pbc/offsets do not match the number of atoms/structures')
    return positions, numbers, cells, pbc, offsets


def batch_from_arrays(
    positions: np.ndarray,
    numbers: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
    offsets: np.ndarray,
    species: Sequence[str],
    cutoff: float,
    energy: np.ndarray | None = None,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    device: str | torch.device = 'cpu',
    dtype: torch.dtype = torch.float32,
    list_backend: str | None = None,
) -> Batch:
    """Build a batch from the flat layout of :class:`aiida_alkit.io.arrays.ConfigurationArrays`.

    :param positions: (N, 3) Å. :param numbers: (N,) atomic numbers. :param cells: (B, 3, 3) Å.
    :param pbc: (B, 3) bool. :param offsets: (B + 1,) structure ``b`` owns atoms ``offsets[b]:offsets[b + 1]``.
    :param species: element symbols known to the model (their order defines the species index).
    :param cutoff: neighbour cutoff, Å.
    :param energy: optional (B,) eV. :param forces: optional (N, 3) eV/Å. :param stress: optional (B, 3, 3) eV/Å³.
    :param list_backend: how the neighbour lists are built (:func:`~aiida_alkit.models.neighbors.neighbor_pairs`;
        default: on the device itself when that is a GPU).
    :raises ValueError: for an element that is not in ``species``.
    """
    positions, numbers, cells, pbc, offsets = _flat_arrays(positions, numbers, cells, pbc, offsets)
    n_structures = len(offsets) - 1
    species_index = _species_indices(numbers, species)

    edges_i, edges_j, edges_s = [], [], []
    for b in range(n_structures):
        start, stop = int(offsets[b]), int(offsets[b + 1])
        i, j, shifts = neighbor_pairs(positions[start:stop], cells[b], pbc[b], cutoff, device, list_backend)
        edges_i.append(i + start)
        edges_j.append(j + start)
        edges_s.append(shifts)
    sizes = np.diff(offsets)

    def floats(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), dtype=dtype, device=device)

    def ints(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.int64), device=device)

    return Batch(
        positions=floats(positions),
        species=ints(species_index),
        cells=floats(cells),
        pbc=torch.as_tensor(pbc, device=device),
        structure_index=ints(np.repeat(np.arange(n_structures), sizes)),
        edge_i=torch.cat(edges_i),
        edge_j=torch.cat(edges_j),
        edge_shifts=torch.cat(edges_s).reshape(-1, 3),
        n_atoms=ints(sizes),
        energy=None if energy is None else floats(np.reshape(energy, (n_structures,))),
        forces=None if forces is None else floats(np.reshape(forces, (-1, 3))),
        stress=None if stress is None else floats(np.reshape(stress, (n_structures, 3, 3))),
    )


def batch_from_configurations(
    arrays: Any,
    species: Sequence[str],
    cutoff: float,
    indices: Sequence[int] | np.ndarray | None = None,
    device: str | torch.device = 'cpu',
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """Build a batch from a ``ConfigurationArrays`` (optionally only the configurations ``indices``), with labels."""
    if indices is not None:
        arrays = arrays.subset(indices)
    return batch_from_arrays(
        arrays.positions,
        arrays.numbers,
        arrays.cells,
        arrays.pbc,
        arrays.offsets,
        species,
        cutoff,
        energy=arrays.energy,
        forces=arrays.forces,
        stress=arrays.stress,
        device=device,
        dtype=dtype,
    )


def batch_from_atoms(
    structures: Sequence[Any],
    species: Sequence[str],
    cutoff: float,
    device: str | torch.device = 'cpu',
    dtype: torch.dtype = torch.float32,
    labels: bool = True,
) -> Batch:
    """Build a batch from ASE ``Atoms``.

    :param labels: take energy/forces/stress from the attached calculator results or ``info``/``arrays`` (as
        ``ConfigurationArrays.from_atoms`` does) when every structure has them.
    """
    from aiida_alkit.io.arrays import ConfigurationArrays

    structures = list(structures)
    if labels:
        arrays = ConfigurationArrays.from_atoms(structures, info_keys=[], validate=False)
        return batch_from_configurations(arrays, species, cutoff, device=device, dtype=dtype)
    sizes = np.array([len(atoms) for atoms in structures], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return batch_from_arrays(
        np.concatenate([atoms.get_positions() for atoms in structures]).reshape(-1, 3),
        np.concatenate([atoms.numbers for atoms in structures]),
        np.stack([np.asarray(atoms.cell[:], dtype=np.float64) for atoms in structures]),
        np.stack([atoms.pbc for atoms in structures]),
        offsets,
        species,
        cutoff,
        device=device,
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------------------------- Verlet skin
@dataclass
class _StoredList:
    """A neighbour list of one structure built with ``cutoff + skin`` and the geometry it was built for.

    ``edge_i``/``edge_j`` (E,) are local atom indices sorted by ``edge_i``, ``shifts`` (E, 3) int64, all on the
    batcher's device; ``fractional`` (n, 3) holds the fractional coordinates at the build (fully periodic structures).
    """

    generation: int
    n_atoms: int
    pbc: np.ndarray
    periodic: bool
    positions: np.ndarray
    cell: np.ndarray
    fractional: np.ndarray | None
    edge_i: torch.Tensor
    edge_j: torch.Tensor
    shifts: torch.Tensor


@dataclass
class _Edges:
    """The stored pairs of a batch's structures, global atom indices (``counts``: pairs per structure)."""

    signature: tuple[int, ...]
    edge_i: torch.Tensor
    edge_j: torch.Tensor
    shifts: torch.Tensor
    float_shifts: torch.Tensor
    counts: list[int]


class VerletBatcher:
    """Batches of structures that move in time, with neighbour lists reused inside a Verlet skin.

    A structure's list is built (vesin, :func:`~aiida_alkit.models.neighbors.neighbor_list`) with the radius
    ``cutoff + skin`` and stored under the structure's key (the MD walker). Later calls with the same key reuse it while
    that is provably complete: every pair now closer than ``cutoff`` is in the stored list. Each call then keeps the
    stored pairs that are closer than ``cutoff`` now (float64, on the device), so the batch has exactly the pairs that
    :func:`batch_from_arrays` would give (in another order): energies, forces, stresses and anything else computed on
    the edges are the same up to rounding.

    **Criterion.** At the build: positions ``R_i``, cell ``H`` (rows). Now: positions ``r_i``, cell ``h``. For a fully
    periodic structure, with fractional coordinates ``f_i = r_i h⁻¹`` and ``f⁰_i = R_i H⁻¹``, the integer image
    offsets ``n_i = round(f_i - f⁰_i)`` follow atoms that were wrapped into the cell (any integer would be correct;
    rounding makes the bound tight), ``u_i = r_i - n_i h`` is the unwrapped position and ``e_i = (f_i - n_i - f⁰_i) H``
    the displacement measured in the build's cell (an affine deformation of the cell does not change it). The pair
    ``(i, j, S)`` of the stored list becomes ``(i, j, S - n_j + n_i)``: its vector is
    ``r_j - r_i + (S - n_j + n_i) h = u_j - u_i + S h``. With ``F = H⁻¹ h`` (so ``h = H F``, ``u_i = (R_i + e_i) F``),
    that vector is ``v = (w + e_j - e_i) F`` where ``w = R_j - R_i + S H`` is the pair's vector at the build. Hence
    ``|w| ≤ |v| ‖F⁻¹‖₂ + 2 max|e|``, and a pair with ``|v| < cutoff`` has ``|w| < cutoff + skin`` (so it was stored) as
    long as

        ``2 max_i |e_i| + cutoff (‖F⁻¹‖₂ - 1) < skin``        (‖·‖₂: the largest singular value)

    With a fixed cell (NVT) this is the textbook rule "rebuild when an atom moved more than half the skin"; under NPT
    the isotropic or general cell change enters only through ``‖F⁻¹‖₂ = ‖h⁻¹ H‖₂`` (a contraction by 1 % costs
    ``0.01 cutoff``; an expansion costs nothing). Structures that are not periodic in all three directions are not
    wrapped (``n = 0``, ``e = r - R``) and reuse a list only while their cell is exactly unchanged. A structure is
    rebuilt when its key is new, its atom count or periodicity changed, the bound fails, or a value is not finite.

    :param species: element symbols known to the model. :param cutoff: model cutoff, Å. :param skin: Verlet skin, Å
        (0: a fresh list at the cutoff every call, exactly :func:`batch_from_arrays`).
    :param device: device of the batch. :param dtype: floating-point dtype of positions and cells in the batch.
    :param list_backend: how lists are built (:func:`~aiida_alkit.models.neighbors.neighbor_pairs`; default: on the
        device itself when that is a GPU, so the pairs never cross the bus).

    ``rebuilds`` counts structures whose list was built (vesin calls), ``requests`` the structures batched.
    """

    def __init__(
        self,
        species: Sequence[str],
        cutoff: float,
        skin: float = 1.0,
        device: str | torch.device = 'cpu',
        dtype: torch.dtype = torch.float32,
        list_backend: str | None = None,
    ) -> None:
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f'the neighbour-list skin must be a finite number >= 0 Å, got {skin!r}')
        self.species = list(species)
        self.cutoff = float(cutoff)
        self.skin = skin
        self.device = torch.device(device)
        self.dtype = dtype
        self.list_backend = list_backend
        self.rebuilds = 0
        self.requests = 0
        self._table = species_index_table(self.species)
        self._stored: dict[Any, _StoredList] = {}
        self._generation = 0
        self._reference_cache: tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray] | None = None
        self._edge_cache: _Edges | None = None
        self._image_cache: tuple[tuple[int, ...], np.ndarray, torch.Tensor] | None = None

    def clear(self) -> None:
        """Forget the stored lists (the counters are kept)."""
        self._stored.clear()
        self._reference_cache = self._edge_cache = self._image_cache = None

    def __call__(
        self,
        positions: np.ndarray,
        numbers: np.ndarray,
        cells: np.ndarray,
        pbc: np.ndarray,
        offsets: np.ndarray,
        keys: Sequence[Any] | np.ndarray | None = None,
        store: bool = True,
    ) -> Batch:
        """Batch of the structures (flat layout of :func:`batch_from_arrays`), without labels.

        :param keys: (B,) hashable key of each structure (e.g. the walker id); default ``0 .. B-1``.
        :param store: keep lists built in this call for later calls (False for throw-away trial configurations, e.g.
            Monte-Carlo moves: they may use a stored list but do not replace it).
        """
        positions, numbers, cells, pbc, offsets = _flat_arrays(positions, numbers, cells, pbc, offsets)
        n_structures = len(offsets) - 1
        self.requests += n_structures
        if self.skin == 0:
            self.rebuilds += n_structures
            return batch_from_arrays(
                positions,
                numbers,
                cells,
                pbc,
                offsets,
                self.species,
                self.cutoff,
                device=self.device,
                dtype=self.dtype,
                list_backend=self.list_backend,
            )
        if cells.shape[0] != n_structures or pbc.shape[0] != n_structures or offsets[-1] != len(positions):
            raise ValueError('inconsistent batch arrays: cells/pbc/offsets do not match the number of atoms/structures')
        keys = list(range(n_structures)) if keys is None else [_hashable(key) for key in keys]
        if len(keys) != n_structures:
            raise ValueError(f'need one key per structure, got {len(keys)} keys for {n_structures} structures')
        species_index = _species_indices(numbers, self.species, self._table)
        sizes = np.diff(offsets)
        structure_index = np.repeat(np.arange(n_structures), sizes)

        entries = [self._stored.get(key) for key in keys]
        usable, images = self._check(entries, positions, cells, pbc, offsets, sizes, structure_index)
        for row in np.flatnonzero(~usable):
            start, stop = int(offsets[row]), int(offsets[row + 1])
            entries[row] = self._build(positions[start:stop], cells[row], pbc[row])
            if store:
                self._stored[keys[row]] = entries[row]
        edges = self._edges(entries, offsets)

        floats = torch.float64
        position_tensor = torch.as_tensor(positions, dtype=floats, device=self.device)
        cell_tensor = torch.as_tensor(cells, dtype=floats, device=self.device)
        edge_i, edge_j, shifts = edges.edge_i, edges.edge_j, edges.shifts
        wrapped = bool(images.any())
        if edge_i.numel():
            # vector of a stored pair now: u_j - u_i + S h with the unwrapped positions u = r - n h
            unwrapped = position_tensor
            if wrapped:
                unwrapped = torch.as_tensor(
                    positions - np.einsum('ni,nij->nj', images.astype(np.float64), cells[structure_index]),
                    dtype=floats,
                    device=self.device,
                )
            vectors = unwrapped.index_select(0, edge_j) - unwrapped.index_select(0, edge_i)
            vectors += self._image_vectors(edges, cells, cell_tensor)
            inside = torch.nonzero(torch.linalg.vector_norm(vectors, dim=-1) < self.cutoff).squeeze(1)
            edge_i, edge_j, shifts = (values.index_select(0, inside) for values in (edge_i, edge_j, shifts))
            if wrapped:  # the pair (i, j, S) in the wrapped frame: (i, j, S - n_j + n_i)
                image_tensor = torch.as_tensor(images, device=self.device)
                shifts = shifts - image_tensor.index_select(0, edge_j) + image_tensor.index_select(0, edge_i)

        def ints(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array, dtype=np.int64), device=self.device)

        return Batch(
            positions=position_tensor.to(self.dtype),
            species=ints(species_index),
            cells=cell_tensor.to(self.dtype),
            pbc=torch.as_tensor(pbc, device=self.device),
            structure_index=ints(structure_index),
            edge_i=edge_i,
            edge_j=edge_j,
            edge_shifts=shifts,
            n_atoms=ints(sizes),
        )

    # ------------------------------------------------------------------ internals
    def _build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> _StoredList:
        """A fresh list with radius cutoff + skin (sorted by centre atom) and its reference geometry."""
        i, j, shifts = neighbor_pairs(positions, cell, pbc, self.cutoff + self.skin, self.device, self.list_backend)
        order = torch.sort(i, stable=True).indices
        self.rebuilds += 1
        self._generation += 1
        periodic = bool(pbc.all())
        return _StoredList(
            generation=self._generation,
            n_atoms=len(positions),
            pbc=pbc.copy(),
            periodic=periodic,
            positions=positions.copy(),
            cell=cell.copy(),
            fractional=np.linalg.solve(cell.T, positions.T).T if periodic else None,
            edge_i=i[order],
            edge_j=j[order],
            shifts=shifts[order],
        )

    def _check(
        self,
        entries: list[_StoredList | None],
        positions: np.ndarray,
        cells: np.ndarray,
        pbc: np.ndarray,
        offsets: np.ndarray,
        sizes: np.ndarray,
        structure_index: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B,) whether each stored list is still complete (see the class docstring) and (N, 3) image offsets n."""
        images = np.zeros(positions.shape, dtype=np.int64)
        usable = np.array(
            [
                entry is not None
                and entry.n_atoms == sizes[row]
                and bool((entry.pbc == pbc[row]).all())
                and (entry.periodic or np.array_equal(entry.cell, cells[row]))
                for row, entry in enumerate(entries)
            ],
            dtype=bool,
        )
        if not usable.any():
            return usable, images
        reference, reference_cells, follow = self._references(entries, usable, sizes)
        with np.errstate(all='ignore'):
            inverse = np.broadcast_to(np.eye(3), cells.shape).copy()  # h⁻¹ where followed, else the identity
            rows = np.flatnonzero(follow & usable)
            regular = np.isfinite(cells[rows]).all(axis=(1, 2)) & (np.abs(np.linalg.det(cells[rows])) > 1e-12)
            usable[rows[~regular]] = False
            inverse[rows[regular]] = np.linalg.inv(cells[rows[regular]])
            delta = np.einsum('ni,nij->nj', positions, inverse[structure_index]) - reference  # f - f⁰, or r - R
            shift = np.where(follow[structure_index][:, None] & np.isfinite(delta), np.rint(delta), 0.0)
            displacement = np.einsum('ni,nij->nj', delta - shift, reference_cells[structure_index])  # e, Å
            norms = np.sqrt(np.square(displacement).sum(axis=1))
            largest = np.zeros(len(entries))
            filled = sizes > 0
            if filled.any():
                largest[filled] = np.maximum.reduceat(norms, offsets[:-1][filled])
            stretch = np.linalg.norm(inverse @ reference_cells, ord=2, axis=(1, 2))  # ‖F⁻¹‖₂ = ‖h⁻¹ H‖₂
            bound = 2.0 * largest + self.cutoff * (stretch - 1.0)
            usable &= np.isfinite(bound) & (bound < self.skin)
        followed = usable[structure_index]
        images[followed] = shift[followed].astype(np.int64)
        return usable, images

    def _references(
        self, entries: list[_StoredList | None], usable: np.ndarray, sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per atom f⁰ (followed) or R, per structure H (identity unless followed), followed structures; cached."""
        key = tuple(
            entry.generation if ok else -1 - int(size) for entry, ok, size in zip(entries, usable, sizes, strict=True)
        )
        if self._reference_cache is None or self._reference_cache[0] != key:
            parts, cells, follow = [], np.broadcast_to(np.eye(3), (len(entries), 3, 3)).copy(), []
            for row, (entry, ok) in enumerate(zip(entries, usable, strict=True)):
                if not ok:  # placeholder; the structure is rebuilt
                    parts.append(np.zeros((int(sizes[row]), 3)))
                    follow.append(False)
                elif entry.periodic:
                    parts.append(entry.fractional)
                    cells[row] = entry.cell
                    follow.append(True)
                else:
                    parts.append(entry.positions)
                    follow.append(False)
            reference = np.concatenate(parts) if parts else np.zeros((0, 3))
            self._reference_cache = (key, reference, cells, np.array(follow, dtype=bool))
        return self._reference_cache[1:]

    def _edges(self, entries: list[_StoredList], offsets: np.ndarray) -> _Edges:
        """The stored pairs of all structures with global atom indices (reused while the entries are)."""
        signature = tuple(entry.generation for entry in entries)
        if self._edge_cache is not None and self._edge_cache.signature == signature:
            return self._edge_cache
        shifts = torch.cat([entry.shifts for entry in entries]).reshape(-1, 3)
        self._edge_cache = _Edges(
            signature=signature,
            edge_i=torch.cat([entry.edge_i + int(offsets[row]) for row, entry in enumerate(entries)]),
            edge_j=torch.cat([entry.edge_j + int(offsets[row]) for row, entry in enumerate(entries)]),
            shifts=shifts,
            float_shifts=shifts.to(torch.float64),
            counts=[int(entry.edge_i.numel()) for entry in entries],
        )
        self._image_cache = None
        return self._edge_cache

    def _image_vectors(self, edges: _Edges, cells: np.ndarray, cell_tensor: torch.Tensor) -> torch.Tensor:
        """(E, 3) S h of the stored pairs with the current cells, Å (reused while the cells do not change)."""
        cached = self._image_cache
        if cached is not None and cached[0] == edges.signature and np.array_equal(cached[1], cells):
            return cached[2]
        if len(edges.counts) == 1:
            vectors = edges.float_shifts @ cell_tensor[0]
        else:  # the pairs are grouped by structure
            parts = torch.split(edges.float_shifts, edges.counts)
            vectors = torch.cat([part @ cell for part, cell in zip(parts, cell_tensor, strict=True)])
        self._image_cache = (edges.signature, cells.copy(), vectors)
        return vectors


def _hashable(key: Any) -> Any:
    """numpy scalars as Python numbers (equal keys hash alike)."""
    return key.item() if isinstance(key, np.generic) else key
