"""Labelling with Quantum ESPRESSO through aiida-quantumespresso's ``PwBaseWorkChain``.

Builds the work chain from aiida-quantumespresso's protocols with forces and stress switched on, and converts a
finished work chain back into a labelled ``ase.Atoms`` in our units (eV, eV/Å, eV/Å³ with ASE's sign).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from aiida_quantumespresso.workflows.protocols.utils import recursive_merge
from ase import units
from ase.stress import full_3x3_to_voigt_6_stress

__all__ = [
    'GPA_PER_EV_PER_ANG3',
    'deep_merge',
    'get_pw_builder',
    'labelled_atoms_from_pw',
    'local_options',
    'stress_from_pw',
]

#: 1 eV/Å³ in GPa, from ASE's units (the very float 160.21766208 of CODATA 2014); prefer :func:`stress_from_pw`.
GPA_PER_EV_PER_ANG3 = 1.0 / units.GPa


def local_options(max_wallclock_seconds: int = 3600, mpiprocs: int = 1) -> dict[str, Any]:
    """``metadata.options`` for a serial run on the ``localhost`` computer."""
    return {
        'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': mpiprocs},
        'withmpi': mpiprocs > 1,
        'max_wallclock_seconds': max_wallclock_seconds,
    }


def deep_merge(base: dict, update: Mapping) -> dict:
    """Copy of ``base`` with ``update`` merged in, nested dictionaries key by key (``update`` wins).

    aiida-quantumespresso's ``recursive_merge`` on deep copies: it copies only the dictionaries it merges, so its
    result would share every other nested dictionary and list with ``base`` and ``update`` (the protocol file's data,
    a caller's overrides), and a later change to the result would change them too.
    """
    return recursive_merge(copy.deepcopy(base), copy.deepcopy(dict(update)))


def get_pw_builder(
    code,
    structure,
    *,
    pseudo_family: str,
    protocol: str = 'fast',
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
):
    """A ``PwBaseWorkChain`` builder for one SCF with forces and stress.

    :param code: ``quantumespresso.pw`` code (node or label).
    :param structure: ``StructureData``.
    :param pseudo_family: label of an installed aiida-pseudo family that recommends cutoffs.
    :param protocol: aiida-quantumespresso protocol (``fast``, ``balanced``, ``stringent``).
    :param overrides: protocol overrides (cutoffs, ``kpoints_distance``, smearing, ...); forces and stress stay on.
    :param options: ``metadata.options`` for the pw.x job (default: :func:`local_options`).
    """
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

    required = {'pseudo_family': pseudo_family, 'pw': {'parameters': {'CONTROL': {'tprnfor': True, 'tstress': True}}}}
    merged = deep_merge(dict(overrides or {}), required)
    return PwBaseWorkChain.get_builder_from_protocol(
        code, structure, protocol=protocol, overrides=merged, options=dict(options or local_options())
    )


def stress_from_pw(stress: Any) -> np.ndarray:
    """ASE's Voigt stress (eV/Å³, positive under tension) from aiida-quantumespresso's 3x3 stress (GPa, QE's sign:
    positive when compressed): ``-stress / 160.2177`` in ASE's order xx, yy, zz, yz, xz, xy."""
    return full_3x3_to_voigt_6_stress(-np.asarray(stress, dtype=np.float64) / GPA_PER_EV_PER_ANG3)


def labelled_atoms_from_pw(node) -> Any:
    """The labelled configuration of a finished ``PwBaseWorkChain`` (or ``PwCalculation``) as ``ase.Atoms``.

    Energy from ``output_parameters['energy']`` (eV), forces from the last frame of ``output_trajectory`` (eV/Å),
    stress converted from aiida-quantumespresso's GPa (QE's sign: positive = compressed) to ASE's eV/Å³ convention
    (positive = under tension) by :func:`stress_from_pw`.

    :raises ValueError: if the node did not finish successfully or lacks forces.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    if not node.is_finished_ok:
        raise ValueError(
            f'{node.process_label}<{node.pk}> did not finish successfully (exit status {node.exit_status})'
        )
    structure = node.inputs.pw.structure if 'pw' in node.inputs else node.inputs.structure
    atoms = structure.get_ase()
    parameters = node.outputs.output_parameters.get_dict()
    trajectory = node.outputs.output_trajectory
    if 'forces' not in trajectory.get_arraynames():
        raise ValueError(f'{node.process_label}<{node.pk}> has no forces in its output trajectory')
    results = {'energy': float(parameters['energy']), 'forces': np.asarray(trajectory.get_array('forces')[-1])}
    if 'stress' in trajectory.get_arraynames():
        results['stress'] = stress_from_pw(trajectory.get_array('stress')[-1])
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info['label_uuid'] = node.uuid
    return atoms
