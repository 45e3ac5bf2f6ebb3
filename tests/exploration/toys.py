"""Toy potentials with the ``evaluate(system, forces, update_strength)`` interface of ``BiasedPotential``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aiida_alkit.exploration.bias import PotentialResult


class HarmonicPotential:
    """Every atom tied to its initial position by a spring k (eV/Å²); E = Σ k/2 |r - r0|² per walker."""

    def __init__(self, anchors: dict[int, np.ndarray], k: float = 1.0) -> None:
        self.anchors = anchors
        self.k = float(k)
        self.calls = 0

    def evaluate(self, system, forces: bool = True, update_strength: bool = True) -> PotentialResult:
        self.calls += 1
        anchors = np.concatenate([self.anchors[int(w)] for w in system.walker_ids])
        displacement = system.positions - anchors
        index = system.structure_index
        energy = np.bincount(index, 0.5 * self.k * np.square(displacement).sum(axis=1), minlength=system.n_structures)
        result = PotentialResult(
            walker_ids=np.asarray(system.walker_ids),
            structure_index=index,
            energy=energy,
            energy_bias=energy.copy(),
            min_distance=np.full(system.n_structures, np.inf),
        )
        if forces:
            result.forces = -self.k * displacement
            result.bias_forces = np.zeros_like(displacement)
        return result


class PlantedPotential(HarmonicPotential):
    """Harmonic potential plus planted per-walker behaviour for the stop criteria.

    ``plant[walker]`` is a callable (result, rows_mask_atoms, step_count) -> None that edits the result in place, or
    the string 'raise' (evaluation of a batch containing that walker raises).
    """

    def __init__(self, anchors: dict[int, np.ndarray], plant: dict[int, Callable | str], k: float = 1.0) -> None:
        super().__init__(anchors, k)
        self.plant = plant
        self.evaluations: dict[int, int] = {}

    def evaluate(self, system, forces: bool = True, update_strength: bool = True) -> PotentialResult:
        for walker in system.walker_ids:
            if self.plant.get(int(walker)) == 'raise':
                raise RuntimeError('planted failure')
        result = super().evaluate(system, forces, update_strength)
        n_atoms = len(system.positions)
        result.atom_uncertainty = np.full(n_atoms, 0.1)
        result.member_forces = np.stack([result.forces, result.forces]) if forces else None
        for row, walker in enumerate(system.walker_ids):
            walker = int(walker)
            if update_strength and forces:
                self.evaluations[walker] = self.evaluations.get(walker, 0) + 1
            action = self.plant.get(walker)
            if callable(action):
                action(result, system.structure_index == row, self.evaluations.get(walker, 0))
        return result


def strained(system, row: int, a: int, b: int, h: float):
    """Copy of a ``WalkerSystem`` whose walker ``row`` (atoms and cell) is under the symmetric strain ε_ab = h."""
    out = system.copy()
    strain = np.eye(3)
    strain[a, b] += h
    if a != b:
        strain[b, a] += h
    part = out.atoms_slice(row)
    out.positions[part] = out.positions[part] @ strain
    out.cells[row] = out.cells[row] @ strain
    return out
