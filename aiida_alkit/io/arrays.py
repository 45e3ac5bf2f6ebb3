"""The array container behind every configuration set: many structures, flat arrays, one file.

`ConfigurationArrays` keeps a set of atomic configurations (and optionally their labels) as a handful of flat
NumPy arrays, the layout used by batched models: all atoms of all configurations are concatenated and
`offsets[i]:offsets[i + 1]` are the atoms of configuration `i`. It is plain NumPy/ASE (no AiiDA import), so the
same container is written by remote jobs and read into `DatasetData` nodes.

Units: positions and cells in Å, energies in eV, forces in eV/Å, stress in eV/Å³ with ASE's sign convention
(``stress = (1/V) dE/dε``, a full 3x3 tensor per configuration).

The on-disk format is an uncompressed ``.npz`` file (NumPy's own zip of ``.npy`` arrays). It was chosen over HDF5
because it needs no extra dependency, loads without pickle (``allow_pickle=False``; strings are stored as fixed-width
unicode arrays), writes at disk speed and is readable by any NumPy. HDF5's partial reads are not needed: a set of
100 000 configurations of 32 atoms is ~160 MB and is read whole.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ['FORMAT_VERSION', 'LABEL_KEYS', 'MIN_INTERATOMIC_DISTANCE', 'ConfigurationArrays', 'concatenated_ranges']

FORMAT_VERSION = 1
#: Labels a configuration may carry: per-configuration energy (eV), per-atom forces (eV/Å), 3x3 stress (eV/Å³).
LABEL_KEYS = ('energy', 'forces', 'stress')
#: Two atoms closer than this (Å) are an input error (overlapping atoms).
MIN_INTERATOMIC_DISTANCE = 0.5
#: Largest atomic number we accept (oganesson).
MAX_ATOMIC_NUMBER = 118

_INFO_KINDS = 'biufU'  # bool, int, unsigned, float, unicode: what a per-configuration info array may hold


@dataclass
class ConfigurationArrays:
    """A set of configurations as flat arrays (see the module docstring for layout and units).

    :param positions: (n_atoms_total, 3) float64, Å.
    :param numbers: (n_atoms_total,) int, atomic numbers.
    :param cells: (n_configs, 3, 3) float64, Å, lattice vectors as rows.
    :param pbc: (n_configs, 3) bool.
    :param offsets: (n_configs + 1,) int64; configuration i owns atoms ``offsets[i]:offsets[i+1]``.
    :param energy: optional (n_configs,) eV.
    :param forces: optional (n_atoms_total, 3) eV/Å.
    :param stress: optional (n_configs, 3, 3) eV/Å³.
    :param info: per-configuration metadata, name -> (n_configs,) array of bool/int/float/str
        (e.g. ``source``, ``round``, ``walker``, ``step``).
    """

    positions: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    offsets: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float64)
        self.numbers = np.ascontiguousarray(self.numbers, dtype=np.int32)
        self.cells = np.ascontiguousarray(self.cells, dtype=np.float64)
        self.pbc = np.ascontiguousarray(self.pbc, dtype=bool)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        for key in LABEL_KEYS:
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, np.ascontiguousarray(value, dtype=np.float64))
        self.info = {name: np.asarray(values) for name, values in self.info.items()}

    @classmethod
    def from_atoms(
        cls, structures: Sequence[Any], info_keys: Iterable[str] | None = None, validate: bool = True
    ) -> ConfigurationArrays:
        """Build the container from ASE ``Atoms``.

        Labels are taken from the attached calculator's results (as ASE's extxyz reader and
        ``SinglePointCalculator`` leave them), else from ``atoms.info['energy']``/``info['stress']`` and
        ``atoms.arrays['forces']``. A label is kept when every configuration has it; a label present on some
        configurations only is an error naming the first one without it.

        :param info_keys: names from ``atoms.info`` to keep per configuration. ``None`` keeps every scalar key that
            all configurations share (labels excluded).
        :raises ValueError: on any invalid configuration, naming its index and the problem.
        """
        structures = list(structures)
        if not structures:
            raise ValueError('cannot build a configuration set from an empty list of structures')
        n_configs = len(structures)
        sizes = np.empty(n_configs, dtype=np.int64)
        for index, atoms in enumerate(structures):
            if not hasattr(atoms, 'get_positions') or not hasattr(atoms, 'numbers'):
                raise ValueError(f'configuration {index}: expected an ase.Atoms object, got {type(atoms).__name__}')
            sizes[index] = len(atoms)
        offsets = np.zeros(n_configs + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])

        labels = [_labels_of(atoms) for atoms in structures]
        kept: dict[str, np.ndarray | None] = {}
        for key in LABEL_KEYS:
            have = [key in lab for lab in labels]
            if not any(have):
                kept[key] = None
                continue
            if not all(have):
                missing = have.index(False)
                raise ValueError(
                    f'configuration {missing}: has no {key} while other configurations have one; '
                    f'label every configuration or none'
                )
            kept[key] = _stack_label(key, [lab[key] for lab in labels], sizes)

        info = _collect_info(structures, info_keys)
        arrays = cls(
            positions=np.concatenate([atoms.get_positions() for atoms in structures]).reshape(-1, 3),
            numbers=np.concatenate([atoms.numbers for atoms in structures]),
            cells=np.stack([np.asarray(atoms.cell[:], dtype=np.float64) for atoms in structures]),
            pbc=np.stack([atoms.pbc for atoms in structures]),
            offsets=offsets,
            info=info,
            **kept,
        )
        if validate:
            arrays.validate()
        return arrays

    # ------------------------------------------------------------------ basic queries
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Number of atoms of each configuration."""
        return np.diff(self.offsets)

    @property
    def n_atoms_total(self) -> int:
        return int(self.offsets[-1])

    @property
    def labels(self) -> tuple[str, ...]:
        """Names of the labels present (subset of ``energy``, ``forces``, ``stress``)."""
        return tuple(key for key in LABEL_KEYS if getattr(self, key) is not None)

    @property
    def species(self) -> list[str]:
        """Chemical symbols present, sorted by atomic number."""
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in np.unique(self.numbers)]

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f'configuration index {index} out of range for a set of {n}')
        return index % n

    def get_atoms(self, index: int):
        """Configuration ``index`` as ``ase.Atoms`` with labels on a ``SinglePointCalculator`` and info restored."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        index = self._check_index(int(index))
        start, stop = self.offsets[index], self.offsets[index + 1]
        atoms = Atoms(
            numbers=self.numbers[start:stop],
            positions=self.positions[start:stop],
            cell=self.cells[index],
            pbc=self.pbc[index],
        )
        for name, values in self.info.items():
            atoms.info[name] = values[index].item()
        results: dict[str, Any] = {}
        if self.energy is not None:
            results['energy'] = float(self.energy[index])
        if self.forces is not None:
            results['forces'] = self.forces[start:stop].copy()
        if self.stress is not None:
            results['stress'] = full_3x3_to_voigt_6_stress(self.stress[index])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def to_atoms(self) -> list:
        """All configurations as a list of ``ase.Atoms``."""
        return [self.get_atoms(i) for i in range(len(self))]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ConfigurationArrays:
        """A new container with configurations ``indices`` in that order (repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if indices.size == 0:
            raise ValueError('subset needs at least one index')
        bad = indices[(indices < -n) | (indices >= n)]
        if bad.size:
            raise IndexError(f'configuration index {int(bad[0])} out of range for a set of {n}')
        indices = indices % n
        sizes = self.sizes[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        atom_index = concatenated_ranges(self.offsets[indices], sizes)
        return ConfigurationArrays(
            positions=self.positions[atom_index],
            numbers=self.numbers[atom_index],
            cells=self.cells[indices],
            pbc=self.pbc[indices],
            offsets=offsets,
            energy=None if self.energy is None else self.energy[indices],
            forces=None if self.forces is None else self.forces[atom_index],
            stress=None if self.stress is None else self.stress[indices],
            info={name: values[indices] for name, values in self.info.items()},
        )

    @classmethod
    def concatenate(cls, parts: Sequence[ConfigurationArrays]) -> ConfigurationArrays:
        """Join several containers; labels and info keys are kept where every part has them."""
        parts = list(parts)
        if not parts:
            raise ValueError('cannot concatenate an empty list of configuration sets')
        offsets = [np.zeros(1, dtype=np.int64)]
        shift = 0
        for part in parts:
            offsets.append(part.offsets[1:] + shift)
            shift += part.n_atoms_total
        kwargs: dict[str, Any] = {}
        for key in LABEL_KEYS:
            values = [getattr(part, key) for part in parts]
            kwargs[key] = None if any(v is None for v in values) else np.concatenate(values)
        common = set.intersection(*(set(part.info) for part in parts))
        return cls(
            positions=np.concatenate([p.positions for p in parts]),
            numbers=np.concatenate([p.numbers for p in parts]),
            cells=np.concatenate([p.cells for p in parts]),
            pbc=np.concatenate([p.pbc for p in parts]),
            offsets=np.concatenate(offsets),
            info={name: np.concatenate([p.info[name] for p in parts]) for name in sorted(common)},
            **kwargs,
        )

    # ------------------------------------------------------------------ validation
    def validate(self, min_distance: float = MIN_INTERATOMIC_DISTANCE) -> None:
        """Check shapes, finiteness, elements, cells and atom overlaps.

        :raises ValueError: naming the first offending configuration index and the problem.
        """
        n = len(self)
        if n < 1:
            raise ValueError('a configuration set needs at least one configuration')
        sizes = self.sizes
        if self.offsets[0] != 0 or np.any(sizes < 0):
            raise ValueError('offsets must start at 0 and never decrease')
        if self.positions.shape != (self.n_atoms_total, 3):
            raise ValueError(f'positions have shape {self.positions.shape}, expected ({self.n_atoms_total}, 3)')
        if self.numbers.shape != (self.n_atoms_total,):
            raise ValueError(f'numbers have shape {self.numbers.shape}, expected ({self.n_atoms_total},)')
        if self.cells.shape != (n, 3, 3) or self.pbc.shape != (n, 3):
            raise ValueError(f'cells/pbc have shapes {self.cells.shape}/{self.pbc.shape} for {n} configurations')
        atom_config = np.repeat(np.arange(n), sizes)

        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            raise ValueError(f'configuration {empty[0]}: has no atoms')
        _first_bad_atom(~np.isfinite(self.positions).all(axis=1), atom_config, 'positions contain NaN or inf')
        _first_bad_atom(
            (self.numbers < 1) | (self.numbers > MAX_ATOMIC_NUMBER),
            atom_config,
            'unknown element (atomic number outside 1..118)',
            values=self.numbers,
        )
        _first_bad_config(~np.isfinite(self.cells).all(axis=(1, 2)), 'cell contains NaN or inf')
        volumes = np.abs(np.linalg.det(self.cells))
        scale = np.maximum(np.linalg.norm(self.cells, axis=2).prod(axis=1), 1e-300)
        _first_bad_config(
            self.pbc.any(axis=1) & (volumes <= 1e-10 * scale),
            'cell has zero volume but periodic boundary conditions are set',
        )
        for key, shape in (('energy', (n,)), ('forces', (self.n_atoms_total, 3)), ('stress', (n, 3, 3))):
            value = getattr(self, key)
            if value is None:
                continue
            if value.shape != shape:
                raise ValueError(f'{key} has shape {value.shape}, expected {shape}')
            if key == 'forces':
                _first_bad_atom(~np.isfinite(value).all(axis=1), atom_config, 'forces contain NaN or inf')
            else:
                _first_bad_config(~np.isfinite(value.reshape(n, -1)).all(axis=1), f'{key} contains NaN or inf')
        for name, values in self.info.items():
            if values.shape != (n,) or values.dtype.kind not in _INFO_KINDS:
                raise ValueError(
                    f'info {name!r} must be a 1-d array of {n} bools, numbers or strings, '
                    f'got shape {values.shape} dtype {values.dtype}'
                )
        if min_distance > 0:
            from aiida_alkit.io.geometry import min_interatomic_distances

            dmin = min_interatomic_distances(self.positions, self.cells, self.pbc, self.offsets, cutoff=min_distance)
            close = np.flatnonzero(dmin < min_distance)
            if close.size:
                i = close[0]
                raise ValueError(
                    f'configuration {i}: atoms overlap (closest pair {dmin[i]:.3f} Å apart, '
                    f'minimum allowed {min_distance} Å)'
                )

    # ------------------------------------------------------------------ persistence
    def _named_arrays(self) -> dict[str, np.ndarray]:
        out = {
            'format_version': np.array(FORMAT_VERSION, dtype=np.int64),
            'positions': self.positions,
            'numbers': self.numbers,
            'cells': self.cells,
            'pbc': self.pbc,
            'offsets': self.offsets,
        }
        for key in self.labels:
            out[key] = getattr(self, key)
        for name, values in self.info.items():
            out[f'info.{name}'] = values
        return out

    def save(self, target: str | os.PathLike | io.IOBase) -> None:
        """Write an uncompressed ``.npz`` (path or binary file object)."""
        np.savez(target, **self._named_arrays())

    @classmethod
    def load(cls, source: str | os.PathLike | io.IOBase) -> ConfigurationArrays:
        """Read a file written by :meth:`save` (never unpickles)."""
        try:
            with np.load(source, allow_pickle=False) as data:
                content = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f'not a readable configuration-set file: {exc}') from exc
        version = int(content.pop('format_version', -1))
        if version != FORMAT_VERSION:
            raise ValueError(f'configuration-set file has format version {version}, this code reads {FORMAT_VERSION}')
        missing = {'positions', 'numbers', 'cells', 'pbc', 'offsets'} - set(content)
        if missing:
            raise ValueError(f'configuration-set file lacks arrays {sorted(missing)}')
        info = {name[5:]: content.pop(name) for name in list(content) if name.startswith('info.')}
        return cls(info=info, **content)

    def sha256(self) -> str:
        """Content hash over array names, dtypes, shapes and bytes (independent of the file container)."""
        digest = hashlib.sha256()
        for name, value in sorted(self._named_arrays().items()):
            value = np.ascontiguousarray(value)
            digest.update(f'{name}|{value.dtype.str}|{value.shape}|'.encode())
            digest.update(memoryview(value).cast('B'))
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary used for node attributes."""
        sizes = self.sizes
        return {
            'count': len(self),
            'n_atoms_total': self.n_atoms_total,
            'species': self.species,
            'natoms_min': int(sizes.min()),
            'natoms_max': int(sizes.max()),
            'labels': list(self.labels),
            'info_keys': sorted(self.info),
            'periodic': bool(self.pbc.any()),
            'sha256': self.sha256(),
            'format_version': FORMAT_VERSION,
        }


# ---------------------------------------------------------------------- helpers
def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every pair, without a Python loop (int64).

    The atom (or edge) indices of a subset of a flat layout: ``starts`` are the subset's offsets, ``lengths`` its
    sizes. Any integer arrays or sequences.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(out_offsets - np.asarray(starts, dtype=np.int64), lengths)


def _first_bad_atom(mask: np.ndarray, atom_config: np.ndarray, message: str, values: np.ndarray | None = None) -> None:
    bad = np.flatnonzero(mask)
    if bad.size:
        atom = bad[0]
        extra = f' (got {values[atom]})' if values is not None else ''
        raise ValueError(f'configuration {atom_config[atom]}: {message}{extra}')


def _first_bad_config(mask: np.ndarray, message: str) -> None:
    bad = np.flatnonzero(mask)
    if bad.size:
        raise ValueError(f'configuration {bad[0]}: {message}')


def _labels_of(atoms) -> dict[str, Any]:
    """Labels of one Atoms object: from its calculator's stored results, else from info/arrays."""
    found: dict[str, Any] = {}
    results = getattr(getattr(atoms, 'calc', None), 'results', None) or {}
    for key in LABEL_KEYS:
        if key in results and results[key] is not None:
            found[key] = results[key]
    if 'energy' not in found:
        for key in ('energy', 'free_energy'):
            if key in results:
                found['energy'] = results[key]
                break
    if 'energy' not in found and 'energy' in atoms.info:
        found['energy'] = atoms.info['energy']
    if 'stress' not in found and 'stress' in atoms.info:
        found['stress'] = atoms.info['stress']
    if 'forces' not in found and 'forces' in atoms.arrays:
        found['forces'] = atoms.arrays['forces']
    return found


def _stack_label(key: str, values: list[Any], sizes: np.ndarray) -> np.ndarray:
    """Stack one label over configurations, checking each configuration's shape (stress: ASE's Voigt or 3x3)."""
    from ase.stress import voigt_6_to_full_3x3_stress

    if key == 'energy':
        out = np.empty(len(values))
        for index, value in enumerate(values):
            array = np.asarray(value, dtype=np.float64)
            if array.size != 1:
                raise ValueError(f'configuration {index}: energy must be one number, got shape {array.shape}')
            out[index] = array.reshape(())
        return out
    if key == 'forces':
        blocks = []
        for index, value in enumerate(values):
            array = np.asarray(value, dtype=np.float64)
            if array.shape != (sizes[index], 3):
                raise ValueError(
                    f'configuration {index}: forces have shape {array.shape}, expected ({sizes[index]}, 3)'
                )
            blocks.append(array)
        return np.concatenate(blocks)
    out = np.empty((len(values), 3, 3))
    for index, value in enumerate(values):
        array = np.asarray(value, dtype=np.float64)
        if array.shape == (6,):
            out[index] = voigt_6_to_full_3x3_stress(array)
        elif array.shape == (3, 3):
            out[index] = array
        else:
            raise ValueError(f'configuration {index}: stress must have shape (6,) or (3, 3), got {array.shape}')
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating, np.str_))


def _collect_info(structures: Sequence[Any], info_keys: Iterable[str] | None) -> dict[str, np.ndarray]:
    excluded = {'energy', 'free_energy', 'stress'}
    if info_keys is None:
        shared = set.intersection(*(set(atoms.info) for atoms in structures)) - excluded
        keys = sorted(k for k in shared if all(_is_scalar(atoms.info[k]) for atoms in structures))
    else:
        keys = list(info_keys)
    info = {}
    for key in keys:
        values = []
        for index, atoms in enumerate(structures):
            if key not in atoms.info:
                raise ValueError(f'configuration {index}: has no info entry {key!r}')
            value = atoms.info[key]
            if not _is_scalar(value):
                raise ValueError(f'configuration {index}: info {key!r} must be a scalar, got {type(value).__name__}')
            values.append(value)
        array = np.asarray(values)
        if array.dtype.kind not in _INFO_KINDS:
            raise ValueError(f'info {key!r} mixes types across configurations ({array.dtype})')
        info[key] = array
    return info
