"""``alkit dataset``: import, export and show configuration sets."""

from __future__ import annotations

import click
from aiida.cmdline.utils.decorators import with_dbenv

from . import main
from .params import DATASET


@main.group('dataset')
def dataset_group() -> None:
    """Configuration sets (DatasetData nodes)."""


@dataset_group.command('import')
@click.argument('path', type=click.Path(exists=True, dir_okay=False))
@click.option('--format', 'fmt', type=click.Choice(['extxyz', 'cfg']), default=None, help='Default: from suffix.')
@click.option('--species', default=None, help='For .cfg: elements of types 0, 1, ... comma-separated (e.g. Al,Cu).')
@click.option('--label', default=None, help='Label of the new node.')
@with_dbenv()
def import_command(path: str, fmt: str | None, species: str | None, label: str | None) -> None:
    """Store the configurations of PATH (extxyz or MLIP-2 .cfg) as one DatasetData node."""
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
@click.argument('node', metavar='IDENTIFIER', type=DATASET)
@click.argument('path', type=click.Path(dir_okay=False))
@click.option('--format', 'fmt', type=click.Choice(['extxyz', 'cfg']), default=None, help='Default: from suffix.')
def export_command(node, path: str, fmt: str | None) -> None:
    """Write DatasetData IDENTIFIER (pk, uuid or label) to PATH (extxyz or MLIP-2 .cfg)."""
    from aiida_alkit.io import write_configurations

    try:
        write_configurations(path, node.to_atoms(), fmt=fmt)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f'Wrote {len(node)} configurations of DatasetData<{node.pk}> to {path}')


@dataset_group.command('show')
@click.argument('node', metavar='IDENTIFIER', type=DATASET)
def show_command(node) -> None:
    """Summary of DatasetData IDENTIFIER (pk, uuid or label)."""
    attributes = node.base.attributes.all
    for key in ('count', 'n_atoms_total', 'species', 'natoms_min', 'natoms_max', 'labels', 'info_keys', 'sha256'):
        click.echo(f'{key:14s} {attributes.get(key)}')
