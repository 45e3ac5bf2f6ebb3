"""Store a small labelled copper dataset as one node: `alkit verdi run examples/store_dataset.py`."""

from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_alkit.data import DatasetData

structures = []
for seed in range(10):
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(stdev=0.05, seed=seed)
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    atoms.info['source'] = 'example'
    structures.append(atoms)

dataset = DatasetData.from_atoms(structures).store()
print(f'DatasetData<{dataset.pk}>: {len(dataset)} configurations of {dataset.species}, labels {dataset.labels}')
