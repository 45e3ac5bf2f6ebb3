"""`alkit setup`: creates the embedded profile and its resources once; running it again changes nothing."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from aiida_alkit.profile import PSEUDO_FAMILY, ensure_resources

ALKIT = str(pathlib.Path(sys.executable).parent / 'alkit')


def test_setup_twice_changes_nothing(tmp_path):
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    first = subprocess.run([ALKIT, 'setup'], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / '.aiida' / 'config.json').is_file()
    for item in ('profile', 'computer localhost', 'code alkit-python@localhost', f'pseudo family {PSEUDO_FAMILY}'):
        assert any(
            line.split()[: len(item.split())] == item.split() and ' created ' in f'{line} '
            for line in first.stdout.splitlines()
        ), (item, first.stdout)
    assert 'core.sqlite_dos + core.zeromq' in first.stdout
    second = subprocess.run([ALKIT, 'setup'], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert ' created ' not in second.stdout, second.stdout
    assert second.stdout.count(' exists') >= 4
    listing = subprocess.run([ALKIT, 'verdi', 'code', 'list'], env=env, capture_output=True, text=True, timeout=120)
    assert 'alkit-python@localhost' in listing.stdout


def test_ensure_resources_is_idempotent(aiida_profile):
    from aiida import orm

    first = ensure_resources()
    second = ensure_resources()
    assert second.created == []
    family = orm.load_group(PSEUDO_FAMILY)
    elements = {node.element for node in family.nodes}
    assert {'Al', 'Cu'} <= elements
    assert len(elements) == len(family.nodes)  # one file per element
    assert family.get_recommended_cutoffs(elements=('Al',), unit='Ry')[0] > 0
    if shutil.which('pw.x'):
        assert orm.load_code('pw@localhost').default_calc_job_plugin == 'quantumespresso.pw'
    assert first.profile


def test_scale_out_profile(tmp_path):
    """PostgreSQL storage + RabbitMQ broker, against the servers running on this machine."""
    import uuid

    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    name = f'alkit-test-{uuid.uuid4().hex[:8]}'
    try:
        out = subprocess.run(
            [ALKIT, 'setup', '--postgres', '--rabbitmq', '--profile', name],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert 'core.psql_dos + core.rabbitmq' in out.stdout
        status = subprocess.run([ALKIT, 'verdi', 'status'], env=env, capture_output=True, text=True, timeout=120)
        assert 'postgresql' in status.stdout.lower() or 'psql' in status.stdout.lower(), status.stdout
        assert 'rabbitmq' in status.stdout.lower() or 'amqp' in status.stdout.lower(), status.stdout
    finally:
        for statement in (f'DROP DATABASE IF EXISTS "aiida-{name}"', f'DROP USER IF EXISTS "aiida-{name}"'):
            subprocess.run(['psql', '-h', '127.0.0.1', '-U', 'postgres', '-c', statement], capture_output=True)
