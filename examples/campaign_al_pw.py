"""An active-learning campaign on aluminium labelled by Quantum ESPRESSO pw.x (a few minutes on 2 cores).

Run on the embedded profile with ``alkit verdi run examples/campaign_al_pw.py`` (after ``alkit setup``, which
installs the ``pw@localhost`` code and the ``alkit/qe-local`` pseudopotential family).
"""

from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.profile import PSEUDO_FAMILY
from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

code = orm.load_code('alkit-python@localhost')
structures = []
for seed, strain in enumerate((0.98, 1.0, 1.02, 1.01)):
    atoms = bulk('Al', 'fcc', a=4.04 * strain, cubic=True)
    atoms.rattle(stdev=0.04, seed=seed)
    structures.append(atoms)
initial = DatasetData.from_atoms(structures).store()

label = {
    'engine': 'pw',
    'pw': {
        'code': orm.load_code('pw@localhost'),
        'pseudo_family': PSEUDO_FAMILY,
        'protocol': 'fast',  # aiida-quantumespresso protocol
        'overrides': {'kpoints_distance': 0.5},  # any PwBaseWorkChain protocol override
    },
    'max_concurrent': 2,
}
builder = ActiveLearningWorkChain.get_builder_from_protocol(
    code,
    initial,
    protocol='fast',
    strategy='gradient',
    overrides={'max_rounds': 3, 'schedule': {'temperatures': [300, 600, 900]}},
    label=label,
)
results, node = run_get_node(builder)
print(f'{node.process_label}<{node.pk}>: exit status {node.exit_status}; potential {results["potential"].pk}')
