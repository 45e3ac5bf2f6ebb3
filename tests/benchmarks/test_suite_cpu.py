"""``benchmarks/suite_cpu.py``: each process of a suite run is filed under the right kind (the accounting itself
needs root and the acct package, so it is exercised by running the script, not here)."""

from __future__ import annotations

import pytest

from tests.benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark


def _module():
    return load_benchmark('suite_cpu')


def test_processes_are_filed_by_their_command_line():
    categorise = _module().categorise
    venv = '/repo/.venv/bin'
    assert categorise('python', 'python -m pytest -q -m not daemon and not slurm --durations=50') == (
        'pytest in-process group'
    )
    assert categorise('python', 'python -m pytest -q -m campaign and not benchmark and not daemon and not slurm') == (
        'pytest in-process campaigns'
    )
    assert categorise(
        'python', 'python -m pytest -q -m not (campaign and not benchmark and not daemon and not slurm) and not daemon'
    ) == ('pytest in-process group')
    assert categorise('python', 'python -m pytest -q -m daemon --durations=10') == 'pytest daemon group'
    assert categorise('python', f'{venv}/python -m aiida_alkit.jobs.explore .') == 'explore job'
    assert categorise('python', f'{venv}/python {venv}/verdi -p alkit daemon worker') == 'daemon worker'
    assert categorise('python', f'{venv}/python {venv}/verdi -p alkit process list') == 'verdi command'
    assert categorise('python', f'{venv}/python /repo/benchmarks/bench_pool_selection.py --quick') == (
        'benchmark script'
    )
    assert categorise('cc1plus', None) == 'cc1plus'  # never sampled: its executable's name
