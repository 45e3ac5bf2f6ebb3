"""File formats and the array container (plain NumPy/ASE; no AiiDA import).

* :class:`~aiida_alkit.io.arrays.ConfigurationArrays`: many configurations as flat arrays, one ``.npz`` file.
* extxyz through ASE (:func:`read_configurations` / :func:`write_configurations` with ``fmt='extxyz'``).
* MLIP-2 ``.cfg`` (:mod:`aiida_alkit.io.mlip_cfg`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from .arrays import ConfigurationArrays
from .mlip_cfg import CfgFormatError, read_cfg, write_cfg

__all__ = [
    'CfgFormatError',
    'ConfigurationArrays',
    'read_cfg',
    'read_configurations',
    'write_cfg',
    'write_configurations',
]

_FORMATS = {'.xyz': 'extxyz', '.extxyz': 'extxyz', '.cfg': 'cfg'}


def _format_of(path: str | os.PathLike, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ('extxyz', 'cfg'):
            raise ValueError(f'unknown format {fmt!r}: use "extxyz" or "cfg"')
        return fmt
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _FORMATS:
        raise ValueError(f'cannot tell the format of {os.fspath(path)!r} from its suffix; pass fmt="extxyz" or "cfg"')
    return _FORMATS[suffix]


def read_configurations(path: str | os.PathLike, fmt: str | None = None, species: Sequence[str] | None = None) -> list:
    """Read all configurations of an extxyz or ``.cfg`` file as ``ase.Atoms`` (labels on their calculators)."""
    if _format_of(path, fmt) == 'cfg':
        return read_cfg(path, species=species)
    import ase.io

    return list(ase.io.read(os.fspath(path), index=':', format='extxyz'))


def write_configurations(
    path: str | os.PathLike, structures: Iterable[Any], fmt: str | None = None, species: Sequence[str] | None = None
) -> None:
    """Write ``ase.Atoms`` to extxyz or ``.cfg`` (labels from their calculators)."""
    structures = list(structures)
    if _format_of(path, fmt) == 'cfg':
        write_cfg(path, structures, species=species)
        return
    import ase.io

    ase.io.write(os.fspath(path), structures, format='extxyz')
