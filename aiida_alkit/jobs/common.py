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


class ParameterError(ValueError):
    """A parameter of a job is unknown or out of range (the message names the key, the value and what is allowed)."""


PARAMETERS_FILE = 'parameters.json'
RESULTS_FILE = 'results.json'
#: Key of ``parameters.json`` with the number of cores the job's scheduler request granted (written by the CalcJob).
GRANTED_CORES_KEY = 'granted_cores'

__all__ = [
    'GRANTED_CORES_KEY',
    'PARAMETERS_FILE',
    'RESULTS_FILE',
    'ParameterError',
    'configure_threads',
    'run_job',
    'torch_threads',
]


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


def configure_threads(parameters: dict[str, Any]) -> int | None:
    """Set torch's intra-op threads for a job: the cores its scheduler request granted (``granted_cores``, written
    by the CalcJob from ``metadata.options.resources``), or fewer when ``num_threads`` asks for fewer, never more
    (on a 2-core machine shared with the daemon, 2 threads instead of 1 made a training epoch 5x slower).
    Returns the thread count set, or None when neither is known (torch's default)."""
    import torch

    granted = parameters.get(GRANTED_CORES_KEY)
    wanted = parameters.get('num_threads')
    if granted is None and wanted is None:
        return None
    threads = int(wanted) if granted is None else min(int(wanted or granted), int(granted))
    if wanted is not None and granted is not None and int(wanted) > int(granted):
        progress(f'num_threads={wanted} exceeds the {granted} cores requested from the scheduler: using {threads}')
    torch.set_num_threads(max(1, threads))
    return max(1, threads)


class torch_threads:
    """Context manager: torch uses ``n`` intra-op threads inside, the previous number afterwards."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __enter__(self) -> None:
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.previous)
