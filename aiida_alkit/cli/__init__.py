"""The ``alkit`` command line: ``alkit setup``, ``alkit smoke``, ``alkit demo``, ``alkit verdi ...``."""

from __future__ import annotations

import sys

import click

from .environment import configure_aiida_path

__all__ = ['main']

# Before anything imports AiiDA: choose the embedded profile's config folder.
configure_aiida_path()


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(package_name='aiida-alkit')
def main() -> None:
    """aiida-alkit: active learning of interatomic potentials with AiiDA provenance.

    Commands use the embedded AiiDA profile (config folder ``.aiida`` in the project folder) unless
    ``AIIDA_PATH`` is set.
    """


@main.command(
    'verdi', context_settings={'ignore_unknown_options': True, 'allow_extra_args': True, 'help_option_names': []}
)
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def verdi_passthrough(args: tuple[str, ...]) -> None:
    """Run ``verdi ARGS`` against the embedded profile (e.g. ``alkit verdi process list -a``)."""
    from aiida.cmdline.commands.cmd_verdi import verdi

    sys.exit(verdi.main(args=list(args), prog_name='alkit verdi', standalone_mode=True))


from . import campaign, dataset, demo, setup  # noqa: E402,F401  (register sub-commands)
