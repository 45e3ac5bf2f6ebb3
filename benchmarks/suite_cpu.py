"""Where a command's CPU time goes, process by process: the test suite's budget on 2 cores is CPU, not wall time.

Runs a command (default: ``bash .ci/run``) under Linux process accounting (``accton``, Debian package ``acct``;
root only), samples ``ps`` every second to learn each process's command line, and prints one JSON line:
``wall_s``, ``cpu_s`` (user + system of every process that ended during the run), ``busy_cores`` (cpu_s / wall_s)
and ``cpu_by_kind``: CPU seconds and process counts per kind (the pytest groups' own processes, train / explore /
label jobs, daemon workers, ``verdi`` and ``alkit`` commands, benchmark scripts, C++ compilers, pw.x, ...).
Processes that lived less than a sampling period are counted under their executable's name. Accounting is
machine-wide: run it on a quiet machine (the sampler's own ``ps`` calls show up as ``ps``). The kernel records CPU
time in clock ticks (10 ms): short processes count as 0, so a kind made of many of them (e.g. the ~60 ``bash``
processes of each login shell that runs ``pyenv init``) is undercounted; its process count still shows it.

    python benchmarks/suite_cpu.py                                  # the CI command (about 25-45 min)
    python benchmarks/suite_cpu.py --command 'bash scripts/test.sh tests/selection'

Measured on 2026-11-28 (clean clone, 2 cores): 4261 CPU-s in 2672 s at 1ad669d, the in-process pytest process alone
1105 s; 1758 CPU-s in 1049 s at 2ff708a (bytecode compiled at set-up, four pytest processes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

#: (kind, pattern on the command line), first match wins
KINDS = (
    ('pytest in-process campaigns', r'pytest.* -m campaign and not benchmark'),
    ('pytest in-process group', r'pytest.*not daemon and not slurm'),
    ('pytest daemon group', r'pytest.* -m daemon'),
    ('pytest slurm group', r'pytest.* -m slurm'),
    ('train job', r'aiida_alkit\.jobs\.train'),
    ('explore job', r'aiida_alkit\.jobs\.explore'),
    ('label job', r'aiida_alkit\.jobs\.label'),
    ('daemon worker', r'daemon worker'),
    ('benchmark script', r'benchmarks/bench_\w+\.py'),
    ('verdi command', r'bin/verdi'),
    ('alkit command', r'bin/alkit'),
    ('helper python -c', r'python\S* -c '),
    ('pytest (other)', r'pytest'),
)


def categorise(comm: str, args: str | None) -> str:
    """The kind of a process from its command line (or its executable's name when it was never sampled)."""
    if args:
        for kind, pattern in KINDS:
            if re.search(pattern, args):
                return kind
    return comm


def sample_command_lines(pids: dict[str, str], stop: threading.Event, period: float) -> None:
    """Fill ``pids`` (pid -> longest command line seen) every ``period`` seconds until ``stop`` is set."""
    while not stop.is_set():
        listing = subprocess.run(['ps', '-eo', 'pid=,args='], capture_output=True, text=True, check=False).stdout
        for line in listing.splitlines():
            pid, _, args = line.strip().partition(' ')
            if len(args) > len(pids.get(pid, '')):
                pids[pid] = args
        stop.wait(period)


def read_accounting(path: str) -> list[tuple[str, float, str]]:
    """``(executable, cpu seconds, pid)`` of every process in the accounting file (``dump-acct``)."""
    dump = subprocess.run(['dump-acct', path], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in dump.splitlines():
        fields = [field.strip() for field in line.split('|')]
        if len(fields) > 9:
            rows.append((fields[0], (float(fields[2]) + float(fields[3])) / 100.0, fields[9]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--command', default='bash .ci/run', help='the command to account for (split like a shell)')
    parser.add_argument('--period', type=float, default=1.0, help='seconds between ps samples')
    args = parser.parse_args()
    for tool in ('accton', 'dump-acct'):
        if shutil.which(tool) is None:
            parser.error(f'{tool} not found: install the acct package (apt-get install acct)')
    if os.geteuid() != 0:
        parser.error('process accounting needs root')

    pids: dict[str, str] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_command_lines, args=(pids, stop, args.period), daemon=True)
    with tempfile.TemporaryDirectory() as scratch:
        accounting = os.path.join(scratch, 'pacct')
        open(accounting, 'w').close()
        subprocess.run(['accton', accounting], check=True, capture_output=True)
        sampler.start()
        start = time.monotonic()
        try:
            status = subprocess.run(shlex.split(args.command), check=False).returncode
        finally:
            wall = time.monotonic() - start
            subprocess.run(['accton', 'off'], check=False, capture_output=True)
            stop.set()
            sampler.join()
        rows = read_accounting(accounting)

    cpu: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for comm, seconds, pid in rows:
        kind = categorise(comm, pids.get(pid))
        cpu[kind] += seconds
        count[kind] += 1
    total = sum(cpu.values())
    record = {
        'benchmark': 'suite_cpu',
        'command': args.command,
        'exit_status': status,
        'wall_s': round(wall, 1),
        'cpu_s': round(total, 1),
        'busy_cores': round(total / wall, 2) if wall > 0 else None,
        'cpu_by_kind': {
            kind: {'cpu_s': round(seconds, 1), 'processes': count[kind]}
            for kind, seconds in cpu.most_common()
            if seconds >= 1.0
        },
    }
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
    main()
