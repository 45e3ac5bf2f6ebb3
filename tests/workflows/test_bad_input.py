"""Bad campaign input: ActiveLearningWorkChain fails in its first step with a 3xx exit code naming the problem.

Every test runs the work chain in-process and checks that it failed with the expected exit status and message, that
it called nothing (no train, explore or label job, no calcfunction) and that its input nodes are still in the graph.
No job runs: a test costs little more than creating the process node and storing its inputs.
"""

from __future__ import annotations

import shutil

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_alkit.data import DatasetData, PotentialData
from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.workflows.labelling import deep_merge

from ..conftest import label_with_emt
from .test_active_learning import TINY_OVERRIDES, _copper, _emt

pytestmark = pytest.mark.faults

ActiveLearningWorkChain = WorkflowFactory('alkit.active_learning')

UPF_ALUMINIUM = '/usr/share/espresso/pseudo/Al.pz-vbc.UPF'
AL_ONLY_FAMILY = 'alkit-test/al-only'


def _run(
    code: orm.InstalledCode,
    structures: DatasetData | None = None,
    overrides: dict | None = None,
    preset: str = 'gradient',
    label: dict | None = None,
    **inputs,
) -> orm.WorkflowNode:
    """Run a tiny EMT campaign (preset strategy ``preset``) on ``structures`` (default: two labelled Cu cells), with
    ``inputs`` set on the builder last; return the process node."""
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        code,
        structures if structures is not None else _copper(2, labelled=True),
        protocol='fast',
        strategy=preset,
        overrides=deep_merge(TINY_OVERRIDES, overrides or {}),
        label=label or _emt(code),
    )
    for key, value in inputs.items():
        builder[key] = value
    _, node = run_get_node(builder)
    return node


def _assert_rejected(node: orm.WorkflowNode, status: int, *fragments: str) -> None:
    """Failed with ``status`` before any job ran, the message holds every fragment, the inputs are still loadable."""
    assert node.is_failed, f'{node.process_state}, exit status {node.exit_status}: {node.exit_message}'
    assert node.exit_status == status, node.exit_message
    for fragment in fragments:
        assert fragment in node.exit_message
    assert node.called == []
    assert node.base.links.get_outgoing().all() == []  # no call, no output
    incoming = node.base.links.get_incoming().all()
    assert incoming
    for link in incoming:
        assert orm.load_node(link.node.pk).uuid == link.node.uuid


def _cu_cell(a: float = 3.61) -> Atoms:
    return bulk('Cu', 'fcc', a=a, cubic=True)


def _unchecked(structures: list[Atoms]) -> DatasetData:
    """A stored set whose arrays skipped validation, as job outputs and hand-built sets may (``from_atoms`` would
    refuse overlapping atoms before the campaign sees them)."""
    return DatasetData(ConfigurationArrays.from_atoms(structures, validate=False), validate=False).store()


# ---------------------------------------------------------------------- data
def test_empty_initial_dataset(alkit_python_code):
    empty = DatasetData().store()  # no configuration at all: only a node without arrays can be empty
    node = _run(alkit_python_code, initial_dataset=empty)
    _assert_rejected(node, 308, 'Input initial_dataset holds no configurations')
    assert node.inputs.initial_dataset.uuid == empty.uuid


@pytest.mark.parametrize('labels', ['none', 'energy'])
def test_unlabelled_initial_dataset(alkit_python_code, labels):
    structures = []
    for seed in range(2):
        atoms = _cu_cell()
        atoms.rattle(0.05, seed=seed)
        if labels == 'energy':
            atoms.calc = SinglePointCalculator(atoms, energy=-1.0 + 0.1 * seed)
        structures.append(atoms)
    unlabelled = DatasetData.from_atoms(structures).store()
    node = _run(alkit_python_code, initial_dataset=unlabelled)
    missing = 'energy and forces' if labels == 'none' else 'forces'
    _assert_rejected(node, 309, f'Input initial_dataset lacks {missing} labels', 'initial_structures')


def test_unlabelled_test_dataset(alkit_python_code):
    test_set = _copper(2, labelled=False)
    node = _run(alkit_python_code, test_dataset=test_set)
    _assert_rejected(node, 309, 'Input test_dataset lacks energy labels')


def test_overlapping_atoms_in_seeds(alkit_python_code):
    good = _cu_cell()
    overlapping = _cu_cell()
    overlapping.positions[2] = overlapping.positions[1] + [0.12, 0.0, 0.0]
    seeds = _unchecked([good, overlapping, good])
    node = _run(alkit_python_code, seeds=seeds)
    _assert_rejected(node, 314, 'Configuration 1 of seeds', '0.120 Å apart', 'overlapping atoms')


@pytest.mark.parametrize(
    ('scale', 'volume'),
    [(0.1, '0.01176'), (4.0, '752.7')],  # a cell in nm read as Å; a cell 4x too long per side
)
def test_absurd_density(alkit_python_code, scale, volume):
    structures = [_cu_cell(), _cu_cell(), _cu_cell(3.61 * scale)]
    initial = _unchecked(structures)  # unlabelled: initial_structures
    node = _run(alkit_python_code, initial)
    _assert_rejected(node, 315, 'Configuration 2 of initial_structures', f'{volume} Å³ per atom', 'nm or Bohr')


# ---------------------------------------------------------------------- species and potentials
def test_species_not_covered_by_model_species(alkit_python_code):
    overrides = {'train': {'parameters': {'model': {'species': ['Al']}}}}
    node = _run(alkit_python_code, overrides=overrides)
    _assert_rejected(node, 311, "knows only ['Al'] (train.parameters.model.species)", "initial_dataset contains ['Cu']")


def test_seeds_species_not_in_initial_set(alkit_python_code):
    atoms = _cu_cell()
    atoms.symbols[0] = 'Ni'
    seeds = DatasetData.from_atoms([atoms]).store()
    node = _run(alkit_python_code, seeds=seeds)
    _assert_rejected(node, 311, "knows only ['Cu']", "seeds contains ['Ni']")


def _potential(tmp_path, species: list[str]) -> PotentialData:
    """A small but valid (unstored) potential file: the checks only read its header, never build the model."""
    import torch

    from aiida_alkit.models.serialization import save_potential_file

    path = tmp_path / 'initial.pt'
    save_potential_file(path, {'w': torch.zeros(4, 4)}, {'model_kind': 'gmnn', 'species': species, 'cutoff': 4.0})
    return PotentialData(file=path)


def test_initial_potential_species_not_covered(alkit_python_code, tmp_path):
    potential = _potential(tmp_path, ['Al']).store()
    node = _run(alkit_python_code, initial_potential=potential)
    _assert_rejected(node, 311, f'initial_potential PotentialData<{potential.pk}>', "contains ['Cu']")
    assert node.inputs.initial_potential.uuid == potential.uuid


def test_corrupt_initial_potential(alkit_python_code, tmp_path):
    potential = _potential(tmp_path, ['Cu'])
    # PotentialData's constructor refuses a broken file, so corrupt it after creation: this simulates a repository
    # file damaged on disk (truncated copy, failed transfer) after the node was made from a good one.
    content = (tmp_path / 'initial.pt').read_bytes()
    potential.base.repository.put_object_from_bytes(content[: len(content) // 2], PotentialData.FILENAME)
    potential.store()
    node = _run(alkit_python_code, initial_potential=potential)
    _assert_rejected(node, 310, f'PotentialData<{potential.pk}>', 'corrupt or truncated')
    assert node.called == []  # in particular no TrainWorkChain / TrainCalculation


def test_committee_setting_does_not_match_initial_potential(alkit_python_code, tmp_path):
    potential = _potential(tmp_path, ['Cu']).store()
    node = _run(alkit_python_code, preset='dpgen', initial_potential=potential)  # dpgen trains a committee of 4
    _assert_rejected(node, 310, "'gmnn' potential cannot warm-start", 'committee_size = 4')


@pytest.fixture
def al_only_family(aiida_profile, tmp_path):
    """A pseudopotential family with one element (Al), from Debian's quantum-espresso-data."""
    from aiida_pseudo.data.pseudo import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    existing = orm.QueryBuilder().append(CutoffsPseudoPotentialFamily, filters={'label': AL_ONLY_FAMILY}).first()
    if existing:
        return existing[0]
    try:
        shutil.copy(UPF_ALUMINIUM, tmp_path)
    except FileNotFoundError:
        pytest.skip(f'{UPF_ALUMINIUM} missing (apt-get install quantum-espresso-data)')
    family = CutoffsPseudoPotentialFamily.create_from_folder(tmp_path, AL_ONLY_FAMILY, pseudo_type=UpfData)
    family.set_cutoffs({'Al': {'cutoff_wfc': 30.0, 'cutoff_rho': 120.0}}, 'standard', unit='Ry')
    return family


@pytest.fixture
def pw_code_never_run(aiida_localhost):
    """A quantumespresso.pw code node; nothing is ever launched with it here."""
    label = 'pw-never-run'
    existing = orm.QueryBuilder().append(orm.InstalledCode, filters={'label': label}).first()
    if existing:
        return existing[0]
    return orm.InstalledCode(
        label=label,
        computer=aiida_localhost,
        filepath_executable='/usr/bin/pw.x',
        default_calc_job_plugin='quantumespresso.pw',
    ).store()


def test_pseudo_family_does_not_cover_the_structures(alkit_python_code, al_only_family, pw_code_never_run):
    label = {'engine': 'pw', 'pw': {'code': pw_code_never_run, 'pseudo_family': AL_ONLY_FAMILY}}
    node = _run(alkit_python_code, _copper(2, labelled=False), label=label)
    _assert_rejected(
        node, 313, f"family '{AL_ONLY_FAMILY}' has no pseudopotential for ['Cu']", 'initial_structures contains'
    )


def test_pseudo_family_missing(alkit_python_code, pw_code_never_run):
    label = {'engine': 'pw', 'pw': {'code': pw_code_never_run, 'pseudo_family': 'no/such/family'}}
    node = _run(alkit_python_code, _copper(2, labelled=False), label=label)
    _assert_rejected(node, 312, "family 'no/such/family' cannot be used", 'no such group')


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ('overrides', 'fragments'),
    [
        ({'schedule': {'temperatures': [300, -600]}}, ['temperature_K = -600', 'round 2 of schedule.temperatures']),
        ({'schedule': {'temperatures': [300], 'pressures': [1.0, -2.0e4]}}, ['pressure_GPa = -20000.0', 'round 2']),
        ({'schedule': {'temperatures': [300], 'steps': [10, 0]}}, ['steps = 0', 'round 2 of schedule.steps']),
        ({'explore': {'parameters': {'walkers': -2}}}, ['walkers = -2', 'whole number >= 1']),
        ({'schedule': {'temperatures': [300], 'temps': [300]}}, ["schedule = ['temps']", 'unknown keys']),
    ],
    ids=['negative-temperature', 'pressure', 'zero-steps', 'negative-walkers', 'schedule-key'],
)
def test_invalid_md_settings(alkit_python_code, overrides, fragments):
    node = _run(alkit_python_code, overrides=overrides)
    _assert_rejected(node, 305, 'Invalid MD setting', *fragments)


@pytest.mark.parametrize(
    ('batch_size', 'fragment'),
    [(7, 'at most 6 (walkers x (steps // sample_every + 1)'), (0, 'whole number >= 1')],
)
def test_invalid_batch_size(alkit_python_code, batch_size, fragment):
    # TINY_OVERRIDES: 2 walkers x (10 steps // sample_every 5 + 1) = at most 6 candidates per round
    node = _run(alkit_python_code, overrides={'select': {'parameters': {'batch_size': batch_size}}})
    _assert_rejected(node, 304, f'batch_size = {batch_size} is invalid', fragment)


def test_unknown_strategy(alkit_python_code):
    node = _run(alkit_python_code, strategy=orm.Str('magic'))
    _assert_rejected(node, 302, "Unknown strategy 'magic'", 'gradient')


def test_unknown_selection_method(alkit_python_code):
    node = _run(alkit_python_code, overrides={'select': {'parameters': {'method': 'kmeans'}}})
    _assert_rejected(node, 303, "Unknown selection method 'kmeans'", 'lcmd')


def test_invalid_train_parameters(alkit_python_code):
    node = _run(alkit_python_code, overrides={'train': {'parameters': {'optimizer': 'sgd'}}})
    _assert_rejected(node, 306, 'Invalid train.parameters', 'optimizer must be "adam" or "rlekf", got \'sgd\'')


def test_invalid_explore_parameters(alkit_python_code):
    node = _run(alkit_python_code, overrides={'explore': {'parameters': {'timestep_fs': 50.0}}})
    _assert_rejected(node, 307, 'Invalid explore.parameters in round 1', 'timestep_fs=50.0 is far too large')


@pytest.mark.parametrize(
    ('key', 'value', 'fragment'),
    [
        ('max_rounds', 0, 'max_rounds = 0'),
        ('accurate_fraction', 1.5, 'accurate_fraction = 1.5'),
    ],
)
def test_invalid_campaign_setting(alkit_python_code, key, value, fragment):
    node = _run(alkit_python_code, **{key: orm.Int(value) if isinstance(value, int) else orm.Float(value)})
    _assert_rejected(node, 301, f'Invalid campaign setting {fragment}')


def test_exactly_one_initial_set_is_still_a_port_check(alkit_python_code):
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code, _copper(2, labelled=True), protocol='fast', label=_emt(alkit_python_code)
    )
    builder.initial_structures = _copper(1, labelled=False)
    with pytest.raises(ValueError, match='exactly one of initial_dataset'):
        run_get_node(builder)


def test_valid_input_passes_every_check(alkit_python_code):
    """The checks accept the tiny campaign of the campaign tests (no job is run here: only the step is called)."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(2, labelled=True),
        protocol='fast',
        overrides=TINY_OVERRIDES,
        label=_emt(alkit_python_code),
    )
    builder.test_dataset = DatasetData.from_atoms([label_with_emt(_cu_cell())]).store()
    process = instantiate_process(get_manager().get_runner(), builder)
    assert process.validate_inputs() is None
