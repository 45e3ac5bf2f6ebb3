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


@main.command('demo')
def demo_command() -> None:
    """The main job. For now the pw.x smoke job; it grows into a full active-learning campaign."""
    try:
        run_smoke()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
