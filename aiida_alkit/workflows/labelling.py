"""Labelling with Quantum ESPRESSO through aiida-quantumespresso's ``PwBaseWorkChain``.

Builds the work chain from aiida-quantumespresso's protocols with forces and stress switched on, and converts a
finished work chain back into a labelled ``ase.Atoms`` in our units (eV, eV/Å, eV/Å³ with ASE's sign).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ['GPA_PER_EV_PER_ANG3', 'deep_merge', 'get_pw_builder', 'labelled_atoms_from_pw', 'local_options']

#: 1 eV/Å³ in GPa.
GPA_PER_EV_PER_ANG3 = 160.21766208


def local_options(max_wallclock_seconds: int = 3600, mpiprocs: int = 1) -> dict[str, Any]:
    """``metadata.options`` for a serial run on the ``localhost`` computer."""
    return {
        'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': mpiprocs},
        'withmpi': mpiprocs > 1,
        'max_wallclock_seconds': max_wallclock_seconds,
    }


def deep_merge(base: dict, update: Mapping) -> dict:
    """Copy of ``base`` with ``update`` merged in, nested dictionaries key by key (``update`` wins)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def labelled_atoms_from_pw(node) -> Any:
    """The labelled configuration of a finished ``PwBaseWorkChain`` (or ``PwCalculation``) as ``ase.Atoms``.

    Energy from ``output_parameters['energy']`` (eV), forces from the last frame of ``output_trajectory`` (eV/Å),
    stress converted from aiida-quantumespresso's GPa (QE's sign: positive = compressed) to ASE's eV/Å³ convention
    (positive = under tension): ``stress_ase = -stress_qe / 160.2177``.

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
        stress = -np.asarray(trajectory.get_array('stress')[-1]) / GPA_PER_EV_PER_ANG3
        results['stress'] = np.array(
            [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]
        )
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info['label_uuid'] = node.uuid
    return atoms
