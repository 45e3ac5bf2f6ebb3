"""A campaign submitted to the daemon of a fresh embedded profile (SQLite + ZeroMQ broker), as a user would."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

BIN = pathlib.Path(sys.executable).parent

SUBMIT = textwrap.dedent(
    """
    import json
    from aiida import load_profile, orm
    from aiida.engine import submit
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    load_profile()
    from aiida_alkit.data import DatasetData
    from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

    structures = []
    for seed in range(4):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        structures.append(atoms)
    code = orm.load_code('alkit-python@localhost')
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        code,
        DatasetData.from_atoms(structures).store(),
        protocol='fast',
        strategy='gradient',
        overrides=json.loads(__OVERRIDES__),
        label={'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}},
    )
    node = submit(builder)
    print(node.pk)
    """
)


@pytest.mark.campaign
@pytest.mark.daemon
def test_campaign_through_the_daemon(tmp_path):
    from .test_active_learning import TINY_OVERRIDES

    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}

    def run(*args, timeout=300):
        return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)

    setup = run(BIN / 'alkit', 'setup')
    assert setup.returncode == 0, setup.stderr
    assert 'core.zeromq' in setup.stdout
    started = run(BIN / 'verdi', 'daemon', 'start', '1')
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        overrides = {**TINY_OVERRIDES, 'max_rounds': 1}
        script = tmp_path / 'submit.py'
        script.write_text(SUBMIT.replace('__OVERRIDES__', repr(json.dumps(overrides))))
        submitted = run(sys.executable, script)
        assert submitted.returncode == 0, submitted.stderr
        pk = submitted.stdout.strip().splitlines()[-1]
        waited = run(
            sys.executable,
            '-c',
            'import sys, time\n'
            'from aiida import load_profile, orm\n'
            'load_profile()\n'
            'node = orm.load_node(int(sys.argv[1]))\n'
            'deadline = time.time() + 400\n'
            'while not node.is_terminated and time.time() < deadline:\n'
            '    time.sleep(2)\n'
            'print(node.process_state.value, node.exit_status)\n',
            pk,
            timeout=480,
        )
        assert waited.stdout.split() == ['finished', '0'], waited.stdout + waited.stderr
        status = run(BIN / 'alkit', 'campaign', 'status', pk)
        assert status.returncode == 0, status.stderr
        assert 'Finished' in status.stdout or 'finished' in status.stdout
    finally:
        run(BIN / 'verdi', 'daemon', 'stop')
