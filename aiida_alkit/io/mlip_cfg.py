"""Reader and writer for the MLIP-2 ``.cfg`` format (``../shared/seeds/004``, "MLIP-2 ``*.cfg`` file").

One configuration is a block::

    BEGIN_CFG
     Size
        4
     Supercell                     # one row per periodic lattice vector, Å (absent for molecules)
        2.86 0.00 0.00
        ...
     AtomData:  id type cartes_x cartes_y cartes_z fx fy fz     # Å and eV/Å; direct_x.. (fractional) also read
        1 0 0.00 -0.13 0.00 0.00 0.75 0.00
        ...
     Energy
        -16.02376555539                                          # eV
     PlusStress:  xx yy zz yz xz xy                              # eV (see below)
        -0.29 0.23 -0.09 0.00 0.00 0.00
     Feature   EFS_by  vasp                                      # free-form key / value pairs
    END_CFG

Conventions (as MLIP-2 uses them):

* **Types** are 0-based integers; the file does not say which element a type is. The element list is passed
  as ``species`` (type ``k`` is ``species[k]``). Our writer also records it in a ``Feature  alkit_species  Al,Cu``
  line, which our reader uses when ``species`` is not passed.
* **PlusStress** is the virial in eV: ``PlusStress = -V * stress``, where ``stress`` is ASE's stress in eV/Å³
  (``stress = (1/V) dE/dε``, positive under tension) and ``V`` the cell volume in Å³. A compressed cell therefore
  has a positive PlusStress trace. Components in the order xx, yy, zz, yz, xz, xy.
* Other ``Feature`` lines are kept in ``atoms.info`` as ``cfg_<name>`` strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import numpy as np

__all__ = ['CfgFormatError', 'read_cfg', 'write_cfg']

_SPECIES_FEATURE = 'alkit_species'
_STRESS_ORDER = ('xx', 'yy', 'zz', 'yz', 'xz', 'xy')
_STRESS_INDEX = {'xx': (0, 0), 'yy': (1, 1), 'zz': (2, 2), 'yz': (1, 2), 'xz': (0, 2), 'xy': (0, 1)}


class CfgFormatError(ValueError):
    """A malformed ``.cfg`` file; the message names the line."""


def _error(source: str, lineno: int, message: str) -> CfgFormatError:
    return CfgFormatError(f'{source}, line {lineno}: {message}')


def read_cfg(path: str | os.PathLike | TextIO, species: Sequence[str] | None = None) -> list:
    """Read every configuration of a ``.cfg`` file as ``ase.Atoms`` (labels on a ``SinglePointCalculator``).

    :param species: element of each type (type ``k`` is ``species[k]``); needed unless the file has our
        ``Feature alkit_species`` line.
    :raises CfgFormatError: on malformed input, naming the line.
    """
    if hasattr(path, 'read'):
        text, source = path.read(), getattr(path, 'name', '<stream>')
    else:
        source = os.fspath(path)
        with open(source, encoding='utf-8') as handle:
            text = handle.read()
    lines = text.splitlines()
    structures = []
    lineno = 0
    while lineno < len(lines):
        stripped = lines[lineno].strip()
        if not stripped or stripped.startswith('#'):
            lineno += 1
            continue
        if stripped != 'BEGIN_CFG':
            raise _error(source, lineno + 1, f'expected BEGIN_CFG, found {stripped[:40]!r}')
        end = lineno + 1
        while end < len(lines) and lines[end].strip() != 'END_CFG':
            end += 1
        if end == len(lines):
            raise _error(source, lineno + 1, 'BEGIN_CFG without END_CFG (truncated file?)')
        structures.append(_parse_block(lines, lineno + 1, end, source, species, len(structures)))
        lineno = end + 1
    if not structures:
        raise CfgFormatError(f'{source}: no configuration (no BEGIN_CFG ... END_CFG block)')
    return structures


def _floats(fields: list[str], source: str, lineno: int) -> list[float]:
    try:
        return [float(x) for x in fields]
    except ValueError as exc:
        raise _error(source, lineno, f'expected numbers: {exc}') from None


def _parse_block(lines: list[str], start: int, end: int, source: str, species: Sequence[str] | None, index: int):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    size = None
    cell_rows: list[list[float]] = []
    atom_rows: list[list[float]] = []
    columns: list[str] = []
    energy = None
    plus_stress = None
    features: dict[str, str] = {}
    i = start
    while i < end:
        fields = lines[i].split()
        if not fields:
            i += 1
            continue
        key = fields[0]
        if key == 'Size':
            size = int(_floats(lines[i + 1].split()[:1], source, i + 2)[0])
            i += 2
        elif key == 'Supercell':
            i += 1
            while i < end and len(lines[i].split()) == 3:
                cell_rows.append(_floats(lines[i].split(), source, i + 1))
                i += 1
        elif key.startswith('AtomData'):
            columns = [c for c in lines[i].replace('AtomData:', ' ').replace('AtomData', ' ').split()]
            if size is None:
                raise _error(source, i + 1, 'AtomData before Size')
            for k in range(size):
                if i + 1 + k >= end:
                    raise _error(source, i + 1, f'AtomData has fewer than Size={size} rows')
                row = lines[i + 1 + k].split()
                if len(row) != len(columns):
                    raise _error(source, i + 2 + k, f'expected {len(columns)} columns ({" ".join(columns)})')
                atom_rows.append(_floats(row, source, i + 2 + k))
            i += 1 + size
        elif key == 'Energy':
            energy = _floats(lines[i + 1].split()[:1], source, i + 2)[0]
            i += 2
        elif key.startswith('PlusStress'):
            names = lines[i].replace('PlusStress:', ' ').replace('PlusStress', ' ').split()
            values = _floats(lines[i + 1].split(), source, i + 2)
            if len(values) != 6 or sorted(names) != sorted(_STRESS_ORDER):
                raise _error(source, i + 1, 'PlusStress needs the six components xx yy zz yz xz xy')
            plus_stress = dict(zip(names, values, strict=True))
            i += 2
        elif key == 'Feature':
            features[fields[1] if len(fields) > 1 else ''] = ' '.join(fields[2:])
            i += 1
        else:
            raise _error(source, i + 1, f'unknown section {key!r}')
    if size is None or not atom_rows:
        raise _error(source, start, f'configuration {index} has no Size or AtomData')
    data = np.asarray(atom_rows)
    col = {name: k for k, name in enumerate(columns)}
    if 'type' not in col:
        raise _error(source, start, f'configuration {index}: AtomData has no "type" column')
    if species is None and _SPECIES_FEATURE in features:
        species = features[_SPECIES_FEATURE].split(',')
    if species is None:
        raise CfgFormatError(
            f'{source}: configuration {index}: .cfg types are integers; pass species=[...] '
            '(element of type 0, 1, ...) to map them to elements'
        )
    types = data[:, col['type']].astype(int)
    if types.min() < 0 or types.max() >= len(species):
        raise CfgFormatError(
            f'{source}: configuration {index}: type {int(types.max())} has no element in species={list(species)}'
        )
    symbols = [species[t] for t in types]
    cell = np.zeros((3, 3))
    cell[: len(cell_rows)] = cell_rows
    pbc = [k < len(cell_rows) for k in range(3)]
    if all(name in col for name in ('cartes_x', 'cartes_y', 'cartes_z')):
        positions = data[:, [col['cartes_x'], col['cartes_y'], col['cartes_z']]]
    elif all(name in col for name in ('direct_x', 'direct_y', 'direct_z')):
        positions = data[:, [col['direct_x'], col['direct_y'], col['direct_z']]] @ cell
    else:
        raise _error(source, start, f'configuration {index}: AtomData has no cartes_* or direct_* columns')
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=pbc)
    for name, value in features.items():
        if name != _SPECIES_FEATURE:
            atoms.info[f'cfg_{name}'] = value
    results: dict[str, Any] = {}
    if energy is not None:
        results['energy'] = energy
    if all(name in col for name in ('fx', 'fy', 'fz')):
        results['forces'] = data[:, [col['fx'], col['fy'], col['fz']]]
    if plus_stress is not None:
        volume = abs(np.linalg.det(cell)) if len(cell_rows) == 3 else 0.0
        if volume <= 0:
            raise _error(source, start, f'configuration {index}: PlusStress given for a cell without volume')
        results['stress'] = np.array([-plus_stress[name] / volume for name in _STRESS_ORDER])
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_cfg(
    path: str | os.PathLike | TextIO, structures: Iterable[Any], species: Sequence[str] | None = None
) -> None:
    """Write ``ase.Atoms`` (labels from their calculators) as a ``.cfg`` file.

    :param species: element of each type; default: all elements present, sorted by atomic number.
    """
    from aiida_alkit.io.arrays import _labels_of

    structures = list(structures)
    if species is None:
        from ase.data import atomic_numbers

        species = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()}, key=atomic_numbers.get)
    type_of = {symbol: k for k, symbol in enumerate(species)}
    out: list[str] = []
    for index, atoms in enumerate(structures):
        labels = _labels_of(atoms)
        unknown = set(atoms.get_chemical_symbols()) - set(type_of)
        if unknown:
            raise ValueError(f'configuration {index}: elements {sorted(unknown)} are not in species={list(species)}')
        out.append('BEGIN_CFG')
        out.append(' Size')
        out.append(f'    {len(atoms)}')
        if atoms.pbc.any():
            if not atoms.pbc.all():
                raise ValueError(f'configuration {index}: .cfg needs fully periodic or non-periodic cells')
            out.append(' Supercell')
            out.extend('    ' + ' '.join(f'{x:17.10f}' for x in row) for row in atoms.cell[:])
        has_forces = 'forces' in labels
        header = ' AtomData:  id type       cartes_x      cartes_y      cartes_z'
        out.append(header + ('           fx          fy          fz' if has_forces else ''))
        forces = np.asarray(labels['forces']) if has_forces else None
        for k, (symbol, position) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)):
            row = f'    {k + 1:6d} {type_of[symbol]:4d} ' + ' '.join(f'{x:17.10f}' for x in position)
            if forces is not None:
                row += ' ' + ' '.join(f'{x:17.10f}' for x in forces[k])
            out.append(row)
        if 'energy' in labels:
            out.append(' Energy')
            out.append(f'    {float(labels["energy"]):.12f}')
        if 'stress' in labels:
            stress = np.asarray(labels['stress'], dtype=float)
            if stress.shape == (3, 3):
                full = stress
            else:
                xx, yy, zz, yz, xz, xy = stress
                full = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            volume = atoms.get_volume()
            plus = [-full[_STRESS_INDEX[name]] * volume for name in _STRESS_ORDER]
            out.append(' PlusStress:  xx          yy          zz          yz          xz          xy')
            out.append('    ' + ' '.join(f'{x:17.10f}' for x in plus))
        out.append(f' Feature   {_SPECIES_FEATURE}  {",".join(species)}')
        for name, value in atoms.info.items():
            if isinstance(name, str) and name.startswith('cfg_') and isinstance(value, str):
                out.append(f' Feature   {name[4:]}  {value}')
        out.append('END_CFG')
        out.append('')
    text = '\n'.join(out)
    if hasattr(path, 'write'):
        path.write(text)
    else:
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)
