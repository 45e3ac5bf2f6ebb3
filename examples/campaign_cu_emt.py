"""A small active-learning campaign on copper labelled by ASE's EMT (about a minute).

Run on the embedded profile with ``alkit verdi run examples/campaign_cu_emt.py`` (after ``alkit setup``); watch it
with ``alkit verdi process list`` and ``alkit campaign status <PK>``.
"""

from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

code = orm.load_code('alkit-python@localhost')
structures = []
for seed, strain in enumerate((0.98, 1.0, 1.02, 1.01)):
    atoms = bulk('Cu', 'fcc', a=3.61 * strain, cubic=True) * (2, 2, 2)
    atoms.rattle(stdev=0.04, seed=seed)
    structures.append(atoms)
initial = DatasetData.from_atoms(structures).store()

builder = ActiveLearningWorkChain.get_builder_from_protocol(
    code,
    initial,  # unlabelled: labelled in round 0 with the same settings as the picks
    protocol='fast',
    strategy='gradient',
    overrides={'max_rounds': 3, 'schedule': {'temperatures': [300, 600, 900]}},
    label={'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}},
)
results, node = run_get_node(builder)
print(
    f'{node.process_label}<{node.pk}>: exit status {node.exit_status}; potential {results["potential"].pk}, '
    f'dataset {results["dataset"].pk} ({len(results["dataset"])} configurations)'
)
