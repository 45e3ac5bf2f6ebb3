"""``alkit dataset``: import, export and show configuration sets."""

from __future__ import annotations

import click

from . import main


def load_default_profile() -> None:
    """Load the default profile unless one is loaded already (as in tests or ``verdi run``)."""
    from aiida import load_profile
    from aiida.manage import get_manager

    if get_manager().get_profile() is None:
        load_profile()


def _load_dataset(identifier: str):
    from aiida import orm

    from aiida_alkit.data import DatasetData

    node = orm.load_node(identifier)
    if not isinstance(node, DatasetData):
        raise click.BadParameter(f'node {identifier} is a {type(node).__name__}, not a DatasetData')
    return node


@main.group('dataset')
def dataset_group() -> None:
    """Configuration sets (DatasetData nodes)."""


@dataset_group.command('import')
@click.argument('path', type=click.Path(exists=True, dir_okay=False))
@click.option('--format', 'fmt', type=click.Choice(['extxyz', 'cfg']), default=None, help='Default: from suffix.')
@click.option('--species', default=None, help='For .cfg: elements of types 0, 1, ... comma-separated (e.g. Al,Cu).')
@click.option('--label', default=None, help='Label of the new node.')
def import_command(path: str, fmt: str | None, species: str | None, label: str | None) -> None:
    """Store the configurations of PATH (extxyz or MLIP-2 .cfg) as one DatasetData node."""
    load_default_profile()
    from aiida_alkit.data import DatasetData
    from aiida_alkit.io import read_configurations

    try:
        structures = read_configurations(path, fmt=fmt, species=species.split(',') if species else None)
        node = DatasetData.from_atoms(structures)
    except ValueError as exc:
        raise click.ClickException(f'{path}: {exc}') from exc
    node.label = label or path
    node.store()
    click.echo(
        f'Stored DatasetData<{node.pk}>: {len(node)} configurations, species {node.species}, '
        f'labels {node.labels or "none"}'
    )


@dataset_group.command('export')
@click.argument('identifier')
@click.argument('path', type=click.Path(dir_okay=False))
@click.option('--format', 'fmt', type=click.Choice(['extxyz', 'cfg']), default=None, help='Default: from suffix.')
def export_command(identifier: str, path: str, fmt: str | None) -> None:
    """Write DatasetData IDENTIFIER (pk or uuid) to PATH (extxyz or MLIP-2 .cfg)."""
    load_default_profile()
    from aiida_alkit.io import write_configurations

    node = _load_dataset(identifier)
    try:
        write_configurations(path, node.to_atoms(), fmt=fmt)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f'Wrote {len(node)} configurations of DatasetData<{node.pk}> to {path}')


@dataset_group.command('show')
@click.argument('identifier')
def show_command(identifier: str) -> None:
    """Summary of DatasetData IDENTIFIER."""
    load_default_profile()
    node = _load_dataset(identifier)
    attributes = node.base.attributes.all
    for key in ('count', 'n_atoms_total', 'species', 'natoms_min', 'natoms_max', 'labels', 'info_keys', 'sha256'):
        click.echo(f'{key:14s} {attributes.get(key)}')
