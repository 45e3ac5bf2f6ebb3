"""ASE calculator for a model of any kind: energy and free energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from aiida_alkit.models.batching import batch_from_atoms
from aiida_alkit.models.potential import AtomicPotential

__all__ = ['GMNNCalculator', 'PotentialCalculator']


class PotentialCalculator(Calculator):
    """Evaluate a model (:class:`~aiida_alkit.models.potential.AtomicPotential`: GM-NN, MACE) on ASE ``Atoms``.

    Stress (Voigt order xx, yy, zz, yz, xz, xy) is provided only for structures periodic in all three directions;
    asking for it otherwise raises ASE's ``PropertyNotImplementedError``.
    """

    implemented_properties: ClassVar[list[str]] = ['energy', 'free_energy', 'energies', 'forces', 'stress']

    def __init__(self, model: AtomicPotential, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def calculate(
        self, atoms: Any = None, properties: list[str] | None = None, system_changes: list[str] = all_changes
    ) -> None:
        super().calculate(atoms, properties or ['energy'], system_changes)
        atoms = self.atoms
        properties = properties or ['energy']
        periodic = bool(np.all(atoms.pbc))
        model = self.model
        # labels=False: the atoms may carry a previous calculator's results that must not enter the batch
        batch = batch_from_atoms([atoms], model.species, model.cutoff, model.device, model.dtype, labels=False)
        output = model(batch, compute_forces=True, compute_stress=periodic, training=False)
        energy = float(output['energy'].detach().cpu().item())
        self.results = {
            'energy': energy,
            'free_energy': energy,
            'energies': output['atomic_energies'].detach().cpu().numpy().astype(np.float64),
            'forces': output['forces'].detach().cpu().numpy().astype(np.float64),
        }
        if periodic:
            stress = output['stress'][0].detach().cpu().numpy().astype(np.float64)
            self.results['stress'] = full_3x3_to_voigt_6_stress(stress)


#: The calculator's earlier name, from when GM-NN was the only model.
GMNNCalculator = PotentialCalculator
