"""Label configurations with an ASE calculator: ``python -m aiida_alkit.jobs.label <folder>``.

Reads ``configurations.npz`` (see :class:`~aiida_alkit.io.arrays.ConfigurationArrays`) and ``parameters.json``::

    {"calculator": "ase.calculators.emt.EMT",   # import path, must be in ALLOWED_CALCULATORS
     "calculator_kwargs": {},
     "properties": ["energy", "forces", "stress"],
     "max_force": 20.0}                         # eV/Å; frames with a larger force are recorded as failed

Writes ``labelled.npz`` (the configurations that were labelled, with energy in eV, forces in eV/Å and stress in
eV/Å³; ``info.source_index`` is the index in the input set) and ``results.json`` with one failure record per
configuration that could not be labelled (index and reason). One failing configuration never stops the others.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs.common import progress, run_job

__all__ = ['ALLOWED_CALCULATORS', 'DEFAULT_MAX_FORCE', 'INPUT_FILE', 'OUTPUT_FILE', 'label_configurations', 'main']

INPUT_FILE = 'configurations.npz'
OUTPUT_FILE = 'labelled.npz'
#: Forces above this (eV/Å) mark an unphysical frame that is excluded from training (seed 003, Methods).
DEFAULT_MAX_FORCE = 20.0
#: ASE calculators a label job may construct, by import path. Only these are imported: the import path comes from
#: user input, and importing arbitrary modules would run arbitrary code.
ALLOWED_CALCULATORS = frozenset(
    {
        'ase.calculators.emt.EMT',
        'ase.calculators.lj.LennardJones',
        'ase.calculators.morse.MorsePotential',
        'ase.calculators.eam.EAM',
        'ase.calculators.tip3p.TIP3P',
    }
)


def load_calculator(path: str, kwargs: dict[str, Any]):
    """Construct an allowed ASE calculator from its import path and keyword arguments."""
    if path not in ALLOWED_CALCULATORS:
        raise ValueError(f'calculator {path!r} is not allowed; choose one of {sorted(ALLOWED_CALCULATORS)}')
    module_name, _, class_name = path.rpartition('.')
    return getattr(importlib.import_module(module_name), class_name)(**kwargs)


def label_configurations(
    arrays: ConfigurationArrays,
    calculator,
    properties: tuple[str, ...] = ('energy', 'forces', 'stress'),
    max_force: float = DEFAULT_MAX_FORCE,
) -> tuple[ConfigurationArrays | None, list[dict[str, Any]]]:
    """Label each configuration; return the labelled ones (or ``None``) and one failure record per failed one."""
    labelled, failures = [], []
    for index in range(len(arrays)):
        atoms = arrays.get_atoms(index)
        atoms.calc = calculator
        try:
            results: dict[str, Any] = {'energy': float(atoms.get_potential_energy())}
            forces = np.asarray(atoms.get_forces())
            if 'forces' in properties:
                results['forces'] = forces
            if 'stress' in properties and atoms.pbc.all():
                results['stress'] = np.asarray(atoms.get_stress())
        except Exception as exc:
            failures.append({'index': index, 'reason': f'calculator error: {type(exc).__name__}: {exc}'})
            continue
        values = np.concatenate([np.ravel(v) for v in results.values()])
        if not np.all(np.isfinite(values)):
            failures.append({'index': index, 'reason': 'non-finite energy, forces or stress'})
            continue
        largest = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
        if largest > max_force:
            failures.append(
                {'index': index, 'reason': f'max force {largest:.1f} eV/Å exceeds {max_force} eV/Å (unphysical)'}
            )
            continue
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info['source_index'] = index
        labelled.append(atoms)
        if (index + 1) % 50 == 0 or index + 1 == len(arrays):
            progress(f'labelled {index + 1}/{len(arrays)} configurations ({len(failures)} failed)')
    if not labelled:
        return None, failures
    # stress only where every labelled configuration is periodic: a label is all-or-none in a set
    if 'stress' in properties and not all(a.pbc.all() for a in labelled):
        for atoms in labelled:
            atoms.calc.results.pop('stress', None)
    return ConfigurationArrays.from_atoms(labelled, validate=False), failures


def _main(folder: pathlib.Path, parameters: dict[str, Any]) -> dict[str, Any]:
    arrays = ConfigurationArrays.load(folder / INPUT_FILE)
    calculator = load_calculator(parameters['calculator'], parameters.get('calculator_kwargs') or {})
    properties = tuple(parameters.get('properties', ('energy', 'forces', 'stress')))
    max_force = float(parameters.get('max_force', DEFAULT_MAX_FORCE))
    progress(f'labelling {len(arrays)} configurations with {parameters["calculator"]}')
    labelled, failures = label_configurations(arrays, calculator, properties, max_force)
    if labelled is not None:
        labelled.save(folder / OUTPUT_FILE)
    return {
        'status': 'ok' if not failures else ('partial' if labelled is not None else 'failed'),
        'n_input': len(arrays),
        'n_labelled': 0 if labelled is None else len(labelled),
        'failures': failures,
    }


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == '__main__':
    raise SystemExit(main())
