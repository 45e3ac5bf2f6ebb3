"""Batches: many structures as one disconnected graph of torch tensors.

All atoms of all structures are concatenated; ``structure_index[n]`` says which structure atom ``n`` belongs to and
every edge ``(edge_i[e], edge_j[e], edge_shifts[e])`` is a neighbour pair inside one structure (global atom indices;
the vector from ``i`` to the neighbour image is ``r_j - r_i + S @ cell``, Å). Labels (energy eV, forces eV/Å,
stress eV/Å³ with ASE's sign, ``stress = (1/V) dE/dε``) ride along when the input has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from aiida_alkit.models.neighbors import neighbor_list

__all__ = ['Batch', 'batch_from_arrays', 'batch_from_atoms', 'batch_from_configurations', 'species_index_table']


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

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Batch:
        """Copy to ``device``; floating-point tensors are also cast to ``dtype`` when given."""
        values: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
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
) -> Batch:
    """Build a batch from the flat layout of :class:`aiida_alkit.io.arrays.ConfigurationArrays`.

    :param positions: (N, 3) Å. :param numbers: (N,) atomic numbers. :param cells: (B, 3, 3) Å.
    :param pbc: (B, 3) bool. :param offsets: (B + 1,) structure ``b`` owns atoms ``offsets[b]:offsets[b + 1]``.
    :param species: element symbols known to the model (their order defines the species index).
    :param cutoff: neighbour cutoff, Å.
    :param energy: optional (B,) eV. :param forces: optional (N, 3) eV/Å. :param stress: optional (B, 3, 3) eV/Å³.
    :raises ValueError: for an element that is not in ``species``.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    n_structures = len(offsets) - 1
    if cells.shape[0] != n_structures or pbc.shape[0] != n_structures or offsets[-1] != len(positions):
        raise ValueError('inconsistent batch arrays: cells/pbc/offsets do not match the number of atoms/structures')
    table = species_index_table(species)
    species_index = table[numbers]
    if (species_index < 0).any():
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in numbers[species_index < 0]})
        raise ValueError(f'elements {unknown} are not among the model species {list(species)}')

    edges_i, edges_j, edges_s = [], [], []
    for b in range(n_structures):
        start, stop = int(offsets[b]), int(offsets[b + 1])
        i, j, shifts = neighbor_list(positions[start:stop], cells[b], pbc[b], cutoff)
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
        edge_i=ints(np.concatenate(edges_i)),
        edge_j=ints(np.concatenate(edges_j)),
        edge_shifts=ints(np.concatenate(edges_s).reshape(-1, 3)),
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
