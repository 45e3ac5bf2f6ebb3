"""Shared fixtures: AiiDA's own pytest fixtures (temporary SQLite profile) plus small structures."""

from __future__ import annotations

import numpy as np
import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']


@pytest.fixture
def copper_structures():
    """Five labelled EMT copper configurations (32 atoms, rattled), with per-configuration info."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = []
    for index in range(5):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(stdev=0.05, seed=index)
        atoms.set_cell(atoms.cell[:] * (1.0 + 0.01 * index), scale_atoms=True)
        atoms.calc = EMT()
        results = {
            'energy': atoms.get_potential_energy(),
            'forces': atoms.get_forces(),
            'stress': atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update({'source': 'emt', 'round': 0, 'walker': index, 'step': 10 * index})
        structures.append(atoms)
    return structures


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def aiida_localhost(aiida_localhost):
    """AiiDA's ``localhost`` fixture, configured as ``alkit setup`` configures the computer: no login shell per
    transport command. AiiDA's fixture keeps the default login shell, and on a machine whose ``~/.bashrc`` does
    work (this one runs ``pyenv init``: ~60 processes, ~0.1 CPU-s per shell) every job submission and scheduler
    poll paid for it (880 login shells in one suite run)."""
    from aiida_alkit.profile import LOCAL_TRANSPORT_SETTINGS

    aiida_localhost.configure(**LOCAL_TRANSPORT_SETTINGS)
    return aiida_localhost


@pytest.fixture
def alkit_python_code(aiida_localhost):
    """The ``alkit-python`` code (this interpreter) on the test profile's localhost computer."""
    import sys

    from aiida import orm

    label = 'alkit-python'
    existing = orm.QueryBuilder().append(orm.InstalledCode, filters={'label': label}).all(flat=True)
    if existing:
        return existing[0]
    return orm.InstalledCode(label=label, computer=aiida_localhost, filepath_executable=sys.executable).store()


def label_with_emt(atoms):
    """Copy of ``atoms`` with EMT energy, forces and stress on a SinglePointCalculator."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms
