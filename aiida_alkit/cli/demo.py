"""``alkit smoke`` and ``alkit demo``: the first jobs a new user runs."""

from __future__ import annotations

import time

import click

from . import main


def run_smoke(echo=click.echo, kpoints_distance: float = 0.4, setup: bool = True) -> list:
    """Store a dataset of two small Al cells, label both with pw.x through ``PwBaseWorkChain``, print the results.

    :param setup: create/load the embedded profile first; ``False`` uses the loaded profile (tests).
    :returns: the labelled ``ase.Atoms``.
    :raises RuntimeError: if a label fails (with the work chain's pk and exit status).
    """
    import numpy as np
    from aiida import orm
    from aiida.engine import run_get_node
    from ase.build import bulk

    from aiida_alkit.data import DatasetData
    from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, ensure_resources, setup_environment
    from aiida_alkit.workflows.labelling import get_pw_builder, labelled_atoms_from_pw

    report = setup_environment(echo=echo) if setup else ensure_resources(echo=echo)
    if any(state == 'missing' for _, state, _ in report.lines):
        echo(report.render())
        raise RuntimeError('the environment is incomplete (see "missing" above); run `alkit setup` for details')
    primitive = bulk('Al', 'fcc', a=4.05)
    cubic = bulk('Al', 'fcc', a=4.00, cubic=True)
    cubic.rattle(stdev=0.05, seed=7)
    structures = [primitive, cubic]
    for index, atoms in enumerate(structures):
        atoms.info['source'] = 'smoke'
        atoms.info['walker'] = index
    dataset = DatasetData.from_atoms(structures)
    dataset.label = 'alkit smoke: two Al cells'
    dataset.store()
    echo(f'Stored DatasetData<{dataset.pk}> with {len(dataset)} configurations ({", ".join(dataset.species)})')

    code = orm.load_code(f'{PW_CODE}@localhost')
    labelled = []
    for index in range(len(dataset)):
        structure = dataset.get_structure(index)
        builder = get_pw_builder(
            code,
            structure,
            pseudo_family=PSEUDO_FAMILY,
            protocol='fast',
            overrides={'kpoints_distance': kpoints_distance},
        )
        start = time.perf_counter()
        _, node = run_get_node(builder)
        seconds = time.perf_counter() - start
        if not node.is_finished_ok:
            raise RuntimeError(
                f'PwBaseWorkChain<{node.pk}> for configuration {index} failed: exit status '
                f'{node.exit_status} {node.exit_message or ""}; see `alkit verdi process report {node.pk}`'
            )
        atoms = labelled_atoms_from_pw(node)
        atoms.info.update(dataset.get_atoms(index).info)  # keep source / walker metadata with the label
        labelled.append(atoms)
        forces = atoms.get_forces()
        echo(
            f'configuration {index}: {len(atoms)} Al atoms, PwBaseWorkChain<{node.pk}> exit_status {node.exit_status}'
            f' in {seconds:.1f} s'
        )
        echo(f'  energy {atoms.get_potential_energy():.6f} eV   max |F| {np.abs(forces).max():.4f} eV/Å')
        for k, row in enumerate(forces):
            echo(f'  F[{k}] = ({row[0]: .5f}, {row[1]: .5f}, {row[2]: .5f}) eV/Å')
    result = DatasetData.from_atoms(labelled, info_keys=['source', 'walker'])
    result.label = 'alkit smoke: labelled by pw.x'
    result.store()
    echo(f'Stored labelled DatasetData<{result.pk}> (labels: {", ".join(result.labels)})')
    return labelled


@main.command('smoke')
def smoke_command() -> None:
    """Label two small Al cells with real pw.x through aiida-quantumespresso and print energies and forces."""
    try:
        run_smoke()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


def demo_structures(fast: bool) -> list:
    """Initial (unlabelled) structures: strained and rattled fcc cells, Cu 2x2x2 (32 atoms) or Al conventional (4)."""
    from ase.build import bulk

    structures = []
    for index, strain in enumerate((0.98, 1.0, 1.02, 1.01)):
        if fast:
            atoms = bulk('Cu', 'fcc', a=3.61 * strain, cubic=True) * (2, 2, 2)
        else:
            atoms = bulk('Al', 'fcc', a=4.04 * strain, cubic=True)
        atoms.rattle(stdev=0.04, seed=index)
        atoms.info['source'] = 'demo'
        structures.append(atoms)
    return structures


def demo_test_structures(fast: bool, count: int, temperature: float = 900.0) -> list:
    """Held-out test frames: ASE EMT molecular dynamics (Langevin, 5 fs) of the demo element at ``temperature`` K.

    EMT only drives the MD that produces the geometries; the frames are labelled like the picks (EMT or pw.x).
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import langevin_frames

    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2) if fast else bulk('Al', 'fcc', a=4.04, cubic=True)
    return langevin_frames(atoms, EMT, temperature, n_frames=count, interval=40, seed=11, labelled=False)


#: The demo runs until the potential's force RMSE on the held-out test frames is below the target (eV/Å; pw.x Al and
#: the fast EMT Cu variant, whose 32-atom cells at 900 K the demo's small model learns less well), or until 90 % of
#: the explored candidates are accurate, at most DEMO_MAX_ROUNDS rounds.
DEMO_TARGET_FORCE_RMSE = {'pw': 0.075, 'emt': 0.25}
DEMO_MAX_ROUNDS = 5


def run_demo(fast: bool = False, echo=click.echo, setup: bool = True, max_rounds: int | None = None):
    """An active-learning campaign on the embedded profile (see ``alkit demo --help``); returns the work chain node.

    Default: aluminium labelled by pw.x through aiida-quantumespresso, strategy ``gradient`` (MD biased by the
    gradient-feature uncertainty, MaxDet selection on the GP-posterior kernel), temperatures 300 → 600 → 900 K (then
    900 K again), 4 labels per round, until the test-set force RMSE is below ``DEMO_TARGET_FORCE_RMSE`` or 90 % of the explored candidates are
    accurate (at most ``DEMO_MAX_ROUNDS`` rounds). ``fast``: EMT copper (32-atom cells) instead of pw.x.
    """
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_alkit.data import DatasetData
    from aiida_alkit.profile import PSEUDO_FAMILY, PW_CODE, PYTHON_CODE, ensure_resources, setup_environment
    from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

    report = setup_environment(echo=echo) if setup else ensure_resources(echo=echo)
    missing = [line for line in report.lines if line[1] == 'missing']
    if missing and not fast:
        echo(report.render())
        raise RuntimeError('the environment is incomplete (see "missing" above); try `alkit demo --fast` (EMT)')
    code = orm.load_code(f'{PYTHON_CODE}@localhost')
    initial = DatasetData.from_atoms(demo_structures(fast), info_keys=['source'])
    initial.label = 'alkit demo: initial structures'
    initial.store()
    if fast:
        label = {'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}}
    else:
        label = {
            'engine': 'pw',
            'pw': {
                'code': orm.load_code(f'{PW_CODE}@localhost'),
                'pseudo_family': PSEUDO_FAMILY,
                'protocol': 'fast',
                'overrides': {'kpoints_distance': 0.5},
            },
            'max_concurrent': 2,
        }
    overrides = {
        'max_rounds': max_rounds or DEMO_MAX_ROUNDS,
        'target_force_rmse': DEMO_TARGET_FORCE_RMSE['emt' if fast else 'pw'],
        'schedule': {'temperatures': [300, 600, 900]},
        'train': {
            'parameters': {
                'model': {'hidden_widths': [32, 32]},
                'training': {'epochs': 200, 'batch_size': 4, 'patience': 60},
                'num_threads': 1,
            }
        },
        'explore': {'parameters': {'walkers': 2, 'steps': 60, 'sample_every': 5, 'num_threads': 1}},
        'select': {'parameters': {'batch_size': 4}},
    }
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        code, initial, protocol='fast', strategy='gradient', overrides=overrides, label=label
    )
    builder.test_dataset = _label_test_set(demo_test_structures(fast, 8 if fast else 3), builder, echo)
    builder.metadata.label = 'alkit demo (EMT Cu)' if fast else 'alkit demo (pw.x Al)'
    echo(
        f'Starting the campaign: {"EMT copper" if fast else "aluminium with pw.x"}, strategy gradient, '
        f'{len(initial)} initial structures (DatasetData<{initial.pk}>); progress lines follow'
    )
    start = time.perf_counter()
    _, node = run_get_node(builder)
    echo(
        f'{node.process_label}<{node.pk}> finished with exit status {node.exit_status} in '
        f'{time.perf_counter() - start:.0f} s'
    )
    return node


def _label_test_set(structures: list, builder, echo) -> object:
    """Label the held-out frames with the campaign's own label settings (EMT or pw.x) into a test DatasetData."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_alkit.workflows.label import LabelWorkChain

    echo(f"Labelling {len(structures)} held-out test frames (EMT MD at 900 K) with the campaign's label settings")
    inputs = {key: builder.label[key] for key in builder.label}
    picks = {f'test_{k:02d}': orm.StructureData(ase=atoms) for k, atoms in enumerate(structures)}
    _, node = run_get_node(LabelWorkChain, structures=picks, **inputs)
    if 'labelled' not in node.outputs:
        raise RuntimeError(f'labelling the test set failed: LabelWorkChain<{node.pk}> {node.exit_message}')
    return node.outputs.labelled


def print_campaign_summary(node, echo=click.echo, plot: str | None = None) -> None:
    """The per-round table of a campaign and, optionally, its learning-curve PNG (as ``alkit campaign report``)."""
    from aiida_alkit.cli.campaign import calibration_points, campaign_rows, status_table, write_plot

    rows, _ = campaign_rows(node)
    echo(status_table(rows))
    if 'report' in node.outputs:
        echo(f'Stop reason: {node.outputs.report["stop_reason"]}')
    if plot and rows:
        write_plot(rows, plot, calibration_points(node))
        echo(f'Learning curve and counts per round: {plot}')
    echo(
        f'Details: alkit campaign status {node.pk}; alkit campaign report {node.pk}; alkit verdi process report {node.pk}'
    )


@main.command('demo')
@click.option('--fast', is_flag=True, help='EMT copper instead of pw.x aluminium (a few minutes).')
@click.option('--rounds', type=int, default=None, help=f'Maximum number of rounds (default {DEMO_MAX_ROUNDS}).')
@click.option('--plot', default='alkit-demo.png', show_default=True, help='Where to write the learning-curve PNG.')
def demo_command(fast: bool, rounds: int | None, plot: str) -> None:
    """The main job: an active-learning campaign on the embedded profile (pw.x aluminium; --fast: EMT copper)."""
    try:
        node = run_demo(fast=fast, max_rounds=rounds)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    print_campaign_summary(node, plot=plot)
    if not node.is_finished_ok:
        raise click.ClickException(f'the campaign failed: {node.exit_message}')
