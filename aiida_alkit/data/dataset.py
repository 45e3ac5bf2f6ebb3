"""`DatasetData`: many atomic configurations (and their labels) in ONE AiiDA node.

The arrays live in a single repository file (``configurations.npz``, see :mod:`aiida_alkit.io.arrays` for the
layout and why npz); a summary is kept in attributes so it can be queried without opening the file:
``count``, ``n_atoms_total``, ``species``, ``natoms_min``, ``natoms_max``, ``labels``, ``info_keys``,
``periodic``, ``sha256`` (of the array content) and ``format_version``.

Units: Å, eV, eV/Å, eV/Å³ (stress with ASE's sign convention).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alkit.io.arrays import ConfigurationArrays

__all__ = ['DatasetData', 'subset_dataset']


class DatasetData(orm.Data):
    """A set of configurations stored as one node (one repository file plus summary attributes)."""

    FILENAME = 'configurations.npz'

    def __init__(self, arrays: ConfigurationArrays | None = None, *, validate: bool = True, **kwargs: Any) -> None:
        """
        :param arrays: the configurations; use :meth:`from_atoms` to start from ASE ``Atoms``.
        :param validate: check the arrays (shapes, NaN/inf, elements, cells, overlapping atoms) before storing them.
        :raises ValueError: on invalid configurations, naming the configuration index and the problem.
        """
        super().__init__(**kwargs)
        self._arrays_cache: ConfigurationArrays | None = None
        if arrays is not None:
            self.set_arrays(arrays, validate=validate)

    @classmethod
    def from_atoms(
        cls, structures: Sequence[Any], info_keys: Iterable[str] | None = None, **kwargs: Any
    ) -> DatasetData:
        """Build an (unstored) dataset from ASE ``Atoms`` (labels from their calculators, see ``ConfigurationArrays``)."""
        return cls(ConfigurationArrays.from_atoms(structures, info_keys=info_keys), validate=False, **kwargs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, fmt: str | None = None, species: Sequence[str] | None = None, **kwargs: Any
    ) -> DatasetData:
        """Read an extxyz or MLIP-2 ``.cfg`` file (see :mod:`aiida_alkit.io`).

        :param species: element of each ``.cfg`` type index (needed unless the file has an ``alkit_species`` line).
        """
        from aiida_alkit.io import read_configurations

        return cls.from_atoms(read_configurations(path, fmt=fmt, species=species), **kwargs)

    def set_arrays(self, arrays: ConfigurationArrays, validate: bool = True) -> None:
        """Replace the content of an unstored node."""
        if not isinstance(arrays, ConfigurationArrays):
            raise TypeError(f'expected ConfigurationArrays, got {type(arrays).__name__}')
        if validate:
            arrays.validate()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, self.FILENAME)
            arrays.save(path)
            self.base.repository.put_object_from_file(path, self.FILENAME)
        for key, value in arrays.summary().items():
            self.base.attributes.set(key, value)
        self._arrays_cache = arrays

    # ------------------------------------------------------------------ reading
    @property
    def arrays(self) -> ConfigurationArrays:
        """The configurations as a :class:`ConfigurationArrays` (read once, then cached on this Python object)."""
        cached = getattr(self, '_arrays_cache', None)
        if cached is None:
            with self.base.repository.open(self.FILENAME, 'rb') as handle:
                cached = ConfigurationArrays.load(io.BytesIO(handle.read()))
            self._arrays_cache = cached
        return cached

    def __len__(self) -> int:
        return int(self.base.attributes.get('count', 0))

    @property
    def count(self) -> int:
        return len(self)

    @property
    def species(self) -> list[str]:
        return list(self.base.attributes.get('species', []))

    @property
    def labels(self) -> list[str]:
        """Which labels every configuration carries (``energy``, ``forces``, ``stress``)."""
        return list(self.base.attributes.get('labels', []))

    @property
    def sha256(self) -> str:
        return self.base.attributes.get('sha256')

    def get_atoms(self, index: int):
        """Configuration ``index`` as ``ase.Atoms`` (labels on a ``SinglePointCalculator``)."""
        return self.arrays.get_atoms(index)

    def to_atoms(self) -> list:
        """All configurations as ``ase.Atoms``."""
        return self.arrays.to_atoms()

    def get_structure(self, index: int) -> orm.StructureData:
        """Configuration ``index`` as an (unstored) ``StructureData``."""
        return orm.StructureData(ase=self.get_atoms(index))

    def subset(self, indices: Sequence[int] | np.ndarray) -> DatasetData:
        """The configurations ``indices`` (in that order) as a new dataset.

        On a stored node this runs the :func:`subset_dataset` calcfunction, so the provenance graph records which
        configurations were taken from which set; on an unstored node it just returns a new unstored node.
        """
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if self.is_stored:
            return subset_dataset(self, orm.List(list=indices))
        return DatasetData(self.arrays.subset(indices), validate=False)

    def __repr__(self) -> str:  # pragma: no cover - convenience only
        return (
            f'<DatasetData: uuid {self.uuid} (pk: {self.pk}) count={len(self)} '
            f'species={self.species} labels={self.labels}>'
        )


@calcfunction
def subset_dataset(dataset: DatasetData, indices: orm.List) -> DatasetData:
    """Take configurations ``indices`` (in order) from ``dataset``; recorded in the provenance graph."""
    return DatasetData(dataset.arrays.subset(indices.get_list()), validate=False)
