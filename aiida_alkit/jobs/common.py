"""Helpers shared by the remote jobs: one JSON parameter file in, a JSON result file out (no AiiDA import).

Every job runs as ``python -m aiida_alkit.jobs.<name> <folder>`` inside the CalcJob's working folder. It reads
``parameters.json`` and its data files from the folder and always writes ``results.json`` (``status`` is ``ok``,
``partial`` or ``failed``, plus what went wrong), so that the parser can tell a crash (no results file) from a
recorded failure.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

PARAMETERS_FILE = 'parameters.json'
RESULTS_FILE = 'results.json'

__all__ = ['PARAMETERS_FILE', 'RESULTS_FILE', 'run_job']


def run_job(main: Callable[[pathlib.Path, dict[str, Any]], dict[str, Any]], argv: list[str] | None = None) -> int:
    """Run ``main(folder, parameters)`` and write its result dictionary to ``results.json``.

    An exception inside ``main`` is written as ``{'status': 'failed', 'error': ...}`` and the exit code is 1.
    """
    argv = sys.argv[1:] if argv is None else argv
    folder = pathlib.Path(argv[0] if argv else '.').resolve()
    start = time.perf_counter()
    try:
        parameters = json.loads((folder / PARAMETERS_FILE).read_text())
        result = main(folder, parameters)
        code = 0
    except Exception as exc:
        traceback.print_exc()
        result = {'status': 'failed', 'error': f'{type(exc).__name__}: {exc}'}
        code = 1
    result['wall_time_s'] = time.perf_counter() - start
    (folder / RESULTS_FILE).write_text(json.dumps(result, indent=1, sort_keys=True))
    return code


def progress(message: str) -> None:
    """One progress line on stdout (kept by the scheduler in the job's output file)."""
    print(message, flush=True)
