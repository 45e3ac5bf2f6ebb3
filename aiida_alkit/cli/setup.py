"""``alkit setup``: the embedded AiiDA profile, computer, codes and pseudopotential family (idempotent)."""

from __future__ import annotations

import click

from aiida_alkit.profile import PROFILE_DEFAULT, PROFILE_SCALE_OUT, SetupReport, setup_environment

from . import main


@main.command('setup')
@click.option('--profile', 'profile_name', default=None, help='Profile name (default: alkit, or alkit-scale-out).')
@click.option('--postgres', is_flag=True, help='Use the PostgreSQL server on 127.0.0.1:5432 for storage.')
@click.option('--rabbitmq', is_flag=True, help='Use the RabbitMQ server on 127.0.0.1:5672 as the broker.')
@click.option(
    '--pseudo-dir',
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help='Folder of UPF files for the pseudopotential family (default: found on the machine).',
)
@click.option(
    '--slurm',
    is_flag=True,
    help='Also the computer localhost-slurm (this machine through its SLURM scheduler) with the codes on it.',
)
def setup_command(
    profile_name: str | None, postgres: bool, rabbitmq: bool, pseudo_dir: str | None, slurm: bool
) -> None:
    """Create (or check) the profile, the localhost computer, the codes and the pseudopotential family.

    Running it again changes nothing. Without options the profile uses SQLite and the built-in ZeroMQ broker, so no
    services are needed; ``--postgres --rabbitmq`` makes the scale-out profile against the local servers;
    ``--slurm`` adds the computer ``localhost-slurm`` whose jobs go through SLURM (``scripts/slurm.sh start``).
    """
    if profile_name is None:
        profile_name = PROFILE_SCALE_OUT if (postgres or rabbitmq) else PROFILE_DEFAULT
    try:
        report: SetupReport = setup_environment(
            profile_name, postgres=postgres, rabbitmq=rabbitmq, pseudo_dir=pseudo_dir, slurm=slurm, echo=click.echo
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.render())
