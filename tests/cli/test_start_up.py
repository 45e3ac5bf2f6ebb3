"""``alkit`` starts without loading AiiDA's ORM, engine or torch: those are imported by the commands that use them
(``alkit --help`` took 2.6 CPU-s when ``alkit campaign`` imported the recovery helpers' ORM at start, 0.45 s now)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ('aiida.orm', 'aiida.engine', 'torch', 'ase')


def test_the_command_line_starts_without_the_orm_and_the_engine():
    probe = f'import sys, json, aiida_alkit.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))'
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == []
